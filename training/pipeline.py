"""The one training pipeline: examples → Feast features → LightGBM → evaluation → MLflow run and registry.

`fit_model` is the single training function; `train` calls it once, and `--tune N` has Optuna
call it N times on the same split before the final fit, so tuning never copies the loop.
A new version becomes the `champion` only if it beats the current champion on the same test
data (or with `promote=True`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from feast import FeatureStore
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from rich.console import Console
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from features.store import feature_store, service_feature_names
from pushplan.settings import Settings
from training import evaluation
from training.datasets import Split, build_split
from training.frames import FeatureFrame
from training.inference import predict
from training.specs import ModelSpec
from training.tracking import CHAMPION, champion_version, configure

EVAL_DAYS = 10
console = Console(stderr=True)


@dataclass
class TrainResult:
    spec: str
    version: int
    run_id: str
    metric: str
    value: float
    champion_value: float | None
    promoted: bool
    metrics: dict[str, Any] = field(default_factory=dict)


def input_columns(spec: ModelSpec, store: FeatureStore) -> list[str]:
    return list(dict.fromkeys([*service_feature_names(store, spec.feature_service), *spec.extra_columns]))


def fit_model(
    spec: ModelSpec, params: dict[str, Any], columns: list[str], train: pd.DataFrame, valid: pd.DataFrame
) -> Any:
    """Fit LightGBM (early-stopped on `valid`) behind the feature transformer; calibrate if the spec says."""
    frame = FeatureFrame(columns=columns).fit(train)
    classifier = lgb.LGBMClassifier(objective=spec.objective, random_state=0, **params)
    classifier.fit(
        frame.transform(train),
        train["label"].to_numpy(),
        eval_X=(frame.transform(valid),),
        eval_y=(valid["label"].to_numpy(),),
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    model: Any = Pipeline([("features", frame), ("lgbm", classifier)])
    if spec.calibrate:
        # Isotonic on the validation days, which the trees did not see: p(click) must mean what it says.
        model = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(
            valid, valid["label"].to_numpy()
        )
    return model


def importance(model: Any) -> pd.Series:
    pipeline = model.estimator if isinstance(model, FrozenEstimator) else model
    if isinstance(model, CalibratedClassifierCV):
        pipeline = model.calibrated_classifiers_[0].estimator
        pipeline = pipeline.estimator if isinstance(pipeline, FrozenEstimator) else pipeline
    classifier = pipeline.named_steps["lgbm"]
    return pd.Series(
        classifier.booster_.feature_importance(importance_type="gain"),
        index=classifier.booster_.feature_name(),
    )


def score(spec: ModelSpec, model: Any, split: Split) -> dict[str, Any]:
    """The spec's metrics on the test days, beside its baselines, and by slice."""
    test = split.test
    if spec.n_classes == 24:
        proba = predict(spec, model, test)
        train = pd.concat([split.train, split.valid])
        population_best = int(train["label"].mode().iloc[0])
        per_user = train.groupby("user_id")["label"].agg(lambda hours: int(hours.mode().iloc[0]))
        user_best = test["user_id"].map(per_user).fillna(population_best).astype(int).to_numpy()
        metrics = evaluation.hour_metrics(test["label"].to_numpy(), proba, population_best, user_best)
        metrics["slices"] = _slices(
            test, lambda part: evaluation.top_k_hits(part["label"], proba[part.index], 3)
        )
        return metrics
    p = predict(spec, model, test)
    metrics = evaluation.binary_metrics(test["label"].to_numpy(), p)
    metrics["slices"] = _slices(
        test, lambda part: evaluation.binary_metrics(part["label"].to_numpy(), p[part.index])["auc"]
    )
    if spec.chooses_variant:
        metrics.update(variant_off_policy(spec, model, test, split.variants))
    return metrics


# The logging policy explored hours uniformly and independently of the variant, so the probability
# of the logged variant given its hour is the logged joint propensity times the number of hours.
EXPLORED_HOURS = 24


def variant_off_policy(
    spec: ModelSpec, model: Any, test: pd.DataFrame, by_campaign: dict[str, pd.DataFrame]
) -> dict[str, float]:
    """IPS / SNIPS of the model's variant choice vs a random variant, on the logged test sends."""
    chosen = np.zeros(len(test), dtype=bool)
    n_variants = np.ones(len(test))
    for campaign, rows in test.groupby("campaign_id"):
        variants = by_campaign.get(str(campaign))
        if variants is None or len(variants) < 2:
            continue
        pick, _ = evaluation.best_variant(rows, variants, lambda frame: predict(spec, model, frame))
        chosen[rows.index] = variants["variant_id"].to_numpy()[pick] == rows["variant_id"].to_numpy()
        n_variants[rows.index] = len(variants)
    propensity = np.clip(test["propensity"].to_numpy(dtype=float) * EXPLORED_HOURS, 1e-6, 1.0)
    values = evaluation.off_policy_values(test["label"].to_numpy(), chosen, propensity, n_variants)
    values["snips_lift"] = (
        values["snips_model"] / values["snips_random"] - 1 if values["snips_random"] else np.nan
    )
    return values


