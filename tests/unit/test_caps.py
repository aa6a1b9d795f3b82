"""Frequency caps: the shared rule (pushplan.caps) and the planner's arbitration across campaigns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushplan.caps import HELD_COLUMNS, FrequencyCap
from pushplan.domain import Campaign
from pushplan.settings import Settings
from pushplan.windows import QuietHours
from serving.planner import Audience, arbitrate_caps, plan

CAP = FrequencyCap(per_channel_day=2, per_channel_week=4, per_user_day=2, min_gap=timedelta(hours=2))


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


def test_a_day_is_the_users_local_day() -> None:
    # 23:30 and 00:30 in New York are two local days, though one UTC day.
    held = [(at("2026-06-02T03:30:00Z"), "push")]  # 23:30 on June 1st in New York
    strict = FrequencyCap(per_channel_day=1, per_channel_week=9, per_user_day=1, min_gap=timedelta(0))
    assert strict.admits(held, at("2026-06-02T04:30:00Z"), "push", "America/New_York")
    assert not strict.admits(held, at("2026-06-02T04:30:00Z"), "push", "Asia/Tokyo")


def test_per_channel_and_per_user_day_and_gap() -> None:
    held = [(at("2026-06-01T09:00:00Z"), "push"), (at("2026-06-01T12:00:00Z"), "push")]
    assert not CAP.admits(held, at("2026-06-01T18:00:00Z"), "push", "UTC")  # third push today
    assert not CAP.admits(held, at("2026-06-01T18:00:00Z"), "sms", "UTC")  # third message today
    assert CAP.admits(held[:1], at("2026-06-01T18:00:00Z"), "sms", "UTC")
    assert not CAP.admits(held[:1], at("2026-06-01T10:30:00Z"), "sms", "UTC")  # 90 minutes after
    assert CAP.admits(held[:1], at("2026-06-01T11:00:00Z"), "sms", "UTC")  # exactly the gap


def test_the_week_is_any_seven_days() -> None:
    four = [(at(f"2026-06-0{d}T12:00:00Z"), "push") for d in (2, 3, 4, 5)]
    assert not CAP.admits(four, at("2026-06-01T12:00:00Z"), "push", "UTC")  # before a full week
    assert not CAP.admits(four, at("2026-06-08T11:00:00Z"), "push", "UTC")  # 6 days 23 h after the first
    assert CAP.admits(four, at("2026-06-09T12:00:00Z"), "push", "UTC")  # the first has left the window
    assert CAP.admits(four, at("2026-06-01T12:00:00Z"), "sms", "UTC")  # weeks are per channel


def test_a_zero_cap_admits_nothing() -> None:
    nothing = FrequencyCap(per_channel_day=0, per_channel_week=5, per_user_day=5, min_gap=timedelta(0))
    assert not nothing.allows_any
    assert not nothing.admits([], at("2026-06-01T12:00:00Z"), "push", "UTC")


def campaign(campaign_id: str = "new", hours: int = 48, **extra: object) -> Campaign:
    return Campaign.model_validate(
        {
            "campaign_id": campaign_id,
            "name": campaign_id,
            "channels": ["push"],
            "variants": [{"variant_id": "a", "title": "A"}, {"variant_id": "b", "title": "B"}],
            "window": {"start": "2026-06-01T00:00:00Z", "end": (START + timedelta(hours=hours)).isoformat()},
            "holdout_fraction": 0.0,
            "exploration": 0.0,
            **extra,
        }
    )


START = datetime(2026, 6, 1, tzinfo=UTC)


def test_campaigns_tighten_the_defaults_and_never_loosen_them() -> None:
    defaults = Settings()
    tight = FrequencyCap.of(defaults, campaign(caps={"per_user_day": 1, "per_channel_week": 99}))
    assert tight.per_user_day == 1
    assert tight.per_channel_week == defaults.cap_per_channel_week
    assert FrequencyCap.of(defaults).campaign_total is None


def one_user(best_hour: int, p_click: float = 0.1) -> Audience:
    hours = np.full((1, 24), 0.01)
    hours[0, best_hour] = 0.9
    users = pd.DataFrame({"user_id": ["u1"], "timezone": ["UTC"], "push_opt_in": [True]})
    return Audience(users, hours, np.array([[p_click, p_click / 2]]))


def held(*rows: tuple[str, str, int, float, bool]) -> pd.DataFrame:
    """(plan_id, send_at, priority, value, movable) of u1's sends for another campaign."""
    frame = pd.DataFrame(
        [
            {
                "plan_id": plan_id,
                "campaign_id": "other",
                "user_id": "u1",
                "channel": "push",
                "send_at": at(send_at),
                "priority": priority,
                "value": value,
                "movable": movable,
            }
            for plan_id, send_at, priority, value, movable in rows
        ]
    )
    return frame[list(HELD_COLUMNS)]


ONE_A_DAY = FrequencyCap(per_channel_day=1, per_channel_week=7, per_user_day=1, min_gap=timedelta(hours=1))


def arbitrate(target: Campaign, people: Audience, holdings: pd.DataFrame, cap: FrequencyCap = ONE_A_DAY):
    items = plan(target, people, START, quiet=QuietHours(22, 8))
    return arbitrate_caps(target, items, people, START, cap, holdings, quiet=QuietHours(22, 8))


