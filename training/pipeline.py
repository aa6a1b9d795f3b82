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
from training.baselines import VARIANT_LEAD_Z, Verdict, variant_rate, variant_rates, verdict
from training.datasets import Split, build_split
from training.frames import FeatureFrame
from training.habits import RULES, Habits, HourBlend, Population, history_bucket, rule_scores
from training.inference import choose_hours, predict
from training.off_policy import estimates, snips_difference
from training.specs import ModelSpec
from training.tracking import CHAMPION, RULE_ARTIFACT, RULE_RUN_TAG, RULE_TAG, champion_version, configure

EVAL_DAYS = 10
# Events' worth of the population's hours the shrinkage rule blends into a user's (as the features do).
SHRINKAGE_EVENTS = 5.0
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
    verdict: Verdict | None = None  # the new version against the simple rules
    retired: bool = False  # the old champion lost to a rule on these days and no longer serves
    serving: str = ""  # what serves now: "v3" or "rule:user_mode_hour"


def input_columns(spec: ModelSpec, store: FeatureStore) -> list[str]:
    return list(dict.fromkeys([*service_feature_names(store, spec.feature_service), *spec.extra_columns]))


def fit_model(
    spec: ModelSpec, params: dict[str, Any], columns: list[str], train: pd.DataFrame, valid: pd.DataFrame
) -> Any:
    """Fit LightGBM (early-stopped on `valid`) behind the feature transformer; calibrate if the spec
    says; for the send hour, blend with the users' habits (weights fitted on the later validation days)."""
    stop_on, blend_on = valid, valid
    if spec.blends_habits:
        # The blend's weights must come from days the trees neither trained nor stopped on, or the
        # trees look better than they are beside the habits.
        middle = valid["event_timestamp"].quantile(0.5)
        stop_on, blend_on = (
            valid[valid["event_timestamp"] < middle],
            valid[valid["event_timestamp"] >= middle],
        )
        if stop_on.empty or blend_on.empty:
            stop_on = blend_on = valid
    frame = FeatureFrame(columns=columns).fit(train)
    classifier = lgb.LGBMClassifier(objective=spec.objective, random_state=0, **params)
    classifier.fit(
        frame.transform(train),
        train["label"].to_numpy(),
        eval_X=(frame.transform(stop_on),),
        eval_y=(stop_on["label"].to_numpy(),),
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    model: Any = Pipeline([("features", frame), ("lgbm", classifier)])
    if spec.calibrate:
        # Isotonic on the validation days, which the trees did not see: p(click) must mean what it says.
        model = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(
            valid, valid["label"].to_numpy()
        )
    if spec.blends_habits:
        blend = HourBlend(model, Population.fit(train["label"], train["is_weekend"] > 0))
        model = blend.fit_weights(blend.model_proba(blend_on), blend_on, blend_on["label"].to_numpy())
    return model


def importance(model: Any) -> pd.Series:
    model = model.model if isinstance(model, HourBlend) else model
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
    """The spec's metrics on the test days, beside its baselines (fitted on the days before), by slice."""
    test = split.test
    history = pd.concat([split.train, split.valid], ignore_index=True)
    if spec.n_classes == 24:
        proba = predict(spec, model, test)
        population = Population.fit(history["label"], history["is_weekend"] > 0)
        habits = Habits.of(test)
        rules = {rule: rule_scores(rule, habits, population, SHRINKAGE_EVENTS) for rule in RULES}
        metrics = evaluation.hour_metrics(
            test["label"].to_numpy(), proba, rules, history_bucket(habits.events)
        )
        metrics["slices"] = _slices(
            test, lambda part: evaluation.hour_hits(part["label"], choose_hours(proba[part.index]))["within1"]
        )
        metrics["rule_params"] = {"population": population.as_dict(), "prior_events": SHRINKAGE_EVENTS}
        if isinstance(model, HourBlend):
            metrics["blend_weights"] = model.weights_table()
        return metrics
    p = predict(spec, model, test)
    metrics = evaluation.binary_metrics(test["label"].to_numpy(), p)
    metrics["slices"] = _slices(
        test, lambda part: evaluation.binary_metrics(part["label"].to_numpy(), p[part.index])["auc"]
    )
    metrics["rule_params"] = {"overall": round(float(history["label"].mean()), 6)}
    if spec.chooses_variant:
        rates = variant_rates(history)
        metrics.update(variant_off_policy(spec, model, test, split.variants, rates))
        metrics["rule_params"] = rates
    return metrics


# The logging policy explored hours uniformly and independently of the variant, so the probability
# of the logged variant given its hour is the logged joint propensity times the number of hours.
EXPLORED_HOURS = 24


def variant_off_policy(
    spec: ModelSpec,
    model: Any,
    test: pd.DataFrame,
    by_campaign: dict[str, pd.DataFrame],
    rates: dict[str, Any],
) -> dict[str, float]:
    """IPS / SNIPS of the model's variant choice, of a random variant and of the campaign's best
    variant overall (`rates`, fitted before the test days), on the logged test sends."""
    chosen = np.zeros(len(test), dtype=bool)
    best_overall = np.zeros(len(test), dtype=bool)
    n_variants = np.ones(len(test))
    for campaign, rows in test.groupby("campaign_id"):
        variants = by_campaign.get(str(campaign))
        if variants is None:
            continue
        if len(variants) == 1:  # no choice to make: every policy sends the one variant
            chosen[rows.index] = best_overall[rows.index] = True
            continue
        pick, _ = evaluation.best_variant(rows, variants, lambda frame: predict(spec, model, frame))
        ids = variants["variant_id"].to_numpy()
        logged = rows["variant_id"].to_numpy()
        chosen[rows.index] = ids[pick] == logged
        overall = int(
            np.argmax(
                [
                    variant_rate(rates, str(campaign), v.variant_id, list(v.tags))
                    for v in variants.itertuples()
                ]
            )
        )
        best_overall[rows.index] = ids[overall] == logged
        n_variants[rows.index] = len(variants)
    propensity = np.clip(test["propensity"].to_numpy(dtype=float) * EXPLORED_HOURS, 1e-6, 1.0)
    values = evaluation.off_policy_values(test["label"].to_numpy(), chosen, propensity, n_variants)
    best = estimates(test["label"].to_numpy(dtype=float), propensity, best_overall.astype(float))
    values["ips_best_overall"] = best["ips"]["value"]
    values["snips_best_overall"] = best["snips"]["value"] if best["snips"] else 0.0
    # How sure the logged sends are that the model's choices beat each rule's (paired, one-sided).
    reward = test["label"].to_numpy(dtype=float)
    for rule, target in (("random", 1.0 / n_variants), ("best_overall", best_overall.astype(float))):
        gap = snips_difference(reward, propensity, chosen.astype(float), target, z=VARIANT_LEAD_Z)
        values[f"snips_lead_over_{rule}"], values[f"snips_lead_over_{rule}_lower"] = (
            gap["difference"],
            gap["lower"],
        )
    random_lead = snips_difference(
        reward, propensity, 1.0 / n_variants, best_overall.astype(float), z=VARIANT_LEAD_Z
    )
    values["snips_random_lead_over_best_overall_lower"] = random_lead["lower"]
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

    judged = verdict(spec, metrics)
    current = champion_version(client, spec.registered_name)
    champion_value, champion_holds = None, False
    if current is not None:
        old_model = mlflow.sklearn.load_model(f"models:/{spec.registered_name}@{CHAMPION}")
        old_metrics = score(spec, old_model, split)
        champion_value = float(old_metrics[spec.metric])
        champion_holds = verdict(spec, old_metrics).beats
    # A version that loses to a simple rule is never promoted; a champion that now loses to one is
    # retired, and serving plans with the best rule until a model earns its place again.
    wins = promote or (judged.beats and (not champion_holds or better(spec, value, champion_value)))
    retired = current is not None and not wins and not champion_holds and not promote

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
        rule = {"rule": judged.best_rule, "params": metrics["rule_params"]}
        (Path(scratch) / RULE_ARTIFACT).write_text(json.dumps(rule, indent=2))
        mlflow.log_artifact(str(Path(scratch) / RULE_ARTIFACT))
        for plot in evaluation.save_plots(Path(scratch) / "plots", metrics, importance(model)):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        example = split.train[columns].head(5)
        # Integer columns in a signature cannot hold missing values; every numeric input is a float.
        example = example.astype({c: "float64" for c in example.select_dtypes("integer").columns})
        # A text column with no value at all (no platform in the data) has no type MLflow can infer.
        empty = [c for c in example.select_dtypes("object").columns if example[c].isna().all()]
        example[empty] = ""
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
        mlflow.set_tag("baselines", judged.describe())
    client.set_model_version_tag(spec.registered_name, str(version), "feature_service", spec.feature_service)
    client.set_model_version_tag(spec.registered_name, str(version), "beats_baselines", str(judged.beats))
    # The best rule, and the run whose RULE_ARTIFACT holds its fitted parameters, on the registered
    # model: what serving plans with whenever there is no champion.
    client.set_registered_model_tag(spec.registered_name, RULE_TAG, judged.best_rule)
    client.set_registered_model_tag(spec.registered_name, RULE_RUN_TAG, run.info.run_id)
    if wins:
        client.set_registered_model_alias(spec.registered_name, CHAMPION, str(version))
    elif retired:
        client.delete_registered_model_alias(spec.registered_name, CHAMPION)
    serving = (
        f"v{version}"
        if wins
        else (f"v{current.version}" if current is not None and not retired else f"rule:{judged.best_rule}")
    )
    return TrainResult(
        spec.name,
        version,
        run.info.run_id,
        spec.metric,
        value,
        champion_value,
        wins,
        metrics,
        judged,
        retired,
        serving,
    )


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
