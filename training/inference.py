"""What serving needs of the trained models, without the fitting side (LightGBM training, Optuna,
the datasets): predictions from a loaded pipeline, champions loaded by alias from MLflow's registry,
and the Feast feature service each champion was trained with, which serving must read it through."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pushplan.clock import smooth_hours
from pushplan.settings import Settings
from training.habits import full_hours
from training.specs import ModelSpec
from training.tracking import CHAMPION, champion_version, configure


def predict(spec: ModelSpec, model: Any, rows: pd.DataFrame) -> np.ndarray:
    """p(label=1) for binary specs; a (rows × 24) matrix of hour probabilities for the send-hour spec."""
    proba = model.predict_proba(rows)
    if spec.n_classes == 2:
        return np.asarray(proba[:, 1])
    return full_hours(proba, model.classes_)


def choose_hours(proba: np.ndarray) -> np.ndarray:
    """The local send hour for each row of a (rows × 24) hour-probability matrix (any hour allowed)."""
    return smooth_hours(proba).argmax(axis=1)


def load_champion(spec: ModelSpec, settings: Settings) -> Any | None:
    client = configure(settings)
    if champion_version(client, spec.registered_name) is None:
        return None
    return mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}")


def load_newest(spec: ModelSpec, settings: Settings) -> tuple[Any, int, bool] | None:
    """The champion, else the newest registered version (one that did not beat its rules), with its
    version and whether it is champion: what a notebook studies even when a rule serves."""
    client = configure(settings)
    champion = champion_version(client, spec.registered_name)
    if champion is not None:
        return (
            mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}"),
            int(champion.version),
            True,
        )
    versions = client.search_model_versions(f"name='{spec.registered_name}'")
    if not versions:
        return None
    newest = max(int(v.version) for v in versions)
    return mlflow.sklearn.load_model(f"models:/{spec.registered_name}/{newest}"), newest, False


def trained_service(spec: ModelSpec, version: Any) -> str:
    """The feature service a registered version was trained with (its `feature_service` tag, set by
    training.pipeline.train), else the spec's own: a `variant_v2` champion is served v2 features."""
    tags = getattr(version, "tags", None) or {}
    return str(tags.get("feature_service") or spec.feature_service)