def test_a_stronger_held_send_defers_the_new_one_to_its_next_best_slot() -> None:
    result = arbitrate(campaign(), one_user(best_hour=19), held(("h1", "2026-06-01T12:00:00Z", 5, 0.5, True)))
    item = result.items.iloc[0]
    assert result.displaced == []
    assert (item["decision"], item["reason"]) == ("send", "deferred")
    assert item["send_at"] == at("2026-06-02T19:00:00Z")  # the same best hour, the next day
    assert pd.Timestamp(item["local_send_at"]) == item["send_at"]
    # The models' choice stays what it was before the caps moved the send.
    assert (item["model_variant_id"], item["model_send_at"]) == ("a", at("2026-06-01T19:00:00Z"))


def test_with_no_room_in_the_window_the_new_send_is_capped() -> None:
    result = arbitrate(
        campaign(hours=24), one_user(best_hour=19), held(("h1", "2026-06-01T12:00:00Z", 5, 0.5, True))
    )
    item = result.items.iloc[0]
    assert (item["decision"], item["reason"], item["state"]) == ("skip", "capped", "suppressed")
    assert (item["model_variant_id"], item["model_send_at"]) == ("a", at("2026-06-01T19:00:00Z"))


def test_a_more_valuable_new_send_displaces_a_movable_weaker_one() -> None:
    holdings = held(("weak", "2026-06-01T12:00:00Z", 0, 0.01, True))
    result = arbitrate(campaign(priority=1), one_user(best_hour=19), holdings)
    assert result.displaced == ["weak"]
    item = result.items.iloc[0]
    assert (item["decision"], item["reason"]) == ("send", None)
    assert item["send_at"] == at("2026-06-01T19:00:00Z")
    # Same priority: p(click) decides.
    assert arbitrate(campaign(), one_user(19, p_click=0.2), holdings).displaced == ["weak"]
    assert arbitrate(campaign(), one_user(19, p_click=0.001), holdings).displaced == []


def test_queued_items_are_never_displaced() -> None:
    queued = held(("queued", "2026-06-01T12:00:00Z", 0, 0.01, False))
    result = arbitrate(campaign(priority=9), one_user(best_hour=19), queued)
    assert result.displaced == []
    assert result.items.iloc[0]["reason"] == "deferred"


def test_conversion_campaigns_weigh_p_click_by_the_conversion_value() -> None:
    holdings = held(("clicks", "2026-06-01T12:00:00Z", 0, 0.05, True))
    rich = campaign(objective="conversions", value_per_conversion=40.0)
    assert arbitrate(rich, one_user(19, p_click=0.01), holdings).displaced == ["clicks"]


def test_the_campaign_total_keeps_the_most_valuable_sends() -> None:
    n = 20
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "timezone": "UTC", "push_opt_in": True})
    people = Audience(users, rng.dirichlet(np.ones(24), n), rng.random((n, 2)))
    target = campaign(caps={"campaign_total": 8})
    cap = FrequencyCap.of(Settings(), target)
    items = plan(target, people, START)
    result = arbitrate_caps(target, items, people, START, cap, dispatched=3)
    sends = result.items[result.items["decision"] == "send"]
    capped = result.items[result.items["reason"] == "capped"]
    assert len(sends) == 5 and len(capped) == n - 5
    assert sends["p_click"].min() > capped["p_click"].max()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 23), st.integers(0, 2), st.floats(0, 1), st.booleans()),
        max_size=8,
    ),
    st.integers(0, 2),
    st.integers(24, 96),
    st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
)
def test_after_arbitration_every_user_is_within_caps(
    raw: list[tuple[int, int, int, float, bool]], priority: int, hours: int, zone: str
) -> None:
    """Whatever other campaigns hold, the new sends plus what is left of the holdings keep the caps."""
    cap = FrequencyCap(per_channel_day=1, per_channel_week=3, per_user_day=2, min_gap=timedelta(hours=3))
    n = 4
    rng = np.random.default_rng(len(raw))
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "timezone": zone, "push_opt_in": True})
    people = Audience(users, rng.dirichlet(np.ones(24), n), rng.random((n, 2)) * 0.2)
    rows = [
        {
            "plan_id": f"h{k}",
            "campaign_id": "other",
            "user_id": f"u{k % n}",
            "channel": "push",
            "send_at": pd.Timestamp(START) + pd.Timedelta(hours=24 * (day - 7) + hour),
            "priority": p,
            "value": value,
            "movable": movable,
        }
        for k, (day, hour, p, value, movable) in enumerate(raw)
    ]
    holdings = pd.DataFrame(rows, columns=list(HELD_COLUMNS))
    target = campaign(hours=hours, priority=priority)
    items = plan(target, people, START, quiet=QuietHours(22, 8))
    result = arbitrate_caps(target, items, people, START, cap, holdings, quiet=QuietHours(22, 8))
    assert len(result.items) == n
    kept = holdings[~holdings["plan_id"].isin(result.displaced)]
    for _, item in result.items[result.items["decision"] == "send"].iterrows():
        mine = kept[kept["user_id"] == item["user_id"]]
        if mine.empty:
            continue
        assert cap.admits(zip(mine["send_at"], mine["channel"], strict=True), item["send_at"], "push", zone)
        assert target.window.start <= item["send_at"] < target.window.end
        assert QuietHours(22, 8).mask()[item["send_at"].tz_convert(zone).hour] == False  # noqa: E712
    assert set(result.displaced) <= set(holdings.loc[holdings["movable"].astype(bool), "plan_id"])


@pytest.mark.parametrize("hours", [24, 48])
def test_holdouts_are_left_alone(hours: int) -> None:
    target = campaign(hours=hours).model_copy(update={"holdout_fraction": 0.99})
    result = arbitrate(target, one_user(19), held(("h1", "2026-06-01T12:00:00Z", 5, 0.5, True)))
    assert result.items.iloc[0]["decision"] == "holdout"
