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
from features.simulator import Population
from features.store import feature_store, training_set
from pushplan.clock import local_clock, to_utc
from pushplan.domain import Channel
from pushplan.settings import Settings
from training import evaluation
from training.datasets import build_split, zones_of
from training.inference import choose_hours, load_champion, predict
from training.pipeline import EVAL_DAYS, score
from training.specs import SEND_HOUR, SPECS, VARIANT

ORACLE_USERS = 2_000
ORACLE_DAYS = 3


def evaluate_champions(
    settings: Settings, sim_dir: Path | None, eval_days: int = EVAL_DAYS
) -> dict[str, Any]:
    store = feature_store(settings)
    models = {name: load_champion(spec, settings) for name, spec in SPECS.items()}
    missing = [name for name, model in models.items() if model is None]
    if missing:
        raise LookupError(f"no champion for {', '.join(missing)}: run `pushplan train all` first")
    result: dict[str, Any] = {}
    splits = {}
    for name, spec in SPECS.items():
        splits[name] = build_split(spec, store, settings, eval_days)
        metrics = score(spec, models[name], splits[name])
        result[name] = {k: v for k, v in metrics.items() if k != "reliability"}
        if "reliability" in metrics:
            result[name]["reliability"] = metrics["reliability"]
    population_best = int(
        pd.concat([splits["send-hour"].train, splits["send-hour"].valid])["label"].mode().iloc[0]
    )
    if sim_dir is not None and (sim_dir / "truth" / "meta.json").exists():
        result["oracle"] = simulated_oracle(settings, store, models, sim_dir, population_best)
    _log(result)
    return result


def simulated_oracle(
    settings: Settings, store: Any, models: dict[str, Any], sim_dir: Path, population_best: int
) -> dict[str, Any]:
    """The models' (hour, variant) choices against the hidden truth on the last simulated days."""
    population = Population.load(sim_dir)
    events = EventStore(settings)
    users = events.read_users()
    eligible = users[users["push_opt_in"].astype(bool)]["user_id"]
    eligible = eligible[eligible.isin(population.user_id[~population.cold_start])]
    eligible = eligible.sample(n=min(ORACLE_USERS, len(eligible)), random_state=0).to_numpy()
    variants = _latest_campaign_variants(settings)
    last_day = population.start + timedelta(days=population.days - 1)
    zones = zones_of(events, settings, pd.Series(eligible))

    rows, truths, hour_picks, variant_picks = [], [], [], []
    for back in range(ORACLE_DAYS):
        day = last_day - timedelta(days=back)
        day_start = pd.Timestamp(day, tz="UTC")
        local_noon = to_utc(np.full(len(eligible), np.datetime64(day, "s") + np.timedelta64(12, "h")), zones)
        _, weekend = local_clock(local_noon, zones)
        hour_rows = pd.DataFrame(
            {"user_id": eligible, "event_timestamp": day_start, "is_weekend": weekend.astype(float)}
        )
        hour_features = training_set(store, settings, SEND_HOUR.feature_service, hour_rows)
        hour_choice = choose_hours(predict(SEND_HOUR, models["send-hour"], hour_features))

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
        variant_features = training_set(store, settings, VARIANT.feature_service, context)
        variant_choice, _ = evaluation.best_variant(
            variant_features, variants, lambda frame: predict(VARIANT, models["variant"], frame)
        )
        truths.append(_true_probabilities(population, eligible, zones, day, variants))
        hour_picks.append(hour_choice)
        variant_picks.append(variant_choice)
        rows.append(pd.DataFrame({"user_id": eligible, "timezone": zones}))

    true_p = np.concatenate(truths)
    hours, picks = np.concatenate(hour_picks), np.concatenate(variant_picks)
    shares: dict[str, Any] = dict(evaluation.oracle_share(true_p, hours, picks))
    shares["population_best_hour"] = population_best
    shares["population_best_hour_share"] = evaluation.population_best_hour_share(true_p, population_best)
    shares["gap_from_time"] = 1 - shares["hour_only_share"]
    shares["gap_from_variant"] = 1 - shares["variant_only_share"]
    shares["variants"] = len(variants)
    shares["days"] = ORACLE_DAYS
    meta = pd.concat(rows, ignore_index=True)
    shares["by_timezone"] = {
        str(zone): evaluation.oracle_share(true_p[idx], hours[idx], picks[idx])["oracle_share"]
        for zone, idx in meta.groupby("timezone").indices.items()
    }
    return shares


def _true_probabilities(
    population: Population, user_ids: np.ndarray, zones: np.ndarray, day: Any, variants: pd.DataFrame
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
