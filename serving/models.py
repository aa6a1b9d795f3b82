"""The three models as serving uses them: loaded by the MLflow alias `champion`, reloaded when it moves,
and replaced by population heuristics when a model is missing (said in `versions` and readiness)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pushplan.settings import Settings
from training.evaluation import with_variant
from training.pipeline import predict
from training.specs import SEND_HOUR, SPECS, VARIANT
from training.tracking import CHAMPION, champion_version, configure

log = logging.getLogger(__name__)
HEURISTIC = "heuristic"


@dataclass
class ModelSet:
    """The champions in memory, with the registry version each one is (or "heuristic")."""

    settings: Settings
    models: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0

    @classmethod
    def load(cls, settings: Settings) -> ModelSet:
        loaded = cls(settings)
        loaded.refresh()
        return loaded

    def refresh(self) -> list[str]:
        """Load any champion whose alias moved since the last look; returns the models reloaded."""
        import mlflow

        client = configure(self.settings)
        self.checked_at = time.monotonic()
        changed = []
        for name, spec in SPECS.items():
            current = champion_version(client, spec.registered_name)
            version = str(current.version) if current is not None else HEURISTIC
            if self.versions.get(name) == version:
                continue
            if current is None:
                self.models.pop(name, None)
                log.warning("no champion for %s: planning with population heuristics", spec.registered_name)
            else:
                self.models[name] = mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}")
            self.versions[name] = version
            changed.append(name)
        return changed

    def refresh_if_stale(self, every_s: float = 60.0) -> None:
        """Look at the registry at most every `every_s` seconds (a request must not wait on it each time)."""
        now = time.monotonic()
        if now - self.checked_at >= every_s:
            self.refresh()

    @property
    def missing(self) -> list[str]:
        return [name for name, version in self.versions.items() if version == HEURISTIC]

    def hour_scores(self, features: pd.DataFrame) -> np.ndarray:
        """(users × 24) engagement by local hour: the send-hour model, or the users' own activity shares."""
        model = self.models.get(SEND_HOUR.name)
        if model is not None:
            return predict(SEND_HOUR, model, features)
        return np.stack([np.asarray(v, dtype=float) for v in features["activity_by_hour"]])

    def variant_scores(self, features: pd.DataFrame, variants: list[tuple[str, list[str]]]) -> np.ndarray:
        """(users × variants) p(click): the variant model, or the users' smoothed affinity for the tags."""
        model = self.models.get(VARIANT.name)
        columns = []
        for title, tags in variants:
            scored = with_variant(features, title, tags)
            if model is not None:
                columns.append(predict(VARIANT, model, scored))
            else:
                columns.append(
                    scored["tag_affinity_mean"].fillna(scored["tag_affinity_mean"].mean()).fillna(0.0)
                )
        return np.column_stack(columns)