def _slices(test: pd.DataFrame, metric: Any) -> dict[str, float]:
    """The metric for new vs established users and by time zone."""
    out: dict[str, float] = {}
    stage = test["lifecycle_stage"] if "lifecycle_stage" in test else pd.Series("unknown", index=test.index)
    groups = {"new users": test[stage == "new"], "established users": test[stage != "new"]}
    if "timezone" in test:
        for zone, part in test.groupby("timezone"):
            groups[f"zone {zone}"] = part
    for name, part in groups.items():
        if len(part) >= 50:
            out[name] = float(metric(part))
    return out


def tune(spec: ModelSpec, columns: list[str], split: Split, trials: int) -> dict[str, Any]:
    """Optuna over the main LightGBM knobs, each trial the same `fit_model` on the same split."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        params = {
            **spec.params,
            "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 20, 300, log=True),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
        model = fit_model(spec, params, columns, split.train, split.valid)
        return float(score(spec, model, replace(split, test=split.valid))[spec.metric])

    study = optuna.create_study(direction="maximize" if spec.higher_is_better else "minimize")
    study.optimize(objective, n_trials=trials, show_progress_bar=True)
    return {**spec.params, **study.best_params}


def better(spec: ModelSpec, new: float, old: float | None) -> bool:
    if old is None or np.isnan(old):
        return True
    return new > old if spec.higher_is_better else new < old


def train(
    spec: ModelSpec, settings: Settings, *, trials: int = 0, promote: bool = False, eval_days: int = EVAL_DAYS
) -> TrainResult:
    """Train, evaluate, log, register; move `champion` to the new version if it wins (or `promote`)."""
    client = configure(settings)
    store = feature_store(settings)
    console.print(f"[bold]{spec.name}[/]: building examples and point-in-time features", highlight=False)
    split = build_split(spec, store, settings, eval_days)
    columns = input_columns(spec, store)
    params = spec.params
    if trials:
        console.print(f"[bold]{spec.name}[/]: tuning with {trials} Optuna trials", highlight=False)
        params = tune(spec, columns, split, trials)
    console.print(
        f"[bold]{spec.name}[/]: fitting on {len(split.train):,} rows, early stopping on {len(split.valid):,}",
        highlight=False,
    )
    model = fit_model(spec, params, columns, split.train, split.valid)
    metrics = score(spec, model, split)
    value = float(metrics[spec.metric])

    current = champion_version(client, spec.registered_name)
    champion_value = None
    if current is not None:
        old_model = mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}")
        champion_value = float(score(spec, old_model, split)[spec.metric])
    wins = promote or better(spec, value, champion_value)

    with mlflow.start_run(run_name=f"train-{spec.name}") as run, tempfile.TemporaryDirectory() as scratch:
        mlflow.log_params(
            {
                **{f"lgbm_{k}": v for k, v in params.items()},
                "feature_service": spec.feature_service,
                "label": spec.label,
                "objective": spec.objective,
                "training_window_start": split.first.isoformat(),
                "training_window_end": split.cutoff.isoformat(),
                "evaluation_window_end": split.last.isoformat(),
                "train_rows": len(split.train),
                "valid_rows": len(split.valid),
                "test_rows": len(split.test),
                "tuning_trials": trials,
                "calibrated": spec.calibrate,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_metrics({f"slice_{_metric_key(k)}": v for k, v in metrics.get("slices", {}).items()})
        if champion_value is not None:
            mlflow.log_metric(f"champion_{spec.metric}", champion_value)
        report = evaluation.markdown_report(
            f"{spec.name} model", {"test days": metrics, "slices": metrics.get("slices", {})}
        )
        (Path(scratch) / "evaluation.md").write_text(report)
        (Path(scratch) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        mlflow.log_artifact(str(Path(scratch) / "evaluation.md"))
        mlflow.log_artifact(str(Path(scratch) / "metrics.json"))
        for plot in evaluation.save_plots(Path(scratch) / "plots", metrics, importance(model)):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        example = split.train[columns].head(5)
        # Integer columns in a signature cannot hold missing values; every numeric input is a float.
        example = example.astype({c: "float64" for c in example.select_dtypes("integer").columns})
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            signature=infer_signature(example, predict(spec, model, example)),
            input_example=example,
            pyfunc_predict_fn="predict_proba",
        )
        version = _register(client, spec.registered_name, info, run.info.run_id)
        mlflow.set_tag("promoted", str(wins))
    client.set_model_version_tag(spec.registered_name, str(version), "feature_service", spec.feature_service)
    if wins:
        client.set_registered_model_alias(spec.registered_name, CHAMPION, str(version))
    return TrainResult(spec.name, version, run.info.run_id, spec.metric, value, champion_value, wins, metrics)


def _register(client: MlflowClient, name: str, info: Any, run_id: str) -> int:
    """A new registry version of the logged model, made through the client: MLflow's own way
    (`log_model(registered_model_name=...)`) prints two lines per model to stderr, which no logger
    setting reaches, and the commands keep the terminal to their own output."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    made = client.create_model_version(name, source=info.model_uri, run_id=run_id, model_id=info.model_id)
    return int(made.version)


def _metric_key(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./" else "_" for ch in name)
