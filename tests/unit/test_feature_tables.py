"""Feature jobs and request-time transforms as plain functions: windows, smoothing, opt-ins, context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.event_store import EventStore
from features.feature_repo.transforms import request_context_features
from features.tables import build_feature_tables, decayed, smoothed_shares, table_path, trailing
from pushplan.domain import VARIANT_TAGS
from pushplan.settings import Settings


def test_trailing_sums_cover_the_window_including_today() -> None:
    daily = np.array([[1, 0, 2, 0, 0, 3]], dtype=np.float32)
    assert trailing(daily, 1).tolist() == [[1, 0, 2, 0, 0, 3]]
    assert trailing(daily, 3).tolist() == [[1, 1, 3, 2, 2, 3]]
    by_bin = np.stack([daily, 2 * daily], axis=2)
    assert trailing(by_bin, 2)[0, :, 1].tolist() == [2, 2, 4, 4, 0, 6]


def test_smoothing_gives_the_population_to_users_without_history() -> None:
    counts = np.zeros((3, 1, 4), dtype=np.float32)
    counts[0, 0] = [10, 0, 0, 0]
    counts[1, 0] = [0, 0, 10, 10]
    shares = smoothed_shares(counts, prior_events=5.0)
    population = np.array([10, 0, 10, 10]) / 30
    assert np.allclose(shares.sum(axis=2), 1.0)
    assert np.allclose(shares[2, 0], population)  # no events: exactly the population
    assert np.allclose(shares[0, 0], (np.array([10, 0, 0, 0]) + 5 * population) / 15)
    assert shares[0, 0].argmax() == 0


def _store_with(settings: Settings, tmp_path: Path, events: list[dict], users: list[dict]) -> EventStore:
    store = EventStore(settings)
    pd.DataFrame(users).to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame(events).to_csv(tmp_path / "events.csv", index=False)
    store.import_file(tmp_path / "users.csv")
    store.import_file(tmp_path / "events.csv")
    return store


def _event(i: int, user: str, kind: str, when: str, **extra: object) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "event_type": kind, "timestamp": when, **extra}


@pytest.fixture
def built(settings: Settings, tmp_path: Path) -> dict[str, pd.DataFrame]:
    users = [
        {
            "user_id": "ana",
            "timezone": "Asia/Tokyo",
            "push_opt_in": "false",
            "signup_at": "2026-08-01T00:00:00Z",
        },
        {
            "user_id": "bo",
            "timezone": "America/New_York",
            "push_opt_in": "true",
            "signup_at": "2026-09-02T12:00:00Z",
        },
    ]
    events = [
        _event(1, "ana", "app_open", "2026-09-01T11:00:00Z"),  # 20:00 in Tokyo
        _event(2, "ana", "app_open", "2026-09-05T11:30:00Z"),  # a Saturday
        _event(3, "ana", "purchase", "2026-09-03T10:00:00Z", value=20.0),
        _event(
            4, "ana", "push_sent", "2026-09-02T09:00:00Z", campaign_id="c", variant_id="c-a", channel="push"
        ),
        _event(
            5,
            "ana",
            "push_clicked",
            "2026-09-02T09:20:00Z",
            campaign_id="c",
            variant_id="c-a",
            channel="push",
        ),
        _event(6, "ana", "unsubscribed", "2026-09-04T08:00:00Z", campaign_id="c", channel="push"),
        _event(7, "bo", "app_open", "2026-09-03T13:00:00Z"),  # 09:00 in New York
        _event(
            8, "bo", "push_sent", "2026-09-02T15:00:00Z", campaign_id="c", variant_id="c-a", channel="push"
        ),
    ]
    store = _store_with(settings, tmp_path, events, users)
    (tmp_path / "campaigns.json").write_text(
        '[{"campaign_id": "c", "name": "c", "channels": ["push"], '
        '"variants": [{"variant_id": "c-a", "title": "Save 20% today", "tags": ["discount"]}], '
        '"window": {"start": "2026-09-01T00:00:00Z", "end": "2026-09-10T00:00:00Z"}}]'
    )
    store.import_file(tmp_path / "campaigns.json")
    summary = build_feature_tables(settings)
    assert summary.days == 5 and summary.users == 2
    return {
        name: pd.read_parquet(path).set_index(["user_id", "event_timestamp"])
        for name, path in summary.tables.items()
    }


def at(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def test_snapshots_see_only_events_before_their_stamp(built: dict[str, pd.DataFrame]) -> None:
    rfm = built["user_rfm"]
    # The purchase on 09-03 10:00 is in the snapshot stamped 09-04 00:00, not in the one before.
    assert rfm.loc[("ana", at("2026-09-03")), "frequency_90d"] == 0
    assert np.isnan(rfm.loc[("ana", at("2026-09-03")), "recency_days"])
    assert rfm.loc[("ana", at("2026-09-04")), "frequency_90d"] == 1
    assert rfm.loc[("ana", at("2026-09-04")), "recency_days"] == pytest.approx(14 / 24)
    assert rfm.loc[("ana", at("2026-09-04")), "rfm_segment"] != "no_purchase"


def test_users_appear_from_signup_or_first_event(built: dict[str, pd.DataFrame]) -> None:
    profile = built["user_profile"]
    assert ("bo", at("2026-09-02")) not in profile.index
    assert ("bo", at("2026-09-03")) in profile.index  # signed up 09-02 12:00
    assert profile.loc[("bo", at("2026-09-03")), "timezone"] == "America/New_York"
    assert built["user_rfm"].loc[("bo", at("2026-09-04")), "lifecycle_stage"] == "new"
    assert built["user_rfm"].loc[("ana", at("2026-09-06")), "lifecycle_stage"] == "active"


def test_opt_in_follows_unsubscribes_in_time(built: dict[str, pd.DataFrame]) -> None:
    profile = built["user_profile"]
    # Today's users file says ana is opted out; she unsubscribed on 09-04, so before that she was in.
    assert bool(profile.loc[("ana", at("2026-09-04")), "push_opt_in"]) is True
    assert bool(profile.loc[("ana", at("2026-09-05")), "push_opt_in"]) is False


def test_engagement_is_by_local_hour_and_weekend(built: dict[str, pd.DataFrame]) -> None:
    engagement = built["user_engagement"]
    ana = engagement.loc[("ana", at("2026-09-06"))]
    assert int(np.argmax(ana["activity_by_hour"])) == 20  # both opens at 20:xx Tokyo time
    assert ana["activity_events"] == 3  # two opens and a purchase
    assert ana["weekend_activity_share"] == pytest.approx(1 / 3)
    assert int(np.argmax(ana["activity_by_hour_weekend"])) == 20
    assert sum(ana["activity_by_hour"]) == pytest.approx(1.0, abs=1e-5)
    bo = engagement.loc[("bo", at("2026-09-04"))]
    assert int(np.argmax(bo["activity_by_hour"])) == 9


def test_recency_weighting_halves_an_event_every_half_life() -> None:
    daily = np.array([[1, 0, 0, 2]], dtype=np.float32)
    assert decayed(daily, half_life_days=1.0).tolist() == [[1.0, 0.5, 0.25, 2.125]]


def test_hour_habits_are_counts_by_day_type_kind_and_recency(built: dict[str, pd.DataFrame]) -> None:
    ana = built["user_hour_habits"].loc[("ana", at("2026-09-06"))]  # sees 09-01 … 09-05
    keep = 0.5 ** (1 / 30)  # PUSHPLAN_HABIT_HALF_LIFE_DAYS
    weekday = np.asarray(ana["hours_weekday_recent"])
    # Tokyo time: open Tue 20:00 (4 days back), push click Wed 18:20 (3), purchase Thu 19:00 (2).
    assert weekday[[20, 18, 19]] == pytest.approx([keep**4, keep**3, keep**2], rel=1e-5)
    assert weekday.sum() == pytest.approx(keep**4 + keep**3 + keep**2, rel=1e-5)
    weekend = np.asarray(ana["hours_weekend_recent"])
    assert weekend[20] == pytest.approx(1.0) and weekend.sum() == pytest.approx(1.0)  # Saturday 20:30
    assert np.asarray(ana["hours_purchase_recent"])[19] == pytest.approx(keep**2, rel=1e-5)
    assert np.asarray(ana["hours_push_recent"])[18] == pytest.approx(keep**3, rel=1e-5)
    assert np.asarray(ana["hours_all_time"])[[18, 19, 20]].tolist() == [1, 1, 2]
    assert ana["habit_events"] == 4  # the push_sent is not an engagement
    before = built["user_hour_habits"].loc[("ana", at("2026-09-02"))]  # sees 09-01 only
    assert before["habit_events"] == 1 and np.asarray(before["hours_all_time"])[20] == 1


def test_fatigue_and_tag_affinity(built: dict[str, pd.DataFrame]) -> None:
    fatigue = built["user_fatigue"].loc[("ana", at("2026-09-03"))]
    assert (fatigue["sends_1d"], fatigue["sends_7d"], fatigue["clicks_7d"]) == (1, 1, 1)
    assert fatigue["last_push_epoch_s"] == at("2026-09-02T09:00:00").timestamp()
    later = built["user_fatigue"].loc[("ana", at("2026-09-04"))]
    assert later["sends_1d"] == 0 and later["sends_7d"] == 1
    affinity = built["user_tag_affinity"].loc[("ana", at("2026-09-03"))]
    bo = built["user_tag_affinity"].loc[("bo", at("2026-09-03"))]
    assert affinity["affinity_discount"] > bo["affinity_discount"]
    assert affinity["tagged_sends"] == 1


def test_request_context_features() -> None:
    vector = [0.0] * 24
    vector[20], vector[21], vector[19] = 0.5, 0.2, 0.1
    inputs = pd.DataFrame(
        {
            "activity_by_hour": [vector, vector],
            "push_engagement_by_hour": [vector, vector],
            "last_push_epoch_s": [at("2026-09-01T00:00:00").timestamp(), np.nan],
            "last_click_epoch_s": [np.nan, np.nan],
            "request_time": [at("2026-09-01T06:00:00"), at("2026-09-01T06:00:00")],
            "candidate_local_hour": [20, 3],
            "window_start": [at("2026-09-01T00:00:00")] * 2,
            "window_end": [at("2026-09-02T00:00:00")] * 2,
            "variant_tags": ["discount,emoji", ""],
            **{f"affinity_{tag}": [0.01 * (k + 1)] * 2 for k, tag in enumerate(VARIANT_TAGS)},
        }
    )
    out = request_context_features(inputs)
    assert out.loc[0, "engagement_at_hour"] == 0.5
    assert out.loc[0, "engagement_near_hour"] == pytest.approx(0.8)
    assert out.loc[0, "hour_rank"] == 0 and out.loc[1, "hour_rank"] == 3
    discount, emoji = 0.01, 0.01 * (VARIANT_TAGS.index("emoji") + 1)
    assert out.loc[0, "tag_affinity_mean"] == pytest.approx((discount + emoji) / 2)
    assert out.loc[0, "tag_affinity_max"] == pytest.approx(emoji)
    assert np.isnan(out.loc[1, "tag_affinity_mean"]) and out.loc[1, "variant_tag_count"] == 0
    assert out.loc[0, "hours_since_last_push"] == pytest.approx(6.0)
    assert np.isnan(out.loc[1, "hours_since_last_push"])
    assert out.loc[0, "window_hours"] == 24 and out.loc[0, "hours_to_window_end"] == 18


def test_build_refuses_an_empty_store(settings: Settings) -> None:
    with pytest.raises(ValueError, match="holds no events"):
        build_feature_tables(settings)
    assert not table_path(settings, "user_profile").exists()
