"""`pushplan evaluate`: the registered champions judged together on the latest days.

Per model: its spec's metrics and baselines on the test days. For variant choice: IPS and SNIPS
of "the model's best variant" against "a uniformly random variant" from the logged sends. On
simulated data (a `truth/` folder from `pushplan simulate`): `oracle_share`, the expected clicks of
the (hour, variant) the models choose as a share of the best achievable, beside the random and
population-best-hour baselines, with the gap to 1.0 split into time and variant choice.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from features.event_store import EventStore
from features.simulator import Population as SimulatedPopulation
from features.store import feature_store, training_set
from pushplan.clock import local_clock, to_utc
from pushplan.domain import Channel
from pushplan.settings import Settings
from training import evaluation
from training.baselines import variant_rule_scores
from training.datasets import build_split, zones_of
from training.habits import (
    HISTORY_BUCKETS,
    RULES,
    Habits,
    Population,
    fitted_rule_scores,
    history_bucket,
    rule_scores,
)
from training.inference import choose_hours, load_champion, predict
from training.pipeline import EVAL_DAYS, SHRINKAGE_EVENTS, score
from training.specs import SEND_HOUR, SPECS, VARIANT, ModelSpec
from training.tracking import configure, serving_rule

ORACLE_USERS = 2_000
ORACLE_DAYS = 3


def evaluate_champions(
    settings: Settings, sim_dir: Path | None, eval_days: int = EVAL_DAYS
) -> dict[str, Any]:
    """Each model as it serves now (its champion, or the rule serving in its place), on the same test
    days, beside its baselines; with a simulation's truth, the oracle share."""
    client = configure(settings)
    store = feature_store(settings)
    models = {name: load_champion(spec, settings) for name, spec in SPECS.items()}
    rules = {name: serving_rule(client, spec.registered_name) for name, spec in SPECS.items()}
    unjudged = [name for name in SPECS if models[name] is None and rules[name] is None]
    if len(unjudged) == len(SPECS):
        raise LookupError("no model has been trained: run `pushplan train all` first")
    result: dict[str, Any] = {}
    splits = {}
    for name, spec in SPECS.items():
        if name in unjudged:
            result[name] = {"serving": "heuristic", "reason": "never trained"}
            continue
        splits[name] = build_split(spec, store, settings, eval_days)
        model = models[name] if models[name] is not None else RuleModel(spec, *rules[name])  # type: ignore[misc]
        metrics = score(spec, model, splits[name])
        result[name] = {k: v for k, v in metrics.items() if k != "rule_params"}
        result[name]["serving"] = "champion" if models[name] is not None else f"rule:{rules[name][0]}"  # type: ignore[index]
    if sim_dir is not None and (sim_dir / "truth" / "meta.json").exists() and "send-hour" in splits:
        history = pd.concat([splits["send-hour"].train, splits["send-hour"].valid])
        population = Population.fit(history["label"], history["is_weekend"] > 0)
        result["oracle"] = simulated_oracle(settings, store, models, rules, sim_dir, population)
    _log(result)
    return result


class RuleModel:
    """A rule serving in a model's place, with `predict_proba` as `training.inference.predict` expects,
    so it is scored by exactly the code that scores a model."""

    def __init__(self, spec: ModelSpec, rule: str, params: dict[str, Any]) -> None:
        self.spec, self.rule, self.params = spec, rule, params
        self.classes_ = np.arange(spec.n_classes)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.spec.n_classes == 24:
            return fitted_rule_scores(self.rule, self.params, frame)
        if not self.spec.chooses_variant:
            rates = np.full(len(frame), float(self.params.get("overall", 0.0)))
            return np.column_stack([1 - rates, rates])
        # Each row is one (user, variant) pair: the candidate's id where `with_variant` set it.
        ids = frame["candidate_variant_id"] if "candidate_variant_id" in frame else frame["variant_id"]
        tags = frame["variant_tags"].fillna("").str.split(",")
        users = frame["user_id"].astype(str).to_numpy()
        campaigns = (
            frame["campaign_id"].astype(str) if "campaign_id" in frame else pd.Series("", index=frame.index)
        )
        rates = np.array(
            [
                variant_rule_scores(self.rule, self.params, users[i : i + 1], [(str(v), list(t))], c)[0, 0]
                for i, (v, t, c) in enumerate(zip(ids, tags, campaigns, strict=True))
            ]
        )
        return np.column_stack([1 - rates, rates])


