"""Dispatch on the production profile with real processes: Celery workers and beat (`pushplan worker`,
`pushplan beat`) on a Redis broker, the plan store in PostgreSQL, the caps ledger in Redis (Lua).

Each test has a Redis of its own (it may stop it) and a scratch PostgreSQL database. Quiet hours are
off (these tests run at any hour of the day); the caps are the defaults without the minimum gap, so
that the per-channel day cap binds on sends that all go out within seconds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from dispatch.control import control
from pushplan.caps import FrequencyCap
from pushplan.db.schema import DispatchEventRow, PlanItemRow
from pushplan.settings import Profile
from tests.dispatch_processes import FINAL, Deployment, deployed
from tests.dispatch_setup import campaign, send_items, store_campaign

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with deployed(Profile.production, tmp_path / "data") as found:
        yield found


def plan_overlapping_campaigns(deployment: Deployment, users: int, campaigns: int) -> None:
    """`campaigns` campaigns over the same `users` users, every send due now, in four zones; the
    first campaign may send to at most a tenth of the users (a campaign total)."""
    now = datetime.now(UTC)
    zones = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]
    user_ids = [f"u{i:05d}" for i in range(users)]
    for k in range(campaigns):
        caps = {"campaign_total": users // 10} if k == 0 else None
        c = campaign(f"c{k:02d}", now - timedelta(hours=12), days=1, priority=k, caps=caps)
        due = [now - timedelta(seconds=1 + (i * 7 + k) % 600) for i in range(users)]
        store_campaign(
            deployment.store, c, send_items(c, user_ids, due, zones=[zones[i % 4] for i in range(users)])
        )
        control(deployment.store, c.campaign_id, "dispatch")


def check_outcome(deployment: Deployment, items: int) -> pd.DataFrame:
    """Every item final; each sent once (plan store, sandbox, events); no user past a cap."""
    settings, store = deployment.settings, deployment.store
    states = deployment.states()
    assert sum(states.values()) == items and set(states) <= FINAL, states
    with store.session() as session:
        rows = session.execute(
            sa.select(
                PlanItemRow.plan_id,
                PlanItemRow.campaign_id,
                PlanItemRow.user_id,
                PlanItemRow.channel,
                PlanItemRow.timezone,
                PlanItemRow.sent_at,
                PlanItemRow.state,
                PlanItemRow.reason,
            )
        ).all()
        sent_events = Counter(
            session.scalars(
                sa.select(DispatchEventRow.campaign_id).where(DispatchEventRow.event_type == "push_sent")
            )
        )
    frame = pd.DataFrame(rows, columns=list(rows[0]._fields))
    sent = frame[frame["state"] == "sent"]
    assert set(frame.loc[frame["state"] == "suppressed", "reason"]) <= {"capped"}
    outbox = [json.loads(line) for line in (settings.sandbox_dir / "outbox.jsonl").read_text().splitlines()]
    keys = Counter(m["idempotency_key"] for m in outbox)
    assert max(keys.values()) == 1 and set(keys) == set(sent["plan_id"])
    assert sent_events == Counter(sent["campaign_id"])
    cap = FrequencyCap.of(settings)
    for (user, zone), mine in sent.groupby(["user_id", "timezone"]):
        held: list[tuple[pd.Timestamp, str]] = []
        for at, channel in sorted(
            zip(pd.to_datetime(mine["sent_at"], utc=True), mine["channel"], strict=True)
        ):
            assert cap.admits(held, at, channel, zone), (user, held, at)
            held.append((at, channel))
    assert (sent["campaign_id"] == "c00").sum() <= frame["user_id"].nunique() // 10
    return frame


def test_four_workers_send_20000_items_within_caps_each_exactly_once(deployment: Deployment) -> None:
    plan_overlapping_campaigns(deployment, users=2_000, campaigns=10)
    for _ in range(4):
        deployment.start("worker", "--concurrency", "1", "--loglevel", "warning")
    deployment.start("beat", "--loglevel", "warning")
    deployment.wait_until(deployment.all_final, "every item final")
    frame = check_outcome(deployment, 20_000)
    per_user = frame[frame["state"] == "sent"].groupby("user_id").size()
    # Two sandbox messages per local day is the binding cap: every user got exactly two.
    assert per_user.min() == per_user.max() == deployment.settings.cap_per_channel_day
    assert len(per_user) == 2_000


def test_a_worker_killed_mid_run_loses_nothing_and_sends_nothing_twice(deployment: Deployment) -> None:
    plan_overlapping_campaigns(deployment, users=2_000, campaigns=4)
    doomed = deployment.start("worker", "--concurrency", "2", "--loglevel", "info")
    deployment.start("beat", "--loglevel", "warning")
    deployment.wait_until(lambda: deployment.states()["sent"] >= 300, "some sent before the kill")
    deployment.kill(doomed)  # kill -9, pool children included, mid-run
    stranded = deployment.states()
    assert stranded["queued"] + stranded["planned"] > 0, "the kill came too late to test anything"
    deployment.start("worker", "--concurrency", "2", "--loglevel", "warning")
    deployment.wait_until(deployment.all_final, "every item final after the kill")
    check_outcome(deployment, 8_000)


def test_dispatch_resumes_after_the_broker_restarts(deployment: Deployment) -> None:
    plan_overlapping_campaigns(deployment, users=2_000, campaigns=4)
    deployment.start("worker", "--concurrency", "2", "--loglevel", "info")
    deployment.start("beat", "--loglevel", "info")
    deployment.wait_until(lambda: deployment.states()["sent"] >= 300, "some sent before the restart")
    assert deployment.redis is not None
    deployment.redis.stop()
    time.sleep(2)  # send steps past their ledger step finish their records (PostgreSQL is up)
    during = deployment.states()["sent"]
    time.sleep(2)
    assert deployment.states()["sent"] == during  # no send without the ledger
    deployment.redis.start()  # same port, same AOF: the ledger and the queues come back
    deployment.wait_until(deployment.all_final, "every item final after the restart")
    check_outcome(deployment, 8_000)
