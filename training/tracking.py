"""MLflow for the profile: SQLite file + local artifacts (local) or PostgreSQL (production); the registry's
champions, and the listing behind `pushplan models list`."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pushplan.settings import Settings

EXPERIMENT = "pushplan"
CHAMPION = "champion"
# Registered-model tags: the simple rule serving plans with when there is no champion, and the run
# whose RULE_ARTIFACT holds its parameters, fitted on that run's training days (training.baselines).
RULE_TAG = "serving_rule"
RULE_RUN_TAG = "serving_rule_run"
RULE_ARTIFACT = "serving_rule.json"


def tracking_uri(settings: Settings) -> str:
    return settings.sql_url("mlflow.db")


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow's tracking and registry at the profile's store; make sure the experiment exists."""
    uri = tracking_uri(settings)
    # MLflow draws a progress bar for every artifact it downloads, a rule file or a model alike;
    # commands keep the terminal to their own output (MLflow's documented switch).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = (settings.data_dir / "mlartifacts").resolve()
        client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return client


def champion_version(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def serving_rule_ref(client: MlflowClient, name: str) -> tuple[str, str] | None:
    """The rule the last training run chose for serving without a champion, and that run's id: two
    registry tags, cheap to read on every refresh."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return None
    rule, run_id = tags.get(RULE_TAG), tags.get(RULE_RUN_TAG)
    return (rule, run_id) if rule and run_id else None


def rule_params(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The parameters a training run fitted for its rule (its RULE_ARTIFACT: a download)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = client.download_artifacts(run_id, RULE_ARTIFACT, scratch)
        return dict(json.loads(Path(path).read_text())["params"])


def serving_rule(client: MlflowClient, name: str) -> tuple[str, dict[str, Any]] | None:
    """The rule the last training run chose for serving without a champion, and its parameters."""
    ref = serving_rule_ref(client, name)
    return None if ref is None else (ref[0], rule_params(client, ref[1]))


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    versions: list[dict[str, Any]]
    aliases: dict[str, str]
    headline_metric: str | None
    champion_metric: float | None
    serving_rule: str | None = None  # the rule its last training found best (serves without a champion)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": self.aliases,
            "serving_rule": self.serving_rule,
            "headline_metric": self.headline_metric,
            "champion_metric": self.champion_metric,
            "versions": self.versions,
        }


def list_models(client: MlflowClient, headline: dict[str, str]) -> list[RegisteredModelInfo]:
    """Every registered model with its versions, aliases and headline metric (from each version's run)."""
    out = []
    for model in client.search_registered_models():
        metric = headline.get(model.name)
        versions: list[dict[str, Any]] = []
        for version in sorted(
            client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)
        ):
            run = client.get_run(version.run_id) if version.run_id else None
            versions.append(
                {
                    "version": int(version.version),
                    "run_id": version.run_id,
                    "aliases": list(version.aliases),
                    "created": version.creation_timestamp,
                    "metric": run.data.metrics.get(metric) if run and metric else None,
                    "feature_service": run.data.params.get("feature_service") if run else None,
                }
            )
        aliases = {alias: str(version) for alias, version in model.aliases.items()}
        for entry in versions:
            entry["aliases"] = sorted(a for a, v in aliases.items() if v == str(entry["version"]))
        champion = next((v for v in versions if CHAMPION in v["aliases"]), None)
        out.append(
            RegisteredModelInfo(
                model.name,
                versions,
                aliases,
                metric,
                champion["metric"] if champion else None,
                (model.tags or {}).get(RULE_TAG),
            )
        )
    return sorted(out, key=lambda m: m.name)
