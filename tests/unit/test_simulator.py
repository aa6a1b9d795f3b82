"""The simulator: deterministic for a seed, realistic, and its data shows the truth it was drawn from."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.event_store import EventStore
from features.simulator import Population, simulate
from pushplan.clock import local_clock
from pushplan.domain import Campaign
from pushplan.settings import Settings

START = date(2026, 9, 1)


@pytest.fixture(scope="module")
def events(sim_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(sim_dir / "events.parquet")


@pytest.fixture(scope="module")
def truth(sim_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(sim_dir / "truth" / "users.parquet")


@pytest.fixture(scope="module")
def population(sim_dir: Path) -> Population:
    return Population.load(sim_dir)


def test_same_seed_same_data_other_seed_other_data(sim_dir: Path, tmp_path: Path) -> None:
    simulate(tmp_path / "again", users=1500, days=35, seed=11, start=START)
    simulate(tmp_path / "other", users=1500, days=35, seed=12, start=START)
    for name in ("events.parquet", "users.parquet", "truth/users.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(sim_dir / name), pd.read_parquet(tmp_path / "again" / name)
        )
    assert (sim_dir / "campaigns.json").read_text() == (tmp_path / "again" / "campaigns.json").read_text()
    assert not pd.read_parquet(sim_dir / "events.parquet").equals(
        pd.read_parquet(tmp_path / "other/events.parquet")
    )


def test_output_imports_cleanly_through_the_event_store(
    sim_dir: Path, events: pd.DataFrame, settings: Settings
) -> None:
    store = EventStore(settings)
    assert store.import_file(sim_dir / "users.parquet").stored == 1500
    assert store.import_file(sim_dir / "events.parquet").stored == len(events)
    campaigns = [Campaign.model_validate(c) for c in json.loads((sim_dir / "campaigns.json").read_text())]
    assert len(campaigns) >= 10
    sent = events[events["event_type"] == "push_sent"]
    assert set(sent["variant_id"]) <= {v.variant_id for c in campaigns for v in c.variants}


def test_realism_click_rate_zones_cold_start_and_diverse_best_hours(
    events: pd.DataFrame, truth: pd.DataFrame, population: Population
) -> None:
    counts = events["event_type"].value_counts()
    click_rate = counts["push_clicked"] / counts["push_delivered"]
    assert 0.01 <= click_rate <= 0.08
    assert truth["timezone"].nunique() >= 5

    cold = truth.loc[truth["cold_start"], "user_id"]
    assert 0.005 <= len(cold) / len(truth) <= 0.06
    assert not events["user_id"].isin(cold).any()

    population_best = int(np.argmax(population.rhythm.mean(axis=(0, 1))))
    gap = np.abs(truth["best_local_hour"] - population_best) % 24
    assert (np.minimum(gap, 24 - gap) > 2).mean() > 0.3
    assert truth["rhythm_type"].nunique() == 5


def test_past_pushes_log_uniform_propensities(events: pd.DataFrame) -> None:
    sent = events[events["event_type"] == "push_sent"]
    assert np.allclose(sent["propensity"], 1 / 72)
    assert events.loc[events["event_type"] != "push_sent", "propensity"].isna().all()
    assert sent["channel"].eq("push").all()


def test_click_rate_by_local_hour_peaks_near_best_local_hour(
    events: pd.DataFrame, truth: pd.DataFrame, population: Population
) -> None:
    sent = events[events["event_type"] == "push_sent"][["user_id", "campaign_id", "timestamp"]]
    clicks = events[events["event_type"] == "push_clicked"][["user_id", "campaign_id"]].assign(clicked=1)
    sends = sent.merge(clicks, on=["user_id", "campaign_id"], how="left").fillna({"clicked": 0})
    idx = population.index_of(sends["user_id"].to_numpy())
    hour, _ = local_clock(sends["timestamp"].dt.tz_localize(None).to_numpy(), population.timezone[idx])
    gap = np.abs(hour - population.best_local_hour[idx]) % 24
    sends["distance"] = np.minimum(gap, 24 - gap)

    near = sends.loc[sends["distance"] <= 1, "clicked"].mean()
    far = sends.loc[sends["distance"] >= 6, "clicked"].mean()
    assert near > 3 * far
    by_distance = sends.groupby("distance")["clicked"].mean()
    assert by_distance.idxmax() <= 1


def test_activity_shows_each_users_rhythm(events: pd.DataFrame, population: Population) -> None:
    opens = events[events["event_type"] == "app_open"]
    idx = population.index_of(opens["user_id"].to_numpy())
    hour, _ = local_clock(opens["timestamp"].dt.tz_localize(None).to_numpy(), population.timezone[idx])
    gap = np.abs(hour - population.best_local_hour[idx]) % 24
    assert (np.minimum(gap, 24 - gap) <= 2).mean() > 0.4  # 5 of 24 hours hold over 40 % of activity


def test_organic_purchases_happen_without_any_push(events: pd.DataFrame) -> None:
    pushed = set(events.loc[events["event_type"] == "push_sent", "user_id"])
    purchases = events[events["event_type"] == "purchase"]
    organic = purchases[~purchases["user_id"].isin(pushed)]
    assert len(organic) > 50
    assert (organic["value"] > 0).all()


def test_oracle_follows_hour_taste_and_fatigue(population: Population, truth: pd.DataFrame) -> None:
    user = truth[~truth["cold_start"] & (truth["timezone"] == "Europe/Berlin")].iloc[0]
    best = int(user["best_local_hour"])
    tuesday = datetime(2026, 9, 8, tzinfo=UTC)
    from zoneinfo import ZoneInfo

    at_best = datetime(2026, 9, 8, best, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    at_worst = at_best + timedelta(hours=12)
    p_best = population.oracle_click_probability(user["user_id"], at_best, [])
    assert p_best > population.oracle_click_probability(user["user_id"], at_worst, [])
    assert population.oracle_click_probability(user["user_id"], at_best, [], recent_sends=5) < p_best

    liked = max((c for c in truth.columns if c.startswith("taste_")), key=lambda c: user[c]).removeprefix(
        "taste_"
    )
    disliked = min((c for c in truth.columns if c.startswith("taste_")), key=lambda c: user[c]).removeprefix(
        "taste_"
    )
    assert population.oracle_click_probability(user["user_id"], at_best, [liked]) > p_best
    assert population.oracle_click_probability(user["user_id"], at_best, [disliked]) < p_best
    assert 0 < p_best <= 0.95

    with pytest.raises(ValueError, match="timezone-aware"):
        population.oracle_click_probability(user["user_id"], tuesday.replace(tzinfo=None), [])
    with pytest.raises(KeyError, match="nobody"):
        population.oracle_click_probability("nobody", tuesday, [])


def test_respond_plays_the_population_forward(population: Population, settings: Settings) -> None:
    users = population.user_id[~population.cold_start][:1200]
    when = pd.Timestamp("2026-10-10T18:00:00Z")
    sends = pd.DataFrame(
        {
            "user_id": users,
            "timestamp": when,
            "campaign_id": "c-live",
            "variant_id": "c-live-a",
            "channel": "sandbox",
            "variant_tags": [["discount", "urgency"]] * len(users),
        }
    )
    reactions = population.respond(sends, seed=3)
    pd.testing.assert_frame_equal(reactions, population.respond(sends, seed=3))
    kinds = reactions["event_type"].value_counts()
    assert kinds["push_opened"] > kinds["push_clicked"] > 0
    clicked = set(reactions.loc[reactions["event_type"] == "push_clicked", "user_id"])
    assert clicked <= set(reactions.loc[reactions["event_type"] == "push_opened", "user_id"])
    assert (reactions["timestamp"] >= when).all()
    assert reactions.loc[reactions["event_type"] == "push_clicked", "campaign_id"].eq("c-live").all()

    # Fatigue: the same sends after a week of daily messages draw fewer clicks in expectation.
    prior = pd.concat([sends.assign(timestamp=when - timedelta(days=d)) for d in range(1, 7)])
    tired = population.respond(sends, prior_sends=prior, seed=3)
    assert (tired["event_type"] == "push_clicked").sum() < kinds["push_clicked"]

    reactions.to_parquet(settings.data_dir.parent / "reactions.parquet")
    assert EventStore(settings).import_file(settings.data_dir.parent / "reactions.parquet").stored == len(
        reactions
    )


def test_organic_purchases_for_a_future_window(population: Population) -> None:
    purchases = population.organic_purchases(date(2026, 10, 6), date(2026, 10, 20), seed=1)
    assert len(purchases) > 100
    assert purchases["event_type"].eq("purchase").all()
    assert purchases["timestamp"].min() >= pd.Timestamp("2026-10-05T00:00:00Z")
    assert purchases["timestamp"].max() < pd.Timestamp("2026-10-21T00:00:00Z")
