"""Triggered campaigns, at the firing task's boundary: events posted through the API as an app posts
them, the firing task run as a worker runs it, the plan items it stores read back from the plan store.

Each test has its own campaign (ids, windows) over one module's feature store, so they do not share
firings; the real-worker versions on both profiles are tests/integration/test_triggers_worker.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dispatch.control import control
from pushplan.db.engine import migrate
from pushplan.db.schema import PlanItemRow, TriggerInboxRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.app import create_app
from serving.keys import Role, create_key
from serving.triggers import fire_triggers, trigger_status
from tests.features_setup import built_store

EVENTS_HEADERS: dict[str, str] = {}


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, sim_dir: Path
) -> Iterator[tuple[TestClient, dict, Settings]]:
    # Quiet hours 22-08 as deployed by default; the tests choose instants around them.
    settings = Settings(data_dir=tmp_path_factory.mktemp("triggers"))
    built_store(settings, sim_dir)
    migrate(settings)
    headers = {"X-API-Key": create_key(PlanStore(settings), Role.campaign)}
    # Events come from the app's backend, with a key that may post events and nothing else.
    EVENTS_HEADERS["X-API-Key"] = create_key(PlanStore(settings), Role.events)
    with TestClient(create_app(settings)) as client:
        yield client, headers, settings


def users_in(settings: Settings, zone: str, n: int) -> list[str]:
    users = pd.read_parquet(settings.users_path, columns=["user_id", "timezone", "push_opt_in"])
    chosen = users[(users["timezone"] == zone) & users["push_opt_in"]]["user_id"].tolist()
    assert len(chosen) >= n, f"the simulation has {len(chosen)} opted-in users in {zone}"
    return chosen[:n]


def triggered(campaign_id: str, trigger: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "name": campaign_id,
        "channels": ["push"],
        "variants": [{"variant_id": "a", "title": "Your coupon is waiting"}],
        "window": {"start": "2026-10-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"},
        "holdout_fraction": 0.0,
        "exploration": 0.0,
        "trigger": trigger,
        **more,
    }


def start(client: TestClient, headers: dict, settings: Settings, spec: dict[str, Any]) -> None:
    created = client.post("/v1/campaigns", json=spec, headers=headers)
    assert created.status_code == 201, created.text
    control(PlanStore(settings), spec["campaign_id"], "dispatch")


def event(event_id: str, user: str, kind: str, at: datetime, **more: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "event_type": kind, "timestamp": at.isoformat(), **more}


def post(client: TestClient, headers: dict, events: list[dict[str, Any]]) -> dict[str, int]:
    """Post events as the app's backend does (`headers`, the campaign system's, are not used)."""
    answer = client.post("/v1/events", json={"events": events}, headers=EVENTS_HEADERS)
    assert answer.status_code == 200, answer.text
    return answer.json()


def items(settings: Settings, campaign_id: str) -> pd.DataFrame:
    with PlanStore(settings).session() as session:
        rows = session.execute(
            sa.select(
                PlanItemRow.user_id,
                PlanItemRow.firing_id,
                PlanItemRow.decision,
                PlanItemRow.reason,
                PlanItemRow.state,
                PlanItemRow.send_at,
                PlanItemRow.fired_at,
                PlanItemRow.window_end,
                PlanItemRow.local_send_at,
            ).where(PlanItemRow.campaign_id == campaign_id)
        ).all()
    frame = pd.DataFrame(rows, columns=list(rows[0]._fields) if rows else None)
    for column in ("send_at", "fired_at", "window_end"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.set_index("firing_id") if not frame.empty else frame


def test_a_firing_is_planned_after_its_delay_inside_its_own_window(app: tuple) -> None:
    client, headers, settings = app
    start(
        client,
        headers,
        settings,
        triggered(
            "welcome",
            {"on": "signup", "delay": "PT2H", "send_within": "PT6H", "where": 'plan = "free"'},
        ),
    )
    users = users_in(settings, "Europe/Berlin", 3)
    at = datetime(2026, 10, 6, 7, 3, 20, tzinfo=UTC)  # 09:03 in Berlin
    post(
        client,
        headers,
        [
            event("w-1", users[0], "signup", at, properties={"plan": "free"}),
            event("w-2", users[1], "signup", at, properties={"plan": "pro"}),  # `where` refuses it
            event("w-3", users[2], "app_open", at),  # not the trigger's event
        ],
    )
    summary = fire_triggers(PlanStore(settings), settings, now=at + timedelta(seconds=5))

    assert summary.events == 2  # the two `signup` events reached the inbox, not the app_open
    assert summary.outcomes == {"welcome": {"send": 1}}
    fired = items(settings, "welcome")
    assert list(fired.index) == ["w-1"]
    item = fired.loc["w-1"]
    assert item["decision"] == "send" and item["state"] == "planned" and item["reason"] is None
    assert item["fired_at"] == pd.Timestamp(at)
    opens = pd.Timestamp(at + timedelta(hours=2))
    assert opens <= item["send_at"] < item["window_end"] == opens + pd.Timedelta(hours=6)


def test_unless_cancels_a_planned_send_in_either_order_and_spares_the_others(app: tuple) -> None:
    client, headers, settings = app
    start(
        client,
        headers,
        settings,
        triggered("coupon-reminder", {"on": "coupon_claimed", "delay": "PT24H", "unless": ["purchase"]}),
    )
    a, b, c = users_in(settings, "America/New_York", 3)
    at = datetime(2026, 10, 7, 15, 0, tzinfo=UTC)
    post(client, headers, [event(f"cc-{u}", u, "coupon_claimed", at) for u in (a, b, c)])
    store = PlanStore(settings)
    fire_triggers(store, settings, now=at + timedelta(seconds=5))
    assert (items(settings, "coupon-reminder")["state"] == "planned").all()

    # b buys after the firing: the planned reminder is cancelled. c bought before the coupon: no effect.
    post(
        client,
        headers,
        [
            event("buy-b", b, "purchase", at + timedelta(hours=3)),
            event("buy-c", c, "purchase", at - timedelta(hours=1)),
        ],
    )
    summary = fire_triggers(store, settings, now=at + timedelta(hours=3, seconds=5))
    assert summary.outcomes["coupon-reminder"] == {"condition_met": 1}
    fired = items(settings, "coupon-reminder")
    assert fired.loc[f"cc-{b}", ["state", "reason"]].tolist() == ["cancelled", "condition_met"]
    assert (fired.drop(index=f"cc-{b}")["state"] == "planned").all()

    # Out of order: the purchase arrives (and is processed) before its coupon event; the firing is
    # stored cancelled at once.
    d = users_in(settings, "America/New_York", 4)[3]
    post(client, headers, [event("buy-d", d, "purchase", at + timedelta(hours=1))])
    fire_triggers(store, settings, now=at + timedelta(hours=1, seconds=30))
    post(client, headers, [event(f"cc-{d}", d, "coupon_claimed", at)])
    fire_triggers(store, settings, now=at + timedelta(hours=1, minutes=1))
    assert items(settings, "coupon-reminder").loc[f"cc-{d}", "reason"] == "condition_met"


def test_replays_fire_nothing_twice_and_once_per_user_and_budgets_hold(app: tuple) -> None:
    client, headers, settings = app
    start(
        client,
        headers,
        settings,
        triggered(
            "cart", {"on": "add_to_cart", "once_per_user_days": 7, "max_users": 3, "send_within": "PT4H"}
        ),
    )
    users = users_in(settings, "Asia/Kolkata", 5)
    at = datetime(2026, 10, 8, 6, 0, tzinfo=UTC)  # 11:30 in Kolkata
    first = [event(f"cart-{u}", u, "add_to_cart", at + timedelta(minutes=i)) for i, u in enumerate(users[:2])]
    store = PlanStore(settings)
    post(client, headers, first)
    fire_triggers(store, settings, now=at + timedelta(minutes=3))
    assert post(client, headers, first)["stored"] == 0  # the same events again
    fire_triggers(store, settings, now=at + timedelta(minutes=4))
    assert len(items(settings, "cart")) == 2

    again = [
        event("cart-again", users[0], "add_to_cart", at + timedelta(days=2)),  # within 7 days: frequency
        *(
            event(f"cart-{u}", u, "add_to_cart", at + timedelta(days=2, minutes=i))
            for i, u in enumerate(users[2:])
        ),
    ]
    post(client, headers, again)
    summary = fire_triggers(store, settings, now=at + timedelta(days=2, minutes=10))
    assert summary.outcomes["cart"] == {"frequency": 1, "send": 1, "budget_spent": 2}
    fired = items(settings, "cart")
    assert fired.loc["cart-again", "reason"] == "frequency"
    assert fired.loc[f"cart-{users[2]}", "decision"] == "send"
    assert sorted(fired[fired["reason"] == "budget_spent"].index) == [f"cart-{u}" for u in users[3:]]

    shown = trigger_status(store, store.get_campaign("cart"), now=at + timedelta(days=2, minutes=11))  # type: ignore[arg-type]
    assert shown.state == "budget_spent" and shown.why.startswith("3 of 3 users")
    assert shown.sends == 3 and shown.users_sent == 3 and shown.firings == 6
    answer = client.get("/v1/campaigns/cart/trigger", headers=headers).json()
    assert answer["by_outcome"] == {"send": 3, "frequency": 1, "budget_spent": 2}


def test_delays_cross_dst_as_exact_durations_and_quiet_hours_hold_at_firing(app: tuple) -> None:
    """Berlin leaves summer time on 2026-10-25 at 03:00 local. A P1D delay is 24 hours exactly, so the
    window opens an hour earlier on the local clock; the send slot is chosen in the user's own zone,
    outside quiet hours (22-08), or the firing is skipped `quiet_hours` when its window is all quiet."""
    client, headers, settings = app
    start(
        client,
        headers,
        settings,
        triggered("renewal", {"on": "membership_expiring", "delay": "P1D", "send_within": "PT3H"}),
    )
    berlin = ZoneInfo("Europe/Berlin")
    u1, u2 = users_in(settings, "Europe/Berlin", 2)
    day = datetime(2026, 10, 24, 9, 30, tzinfo=berlin)  # 09:30 CEST, the day before the change
    night = datetime(2026, 10, 24, 23, 30, tzinfo=berlin)  # its window 22:30-01:30 CET: all quiet
    post(
        client,
        headers,
        [event("r-1", u1, "membership_expiring", day), event("r-2", u2, "membership_expiring", night)],
    )
    fire_triggers(PlanStore(settings), settings, now=day + timedelta(minutes=1))
    fired = items(settings, "renewal")

    one = fired.loc["r-1"]
    assert one["decision"] == "send"
    assert pd.Timestamp(one["send_at"]) >= pd.Timestamp(day) + pd.Timedelta(hours=24)
    local = pd.Timestamp(one["send_at"]).tz_convert(berlin)
    assert str(local.tzinfo) == "Europe/Berlin" and local.utcoffset() == timedelta(hours=1)  # CET now
    assert 8 <= local.hour < 22 and local < pd.Timestamp("2026-10-25T11:30:00+01:00")
    assert fired.loc["r-2", ["decision", "reason"]].tolist() == ["skip", "quiet_hours"]


def test_triggers_are_checked_and_triggered_campaigns_are_not_planned_whole(app: tuple) -> None:
    client, headers, settings = app
    with pytest.raises(ValidationError, match="delay must be from 0 to 30 days"):
        Campaign.model_validate(triggered("x", {"on": "signup", "delay": "P31D"}))
    with pytest.raises(ValidationError, match="'push_click' is not one of pushplan's own events"):
        Campaign.model_validate(triggered("x", {"on": "push_click"}))
    with pytest.raises(ValidationError, match="`did …` belongs in the audience"):
        Campaign.model_validate(triggered("x", {"on": "signup", "where": "did purchase in last 3 days"}))
    refused = client.post(
        "/v1/campaigns", json=triggered("x", {"on": "signup", "where": "amount >"}), headers=headers
    )
    assert refused.status_code == 422
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["body", "trigger", "where"] and "the rule ends too early" in problem["msg"]

    start(client, headers, settings, triggered("hello", {"on": "signup"}))
    planned = client.post(
        "/v1/plans", json={"campaign_id": "hello", "user_ids": ["u0000001"]}, headers=headers
    )
    assert planned.status_code == 409 and "is triggered" in planned.json()["detail"]
    job = client.post("/v1/campaigns/hello/plan-jobs", json={}, headers=headers)
    assert job.status_code == 409 and "is triggered" in job.json()["detail"]
    assert client.get("/v1/campaigns/hello/trigger", headers=headers).json()["state"] == "live"


def test_only_live_triggers_fill_the_inbox(app: tuple) -> None:
    client, headers, settings = app
    created = client.post("/v1/campaigns", json=triggered("idle", {"on": "wishlist_add"}), headers=headers)
    assert created.status_code == 201
    at = datetime(2026, 10, 9, 12, tzinfo=UTC)
    post(client, headers, [event("wish-1", "u0000001", "wishlist_add", at)])  # not started: not kept
    control(PlanStore(settings), "idle", "dispatch")
    post(client, headers, [event("wish-2", "u0000001", "wishlist_add", at)])
    with PlanStore(settings).session() as session:
        kept = session.scalars(
            sa.select(TriggerInboxRow.event_id).where(TriggerInboxRow.event_type == "wishlist_add")
        )
        assert list(kept) == ["wish-2"]
    assert client.get("/v1/campaigns/idle/trigger", headers=headers).json()["pending_events"] == 1


def test_a_journey_chains_triggers_through_what_dispatch_sent(app: tuple) -> None:
    """Welcome at sign-up (A); seven days after A was sent, a coupon unless the user bought (B). A's
    send is made by dispatch's own scan and send step, its `push_sent` reaches the event store and
    the trigger inbox through the outbox flush, and that fires B."""
    from dispatch.control import flush_events
    from dispatch.sending import scan_due, send_chunk

    client, headers, settings = app
    spec = triggered("journey-welcome", {"on": "signup"}, send="now", channels=["sandbox"])
    start(client, headers, settings, spec)
    follow = triggered(
        "journey-coupon",
        {"on": "push_sent", "on_campaign": "journey-welcome", "delay": "P7D", "unless": ["purchase"]},
        channels=["sandbox"],
    )
    start(client, headers, settings, follow)
    (user,) = users_in(settings, "Europe/London", 1)
    at = datetime(2026, 10, 12, 10, 0, tzinfo=UTC)  # 11:00 in London
    post(client, headers, [event("j-signup", user, "signup", at)])
    store = PlanStore(settings)
    fire_triggers(store, settings, now=at + timedelta(seconds=2))
    welcome = items(settings, "journey-welcome").loc["j-signup"]
    # Sent now: when the firing is planned, two seconds after the sign-up, not at the next 15-minute slot.
    assert welcome["decision"] == "send" and welcome["send_at"] == pd.Timestamp(at + timedelta(seconds=2))

    sent_at = at + timedelta(seconds=30)
    for chunk in scan_due(store, settings, as_of=sent_at):
        send_chunk(store, settings, chunk.plan_ids, chunk.claim, sent_at)
    assert items(settings, "journey-welcome").loc["j-signup", "state"] == "sent"
    assert flush_events(store, settings) >= 1
    fire_triggers(store, settings, now=sent_at + timedelta(seconds=5))

    (coupon,) = items(settings, "journey-coupon").itertuples()
    assert coupon.fired_at == pd.Timestamp(sent_at) and coupon.decision == "send"
    assert pd.Timestamp(sent_at) + pd.Timedelta(days=7) <= coupon.send_at < coupon.window_end


def test_the_uplift_report_of_a_triggered_campaign_counts_each_firing_by_its_day(app: tuple) -> None:
    """Half the users held out at firing; purchases counted per firing from the firing to its window's
    end plus the horizon (not before it, not after), by the UTC day it fired."""
    from reports.report import campaign_report

    client, headers, settings = app
    spec = triggered(
        "abandoned", {"on": "cart_abandoned", "delay": "PT1H", "send_within": "PT2H"}, holdout_fraction=0.5
    )
    start(client, headers, settings, spec)
    users = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].tolist()[200:400]
    day1, day2 = datetime(2026, 10, 14, 10, tzinfo=UTC), datetime(2026, 10, 15, 10, tzinfo=UTC)
    fired_at = {u: (day1 if i < 100 else day2) + timedelta(seconds=i) for i, u in enumerate(users)}
    post(client, headers, [event(f"ab-{u}", u, "cart_abandoned", at) for u, at in fired_at.items()])
    store = PlanStore(settings)
    fire_triggers(store, settings, now=day1 - timedelta(minutes=1))
    fired = items(settings, "abandoned").set_index("user_id")
    randomized = fired[fired["decision"].isin(["send", "holdout"])]
    assert 0.35 < (randomized["decision"] == "holdout").mean() < 0.65

    # Who buys: a third of each arm (by position), 2 hours after firing; everyone also bought a day
    # before the firing and ten days after it, which no firing may count.
    buys, expected = [], {}
    for i, (user, row) in enumerate(randomized.iterrows()):
        at = fired_at[user]
        buys += [event(f"before-{user}", user, "purchase", at - timedelta(days=1), value=5.0)]
        buys += [event(f"late-{user}", user, "purchase", at + timedelta(days=10), value=5.0)]
        if i % 3 == 0:
            buys.append(event(f"buy-{user}", user, "purchase", at + timedelta(hours=2), value=20.0))
        expected[user] = (row["decision"], int(i % 3 == 0))
    for first in range(0, len(buys), 200):
        post(client, headers, buys[first : first + 200])

    report = campaign_report(settings, "abandoned", horizon=timedelta(days=3))
    truth = pd.DataFrame.from_dict(expected, orient="index", columns=["decision", "bought"])
    bought = report["outcomes"]["purchased"]
    assert bought["control"]["n"] == (truth["decision"] == "holdout").sum()
    assert bought["control"]["mean"] == pytest.approx(
        truth.loc[truth["decision"] == "holdout", "bought"].mean()
    )
    assert bought["arms"]["campaign"]["mean"] == pytest.approx(
        truth.loc[truth["decision"] == "send", "bought"].mean()
    )
    assert report["source"]["unit"] == "firing" and report["source"]["trigger"]["on"] == "cart_abandoned"
    by_day = report["segments"]["firing_day"]
    assert set(by_day) == {"2026-10-14", "2026-10-15"}
    assert by_day["2026-10-14"]["n"] + by_day["2026-10-15"]["n"] == len(truth)


def test_a_follow_up_to_an_event_unless_the_same_event_again(app: tuple) -> None:
    """on: purchase, unless: purchase (the tour's follow-up): a firing is not cancelled by its own
    purchase, only by a later one; the later one fires nothing within once_per_user_days."""
    client, headers, settings = app
    spec = triggered(
        "after-purchase",
        {"on": "purchase", "delay": "PT24H", "unless": ["purchase"], "once_per_user_days": 1},
    )
    start(client, headers, settings, spec)
    x, y = users_in(settings, "Europe/Berlin", 2)
    at = datetime(2026, 10, 20, 9, tzinfo=UTC)
    post(client, headers, [event("p-x1", x, "purchase", at), event("p-y1", y, "purchase", at)])
    store = PlanStore(settings)
    fire_triggers(store, settings, now=at + timedelta(minutes=1))
    post(client, headers, [event("p-x2", x, "purchase", at + timedelta(hours=3))])
    fire_triggers(store, settings, now=at + timedelta(hours=3, minutes=1))
    fired = items(settings, "after-purchase")
    assert fired.loc["p-y1", ["state", "reason"]].tolist() == ["planned", None]
    assert fired.loc["p-x1", ["state", "reason"]].tolist() == ["cancelled", "condition_met"]
    assert fired.loc["p-x2", ["decision", "reason"]].tolist() == ["skip", "frequency"]


def test_a_window_that_opened_before_the_firing_was_planned_opens_then(app: tuple) -> None:
    """Delay 0 and ten minutes to send: planned 30 seconds after the event, the firing goes at once,
    not at the next 15-minute slot (which this window may not hold); past its end, `no_window`."""
    client, headers, settings = app
    start(client, headers, settings, triggered("instant", {"on": "trial_started", "send_within": "PT10M"}))
    u1, u2 = users_in(settings, "Asia/Tokyo", 2)
    at = datetime(2026, 10, 21, 3, 7, 10, tzinfo=UTC)  # 12:07 in Tokyo
    post(client, headers, [event("t-1", u1, "trial_started", at)])
    fire_triggers(PlanStore(settings), settings, now=at + timedelta(seconds=30, milliseconds=200))
    post(client, headers, [event("t-2", u2, "trial_started", at)])
    fire_triggers(PlanStore(settings), settings, now=at + timedelta(minutes=11))
    fired = items(settings, "instant")
    assert fired.loc["t-1", "send_at"] == pd.Timestamp(at + timedelta(seconds=31))
    assert fired.loc["t-2", ["decision", "reason"]].tolist() == ["skip", "no_window"]


def test_imported_events_fire_like_posted_ones_and_a_reimport_fires_nothing(
    app: tuple, tmp_path: Path
) -> None:
    """`pushplan events import` of a CSV: the stored events of live triggers reach the inbox (cells
    read as the import reads them), fire once, and importing the file again fires nothing."""
    from cli.events import _note_for_triggers
    from features.event_store import EventStore

    client, headers, settings = app
    start(client, headers, settings, triggered("imported", {"on": "referral_sent", "where": "friends >= 2"}))
    u1, u2 = users_in(settings, "Europe/Berlin", 2)
    path = tmp_path / "referrals.csv"
    path.write_text(
        "event_id,user_id,event_type,timestamp,properties\n"
        f'ref-1,{u1}, referral_sent ,2026-10-22T08:00:00Z,"{{""friends"": 3}}"\n'
        f'ref-2,{u2},referral_sent,2026-10-22T08:01:00Z,"{{""friends"": 1}}"\n'
    )
    store = PlanStore(settings)
    for _ in range(2):
        EventStore(settings).import_file(path)
        _note_for_triggers(settings, path)
        fire_triggers(store, settings, now=datetime(2026, 10, 22, 8, 5, tzinfo=UTC))
    fired = items(settings, "imported")
    assert list(fired.index) == ["ref-1"] and fired.loc["ref-1", "decision"] == "send"
    with store.session() as session:
        kept = session.scalar(
            sa.select(TriggerInboxRow.properties).where(TriggerInboxRow.event_id == "ref-1")
        )
    assert kept == '{"friends":3}'  # the event store's own form, not the file's text
