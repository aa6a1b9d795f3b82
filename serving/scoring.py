"""The three models as serving uses them: loaded by the MLflow alias `champion`, reloaded when it moves.

Without a champion, a model is replaced by the simple rule its last training run found best
(`rule:user_mode_hour` in `versions` and readiness: training.baselines), or, never trained, by
population heuristics (`heuristic`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Columns, hour_matrix, length, numbers, of_frame, take, to_frame
from features.feature_repo.transforms import affinities, tag_mask
from features.feature_repo.transforms import tag_match as match_tags
from pushplan.settings import Settings, per_settings
from training.baselines import variant_rule_scores
from training.frames import CATEGORIES, HOUR_VECTORS, variant_features, zone_group
from training.habits import HourBlend, fitted_rule_scores
from training.inference import predict, trained_service
from training.specs import SEND_HOUR, SPECS, VARIANT
from training.tracking import CHAMPION, champion_version, configure, rule_params, serving_rule_ref

log = logging.getLogger(__name__)
HEURISTIC = "heuristic"
RULE = "rule:"


@dataclass
class ModelSet:
    """The champions in memory, with the registry version each one is (or "heuristic")."""

    settings: Settings
    models: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # The Feast feature service each model is served with: the one its champion was trained with.
    services: dict[str, str] = field(default_factory=lambda: {n: s.feature_service for n, s in SPECS.items()})
    # The rule (and its fitted parameters) serving a model that has no champion.
    rules: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    checked_at: float = 0.0
    # What each model was last loaded from: a champion's version, or a rule and its training run (a
    # retrained rule keeps its name but not its parameters).
    _sources: dict[str, str] = field(default_factory=dict, repr=False)
    _scorers: dict[str, tuple[Any, Scorer | None]] = field(default_factory=dict, repr=False)

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
            ref = serving_rule_ref(client, spec.registered_name) if current is None else None
            version = (
                str(current.version) if current is not None else (f"{RULE}{ref[0]}" if ref else HEURISTIC)
            )
            source = version if ref is None else f"{version}@{ref[1]}"
            if self._sources.get(name) == source:
                continue
            if current is None:
                self.models.pop(name, None)
                self.services[name] = spec.feature_service
                if ref is not None:
                    self.rules[name] = (ref[0], rule_params(client, ref[1]))
                    log.warning("no champion for %s: planning with the rule %s", spec.registered_name, ref[0])
                else:
                    self.rules.pop(name, None)
                    log.warning(
                        "no champion for %s: planning with population heuristics", spec.registered_name
                    )
            else:
                self.rules.pop(name, None)
                self.models[name] = mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}")
                self.services[name] = trained_service(spec, current)
            self.versions[name] = version
            self._sources[name] = source
            changed.append(name)
        return changed

    def refresh_if_stale(self, every_s: float = 60.0) -> None:
        """Look at the registry at most every `every_s` seconds (a request must not wait on it each time)."""
        now = time.monotonic()
        if now - self.checked_at >= every_s:
            self.refresh()

    @property
    def missing(self) -> list[str]:
        """Models served without a champion: by a rule or by heuristics."""
        return [name for name, version in self.versions.items() if not version.isdigit()]

    def scorer(self, name: str) -> Scorer | None:
        """The array form of a loaded model (built once per loaded model), or None where it has none.
        For the send-hour blend it is the trees' array form (`HourBlend.combine` mixes in the habits)."""
        model = self.models.get(name)
        model = model.model if isinstance(model, HourBlend) else model
        if model is None:
            return None
        cached = self._scorers.get(name)
        if cached is None or cached[0] is not model:
            cached = (model, Scorer.of(model))
            self._scorers[name] = cached
        return cached[1]

    def hour_scores(self, features: pd.DataFrame | Columns) -> np.ndarray:
        """(users × 24) engagement by local hour: the send-hour model, else its best rule, else the
        users' own activity shares. `features`: the send-hour service's Columns (or a frame of them)."""
        features = as_columns(features)
        model = self.models.get(SEND_HOUR.name)
        if model is None:
            if SEND_HOUR.name in self.rules:
                rule, params = self.rules[SEND_HOUR.name]
                return fitted_rule_scores(rule, params, features)
            return hour_matrix(features["activity_by_hour"])
        scorer = self.scorer(SEND_HOUR.name)
        if scorer is None:
            return predict(SEND_HOUR, model, to_frame(features))
        n = length(features)
        out = np.zeros((n, 24))
        for start in range(0, n, CHUNK_ROWS):
            # Chunk by chunk, the habit blend included: its components are 8 (rows × 24) matrices,
            # 1.5 GB for a million users at once.
            rows = take(features, slice(start, start + CHUNK_ROWS))
            full = np.zeros((length(rows), 24))
            full[:, scorer.classes] = scorer.proba(scorer.encode(rows))
            blended = model.combine(full, rows) if isinstance(model, HourBlend) else full
            out[start : start + len(full)] = blended
        return out

    def variant_scores(
        self,
        features: pd.DataFrame | Columns,
        variants: list[tuple[str, list[str]]],
        variant_ids: list[str] | None = None,
        user_ids: list[str] | None = None,
        campaign_id: str = "",
    ) -> np.ndarray:
        """(users × variants) p(click): the variant model, else its best rule, else the users' smoothed
        affinity for the tags. `features`: the variant service's Columns (or a frame of them).

        With the model, each user's own columns are encoded once and each variant only overwrites
        its text and tag-match columns; all variants of a chunk of users go in one model call.
        """
        index = features.index if isinstance(features, pd.DataFrame) else None
        features = as_columns(features)
        n = length(features)
        model = self.models.get(VARIANT.name)
        if model is None and VARIANT.name in self.rules:
            rule, params = self.rules[VARIANT.name]
            ids = variant_ids or [title for title, _ in variants]
            if user_ids is not None:
                users = np.asarray(user_ids, dtype=object)
            elif "user_id" in features:
                users = features["user_id"].astype(str)
            else:
                users = np.asarray(index.astype(str) if index is not None else np.arange(n).astype(str))
            pairs = [(v, tags) for v, (_, tags) in zip(ids, variants, strict=True)]
            return variant_rule_scores(rule, params, users, pairs, campaign_id)
        scorer = self.scorer(VARIANT.name)
        if model is None or scorer is None:
            frame = to_frame(features)
            columns = []
            for title, tags in variants:
                scored = variant_rows(frame, title, tags)
                if model is not None:
                    columns.append(predict(VARIANT, model, scored))
                else:
                    columns.append(
                        scored["tag_affinity_mean"].fillna(scored["tag_affinity_mean"].mean()).fillna(0.0)
                    )
            return np.column_stack(columns)
        texts = variant_features([title for title, _ in variants], [tags for _, tags in variants])
        varying = [c for c in (*texts.columns, *TAG_MATCH_COLUMNS) if c in scorer.index]
        text_values = {c: texts[c].to_numpy(dtype=float) for c in texts.columns if c in scorer.index}
        scores = np.empty((n, len(variants)))
        step = max(1, CHUNK_ROWS // max(1, len(variants)))
        for start in range(0, n, step):
            rows = take(features, slice(start, start + step))
            count = length(rows)
            base = scorer.encode(rows, skip=varying)
            affinity = affinities(rows) if "tag_affinity_mean" in rows else None
            blocks = []
            for v, (_, tags) in enumerate(variants):
                block = base.copy()
                for column, values in text_values.items():
                    block[:, scorer.index[column][0]] = values[v]
                if affinity is not None:
                    for column, values in tag_match(affinity, tags).items():
                        if column in scorer.index:
                            block[:, scorer.index[column][0]] = values
                blocks.append(block)
            proba = scorer.proba(np.vstack(blocks))
            scores[start : start + count] = proba.reshape(len(variants), count).T
        return scores


def as_columns(features: pd.DataFrame | Mapping[str, Any]) -> Columns:
    """Columns of a frame (tests, notebooks), or the Columns themselves."""
    return of_frame(features) if isinstance(features, pd.DataFrame) else dict(features)


# Rows encoded per model call for large audiences: 100,000 rows of the send-hour model's ~90
# inputs are ~70 MB as float64.
CHUNK_ROWS = 100_000
# Below this many rows a prediction runs on one thread: for a handful of rows, starting and joining
# OpenMP threads costs more than the trees.
ONE_THREAD_ROWS = 500
TAG_MATCH_COLUMNS = ("tag_affinity_mean", "tag_affinity_max", "variant_tag_count")


@dataclass(frozen=True)
class Scorer:
    """A logged Pipeline (FeatureFrame → LGBMClassifier) as arrays: the same numbers as
    `training.inference.predict`, without building a pandas frame per call.

    `encode` lays the FeatureFrame's inputs out as the booster's float matrix (hour vectors as 24
    columns, categories as their codes in the fixed CATEGORIES, missing or unknown as NaN: what
    LightGBM itself makes of the FeatureFrame's pandas output), and `proba` calls the booster.
    `Scorer.of` checks the layout against the booster's own feature names and categories, and
    gives None (use `predict`) for anything else, such as a calibrated model.
    """

    features: Any  # the FeatureFrame step
    booster: Any
    index: dict[str, list[int]]  # input column → its positions in the matrix
    width: int
    classes: np.ndarray
    binary: bool
    threads: int

    @classmethod
    def of(cls, model: Any) -> Scorer | None:
        steps = getattr(model, "named_steps", None)
        if not steps or list(steps) != ["features", "lgbm"]:
            return None
        frame, classifier = steps["features"], steps["lgbm"]
        booster = getattr(classifier, "booster_", None)
        if booster is None:
            return None
        names: list[str] = []
        categories: list[list[str]] = []
        index: dict[str, list[int]] = {}
        for column in frame.columns:
            if column in HOUR_VECTORS:
                outputs = [f"{column}_{hour:02d}" for hour in range(24)]
            elif column == "timezone":
                outputs = ["timezone_group"]
                categories.append(list(CATEGORIES["timezone_group"]))
            else:
                outputs = [column]
                if column in CATEGORIES:
                    categories.append(list(CATEGORIES[column]))
            index[column] = list(range(len(names), len(names) + len(outputs)))
            names += outputs
        if booster.feature_name() != names or (booster.pandas_categorical or []) != categories:
            return None
        jobs = classifier.n_jobs if isinstance(classifier.n_jobs, int) and classifier.n_jobs > 0 else 0
        return cls(
            frame,
            booster,
            index,
            len(names),
            np.asarray(classifier.classes_, dtype=int),
            len(classifier.classes_) == 2,
            jobs or (os.cpu_count() or 1),
        )

    def encode(self, rows: Columns, skip: Collection[str] = ()) -> np.ndarray:
        """The (rows × inputs) float64 matrix; columns in `skip` are left as NaN for the caller to fill."""
        out = np.full((length(rows), self.width), np.nan)
        for column, positions in self.index.items():
            if column in skip:
                continue
            if column in HOUR_VECTORS:
                out[:, positions[0] : positions[-1] + 1] = hour_matrix(rows[column])
            elif column == "timezone":
                out[:, positions[0]] = _codes(_groups(rows[column]), "timezone_group")
            elif column in CATEGORIES:
                out[:, positions[0]] = _codes(rows[column], column)
            else:
                out[:, positions[0]] = numbers(rows[column])
        return out

    def proba(self, matrix: np.ndarray) -> np.ndarray:
        """p(class 1) for a binary model; (rows × classes) for a multiclass one."""
        threads = 1 if len(matrix) < ONE_THREAD_ROWS else self.threads
        result = np.asarray(self.booster.predict(matrix, num_threads=threads))
        return result if not self.binary or result.ndim == 1 else result[:, 1]


def _codes(values: np.ndarray, category: str) -> np.ndarray:
    """Each value's position in the fixed CATEGORIES (NaN: missing or unknown), as the FeatureFrame's
    pandas Categorical gives it to LightGBM; a dictionary look-up, not a Categorical (which costs
    more than a one-user plan's trees)."""
    code = _CODES[category]
    return _each_distinct(values, lambda v: code.get(v, np.nan) if isinstance(v, str) else np.nan, np.nan)


_CODES = {
    category: {value: float(k) for k, value in enumerate(values)} for category, values in CATEGORIES.items()
}
# Below this many rows a look-up per row; above, each distinct value is looked up once.
_FEW = 64


def _groups(zones: np.ndarray) -> np.ndarray:
    """`training.frames.timezone_group` of each zone."""
    return _each_distinct(zones, zone_group, None)


def _each_distinct(values: np.ndarray, look_up: Callable[[Any], Any], missing: Any) -> np.ndarray:
    """`look_up` of every value (floats, or objects when `missing` is None), once per distinct value
    for many rows; a missing value (None, NaN) takes `missing`."""
    dtype = object if missing is None else np.float64
    if len(values) <= _FEW:
        return np.array([look_up(v) for v in values], dtype=dtype)
    which, seen = pd.factorize(values)
    mapped = np.array([look_up(v) for v in seen] + [missing], dtype=dtype)
    return mapped[which]  # -1 (missing) takes the appended `missing`


def tag_match(affinity: np.ndarray, tags: list[str]) -> dict[str, np.ndarray]:
    """`transforms.tag_match_features` for one variant's tags on every row, as whole-array operations."""
    return match_tags(affinity, np.broadcast_to(tag_mask(",".join(tags)), affinity.shape))


def variant_rows(rows: pd.DataFrame, title: str, tags: list[str], variant_id: str = "") -> pd.DataFrame:
    """`training.evaluation.with_variant`, the same frame, without per-row Python: every row gets
    the same variant, so its text features are computed once and its tag mask is one row."""
    out = rows.copy()
    out["candidate_variant_id"] = variant_id
    text = variant_features([title], [tags])
    for column in text.columns:
        out[column] = np.full(len(out), text[column].iloc[0], dtype="float64")
    out["variant_tags"] = ",".join(tags)
    if "tag_affinity_mean" in out:
        for column, values in tag_match(affinities(out), tags).items():
            out[column] = values
    return out


@per_settings
def _loaded(settings: Settings) -> ModelSet:
    return ModelSet.load(settings)


def models_of(settings: Settings) -> ModelSet:
    """The champions for a worker's tasks (plan-job partitions, firings): loaded once per process and
    configuration, and re-read from the registry when a new champion may have been promoted."""
    models = _loaded(settings)
    models.refresh_if_stale()
    return models