def simulated_oracle(
    settings: Settings,
    store: Any,
    models: dict[str, Any],
    rules: dict[str, Any],
    sim_dir: Path,
    population: Population,
) -> dict[str, Any]:
    """The served (hour, variant) choices against the hidden truth on the last simulated days; the
    hour-only share also per history-size bucket, for the model and each send-hour rule."""
    sim = SimulatedPopulation.load(sim_dir)
    events = EventStore(settings)
    users = events.read_users()
    eligible = users[users["push_opt_in"].astype(bool)]["user_id"]
    eligible = eligible[eligible.isin(sim.user_id[~sim.cold_start])]
    eligible = eligible.sample(n=min(ORACLE_USERS, len(eligible)), random_state=0).to_numpy()
    variants = _latest_campaign_variants(settings)
    last_day = sim.start + timedelta(days=sim.days - 1)
    zones = zones_of(events, settings, pd.Series(eligible))
    hour_model = (
        models["send-hour"] if models["send-hour"] is not None else RuleModel(SEND_HOUR, *rules["send-hour"])
    )
    variant_model = models["variant"]
    if variant_model is None and rules["variant"] is not None:
        variant_model = RuleModel(VARIANT, *rules["variant"])

    rows, truths, hour_picks, variant_picks, rule_picks, buckets = [], [], [], [], [], []
    for back in range(ORACLE_DAYS):
        day = last_day - timedelta(days=back)
        day_start = pd.Timestamp(day, tz="UTC")
        local_noon = to_utc(np.full(len(eligible), np.datetime64(day, "s") + np.timedelta64(12, "h")), zones)
        _, weekend = local_clock(local_noon, zones)
        hour_rows = pd.DataFrame(
            {"user_id": eligible, "event_timestamp": day_start, "is_weekend": weekend.astype(float)}
        )
        hour_features = training_set(store, settings, SEND_HOUR.feature_service, hour_rows)
        hour_choice = choose_hours(predict(SEND_HOUR, hour_model, hour_features))
        habits = Habits.of(hour_features)
        rule_picks.append(
            {r: choose_hours(rule_scores(r, habits, population, SHRINKAGE_EVENTS)) for r in RULES}
        )
        buckets.append(history_bucket(habits.events))

        context = pd.DataFrame(
            {
                "user_id": eligible,
                "event_timestamp": day_start,
                "request_time": day_start,
                "candidate_local_hour": hour_choice,
                "window_start": day_start,
                "window_end": day_start + pd.Timedelta(days=1),
                "variant_tags": "",
            }
        )
        if variant_model is not None:
            variant_features = training_set(store, settings, VARIANT.feature_service, context)
            variant_choice, _ = evaluation.best_variant(
                variant_features, variants, lambda frame: predict(VARIANT, variant_model, frame)
            )
        else:
            variant_choice = np.zeros(len(eligible), dtype=int)
        truths.append(_true_probabilities(sim, eligible, zones, day, variants))
        hour_picks.append(hour_choice)
        variant_picks.append(variant_choice)
        rows.append(pd.DataFrame({"user_id": eligible, "timezone": zones}))

    true_p = np.concatenate(truths)
    hours, picks = np.concatenate(hour_picks), np.concatenate(variant_picks)
    shares: dict[str, Any] = dict(evaluation.oracle_share(true_p, hours, picks))
    best_hour = population.mode_hour
    shares["population_best_hour"] = best_hour
    shares["population_best_hour_share"] = evaluation.population_best_hour_share(true_p, best_hour)
    shares["gap_from_time"] = 1 - shares["hour_only_share"]
    shares["gap_from_variant"] = 1 - shares["variant_only_share"]
    shares["variants"] = len(variants)
    shares["days"] = ORACLE_DAYS
    meta = pd.concat(rows, ignore_index=True)
    shares["by_timezone"] = {
        str(zone): evaluation.oracle_share(true_p[idx], hours[idx], picks[idx])["oracle_share"]
        for zone, idx in meta.groupby("timezone").indices.items()
    }
    bucket = np.concatenate(buckets)
    by_rule = {r: np.concatenate([p[r] for p in rule_picks]) for r in RULES}
    by_history: dict[str, dict[str, float]] = {}
    for b, (label, _) in enumerate(HISTORY_BUCKETS):
        members = bucket == b
        if not members.any():
            continue
        row: dict[str, float] = {"users": int(members.sum())}
        for name, choice in {"model": hours, **by_rule}.items():
            row[f"{name}_hour_share"] = evaluation.hour_only_share(true_p[members], choice[members])
        by_history[label] = row
    shares["hour_share_by_history"] = by_history
    for r in RULES:
        shares[f"{r}_hour_share"] = evaluation.hour_only_share(true_p, by_rule[r])
    return shares


def _true_probabilities(
    population: SimulatedPopulation, user_ids: np.ndarray, zones: np.ndarray, day: Any, variants: pd.DataFrame
) -> np.ndarray:
    """(users × 24 local hours × variants) true click probabilities for a fresh send (no recent sends)."""
    idx = population.index_of(user_ids)
    n, v = len(user_ids), len(variants)
    from features.simulator.population import tag_matrix

    tags = tag_matrix([list(t) for t in variants["tags"]])
    out = np.zeros((n, 24, v))
    for hour in range(24):
        local = np.full(n, np.datetime64(day, "s") + np.timedelta64(hour * 3600 + 1800, "s"))
        when = to_utc(local, zones)
        for k in range(v):
            out[:, hour, k] = population.click_probability(
                idx, when, np.repeat(tags[k : k + 1], n, axis=0), np.zeros(n), [Channel.push.value] * n
            )
    return out


def _latest_campaign_variants(settings: Settings) -> pd.DataFrame:
    """The variants of the campaign sent most recently: what a campaign system would plan next.

    Only campaigns whose variants are in the catalogue count (one sent by another system and never
    imported has no titles or tags to score)."""
    store = EventStore(settings)
    variants = store.read_variants()
    events = store.read_events(["campaign_id", "timestamp"], event_types=["push_sent"])
    known = events[events["campaign_id"].isin(set(variants["campaign_id"]))]
    if known.empty:
        raise LookupError("no sent campaign has its variants in the catalogue: import campaigns.json")
    latest = known.sort_values("timestamp")["campaign_id"].iloc[-1]
    return variants[variants["campaign_id"] == latest].reset_index(drop=True)


def _log(result: dict[str, Any]) -> None:
    sections = {name: values for name, values in result.items() if isinstance(values, dict)}
    flat = {
        f"{name}_{key}": float(value)
        for name, values in sections.items()
        for key, value in values.items()
        if isinstance(value, int | float)
    }
    with mlflow.start_run(run_name="evaluate-champions"), tempfile.TemporaryDirectory() as scratch:
        mlflow.log_metrics(flat)
        report = evaluation.markdown_report("champions", sections)
        path = Path(scratch) / "evaluation.md"
        path.write_text(report)
        mlflow.log_artifact(str(path))
