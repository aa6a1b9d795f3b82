"""The Feast store on the local profile (SQLite online, parquet offline): point in time, online = offline,
cold start, the engagement vector against the hidden truth, pushes and incremental materialization."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from features.store import (
    SERVICES,
    defaults,
    materialize,
    online_features,
    push_events,
    snapshot_span,
    training_set,
)
from pushplan.settings import Settings
from tests.features_setup import built_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> tuple[Settings, FeatureStore]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("local-features"))
    return settings, built_store(settings, sim_dir)


@pytest.fixture(scope="module")
def truth(sim_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(sim_dir / "truth" / "users.parquet")


def request_for(moment: datetime, hour: int = 20, tags: str = "discount") -> dict[str, object]:
    return {
        "request_time": moment,
        "candidate_local_hour": hour,
        "window_start": moment,
        "window_end": moment + timedelta(hours=12),
        "variant_tags": tags,
    }


def assert_same_rows(left: pd.DataFrame, right: pd.DataFrame) -> None:
    assert list(left.columns) == list(right.columns)
    for column in left.columns:
        a, b = left[column].tolist(), right[column].tolist()
        if a and isinstance(a[0], list | np.ndarray):
            assert np.allclose(np.stack(a), np.stack(b), atol=1e-6), column
        elif pd.api.types.is_numeric_dtype(left[column]) and pd.api.types.is_numeric_dtype(right[column]):
            assert np.allclose(left[column].astype(float), right[column].astype(float), equal_nan=True), (
                column
            )
        else:
            assert a == b, column


def test_online_equals_offline_at_the_same_moment(
    local: tuple[Settings, FeatureStore], truth: pd.DataFrame
) -> None:
    settings, store = local
    _, last = snapshot_span(settings)
    moment = last + timedelta(hours=3)
    users = truth.loc[~truth["cold_start"], "user_id"].head(40).tolist()
    for service in SERVICES:
        context = request_for(moment)
        online = online_features(store, settings, service, users, context)
        rows = pd.DataFrame({"user_id": users, "event_timestamp": moment, **context})
        offline = training_set(store, settings, service, rows).drop(columns=["event_timestamp"])
        columns = [c for c in online.columns if c in offline.columns]
        assert len(columns) > 10
        assert_same_rows(online[columns], offline[columns])


def test_our_request_features_equal_feasts_own_on_demand_view(
    local: tuple[Settings, FeatureStore], truth: pd.DataFrame
) -> None:
    settings, store = local
    _, last = snapshot_span(settings)
    context = request_for(last + timedelta(hours=1), hour=8, tags="urgency,news")
    users = truth.loc[~truth["cold_start"], "user_id"].iloc[100:130].tolist()
    ours = online_features(store, settings, "click_v1", users, context)
    feast_rows = [{"user_id": u, **context} for u in users]
    native = store.get_online_features(
        features=store.get_feature_service("click_v1"), entity_rows=feast_rows
    ).to_df()
    columns = [
        "engagement_at_hour",
        "hour_rank",
        "tag_affinity_mean",
        "hours_since_last_push",
        "window_hours",
    ]
    assert_same_rows(ours[columns].reset_index(drop=True), native[columns].reset_index(drop=True))


def test_training_rows_never_see_a_later_purchase(
    local: tuple[Settings, FeatureStore], sim_dir: Path
) -> None:
    settings, store = local
    events = pd.read_parquet(sim_dir / "events.parquet")
    purchases = events[events["event_type"] == "purchase"].sort_values("timestamp")
    first_buy = purchases.groupby("user_id").head(1)
    chosen = first_buy[first_buy["timestamp"] > pd.Timestamp("2026-09-10", tz="UTC")].iloc[0]
    bought_at = chosen["timestamp"]
    day_end = bought_at.normalize() + pd.Timedelta(days=1)
    rows = pd.DataFrame(
        {
            "user_id": chosen["user_id"],
            "event_timestamp": [
                bought_at - pd.Timedelta(minutes=1),
                bought_at + pd.Timedelta(minutes=1),  # bought, but the day's snapshot is not out yet
                day_end + pd.Timedelta(minutes=1),
            ],
        }
    )
    frame = training_set(store, settings, "send_hour_v1", rows)
    assert frame["frequency_90d"].tolist() == [0, 0, 1]
    assert frame["days_since_active"].iloc[2] < 1


def test_cold_start_users_get_defaults_never_an_error(local: tuple[Settings, FeatureStore]) -> None:
    settings, store = local
    known = defaults(settings)
    _, last = snapshot_span(settings)
    for service in SERVICES:
        row = online_features(store, settings, service, ["never-seen"], request_for(last)).iloc[0]
        if "lifecycle_stage" in row:
            assert row["lifecycle_stage"] == "new"
        if "activity_by_hour" in row:
            assert np.allclose(row["activity_by_hour"], known["activity_by_hour"])
            assert sum(known["activity_by_hour"]) == pytest.approx(1.0, abs=1e-4)
        if "engagement_at_hour" in row:
            assert row["engagement_at_hour"] == pytest.approx(known["activity_by_hour"][20])
    rows = pd.DataFrame({"user_id": ["never-seen"], "event_timestamp": [last], **request_for(last)})
    assert training_set(store, settings, "click_v1", rows)["sends_30d"].iloc[0] == 0


def test_online_engagement_peaks_near_the_true_best_hour(
    local: tuple[Settings, FeatureStore], truth: pd.DataFrame
) -> None:
    settings, store = local
    month_ago = pd.Timestamp("2026-09-01", tz="UTC")
    seasoned = truth[~truth["cold_start"] & (truth["signup_at"] < month_ago) & (truth["churn_day"] > 35)]
    features = online_features(store, settings, "send_hour_v1", seasoned["user_id"].tolist())
    argmax = np.array([int(np.argmax(vector)) for vector in features["activity_by_hour"]])
    gap = np.abs(argmax - seasoned["best_local_hour"].to_numpy()) % 24
    within_two = np.minimum(gap, 24 - gap) <= 2
    assert len(seasoned) > 800
    assert within_two.mean() >= 0.75


def test_pushed_sends_and_clicks_update_online_fatigue(
    local: tuple[Settings, FeatureStore], truth: pd.DataFrame
) -> None:
    settings, store = local
    user = truth.loc[~truth["cold_start"], "user_id"].iloc[7]
    before = online_features(store, settings, "send_hour_v1", [user]).iloc[0]
    now = datetime.now(UTC).replace(microsecond=0)
    events = pd.DataFrame(
        {
            "user_id": [user, user, user],
            "event_type": ["push_sent", "push_sent", "push_clicked"],
            "timestamp": [
                now - timedelta(minutes=30),
                now - timedelta(minutes=10),
                now - timedelta(minutes=5),
            ],
        }
    )
    assert push_events(store, settings, events) == 1
    after = online_features(store, settings, "click_v1", [user], request_for(now)).iloc[0]
    assert after["sends_30d"] == before["sends_30d"] + 2
    assert after["hours_since_last_push"] == pytest.approx(10 / 60, abs=1e-3)


def test_materialize_is_incremental(local: tuple[Settings, FeatureStore]) -> None:
    settings, store = local
    _, last = snapshot_span(settings)
    start, end = materialize(store, settings)
    assert start == end >= last  # nothing new since the fixture's run
