"""The trigger inbox: events a live trigger listens to, kept in the plan store for the firing task.

Every path by which an event arrives writes here after the event store has it: `POST /v1/events`,
`pushplan events import` and dispatch's outbox flush (whose `push_sent` and `push_clicked` events
chain a journey's steps). Only events whose type a live trigger (a triggered campaign that is
running or paused) names in `on` or `unless` are kept, so the inbox stays small. Writes are
idempotent on the event id: a replayed batch adds nothing, and so fires nothing twice.

The firing task (serving.triggers) claims pending rows under a lease, as the due-scan claims plan
items: a worker that dies leaves them to be claimed again once the lease lapses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pushplan.db.schema import CampaignRow, TriggerInboxRow
from pushplan.db.store import PlanStore
from pushplan.domain import MAX_TRIGGER_DELAY, DispatchState, properties_problem

# Triggers listen while their campaign is running; a paused one still fires (its sends wait).
LIVE = (DispatchState.running.value, DispatchState.paused.value)
LIVE_TRIGGER = sa.and_(CampaignRow.trigger_events.is_not(None), CampaignRow.dispatch_state.in_(LIVE))
_BATCH = 1_000
# What the inbox keeps of an event.
INBOX_COLUMNS = ("event_id", "user_id", "event_type", "timestamp", "campaign_id", "properties")
# Processed events are kept this long after they happened: an `unless` looks back at most the longest
# delay, and a firing task that lags a little still finds them.
INBOX_KEEP = MAX_TRIGGER_DELAY + timedelta(days=1)


def listened_events(store: PlanStore) -> set[str]:
    """The event names live triggers read (their `on` and `unless`)."""
    with store.session() as session:
        rows = session.scalars(sa.select(CampaignRow.trigger_events).where(LIVE_TRIGGER)).all()
    return {name for row in rows if row for name in row.split()}


def note_events(store: PlanStore, events: pd.DataFrame, *, now: datetime | None = None) -> int:
    """Keep the events of `events` that a live trigger listens to; returns how many were new.

    `events` has the contract's columns (event_id, user_id, event_type, timestamp; campaign_id and
    properties where present), already validated and stored in the event store."""
    if events.empty:
        return 0
    names = listened_events(store)
    kept = events[events["event_type"].isin(names)] if names else events.iloc[:0]
    if kept.empty:
        return 0
    received = now or datetime.now(UTC)
    rows = [
        {
            "event_id": str(row["event_id"]),
            "user_id": str(row["user_id"]),
            "event_type": str(row["event_type"]),
            "timestamp": _utc(row["timestamp"]),
            "campaign_id": _text(row.get("campaign_id")),
            "properties": _properties(row.get("properties")),
            "received_at": received,
        }
        for row in kept.to_dict("records")
    ]
    added = 0
    with store.session() as session:
        insert: Any = (
            postgresql.insert(TriggerInboxRow)
            if session.get_bind().dialect.name == "postgresql"
            else sqlite.insert(TriggerInboxRow)
        )
        for first in range(0, len(rows), _BATCH):
            batch = insert.values(rows[first : first + _BATCH])
            result: Any = session.execute(batch.on_conflict_do_nothing(index_elements=["event_id"]))
            added += max(int(result.rowcount or 0), 0)
    return added


def prune(store: PlanStore, *, keep: timedelta, now: datetime | None = None) -> int:
    """Forget processed events older than `keep` (the longest delay an `unless` may look back)."""
    before = (now or datetime.now(UTC)) - keep
    with store.session() as session:
        result: Any = session.execute(
            sa.delete(TriggerInboxRow).where(
                TriggerInboxRow.processed_at.is_not(None), TriggerInboxRow.timestamp < before
            )
        )
    return int(result.rowcount or 0)


def _utc(value: object) -> datetime:
    """An event's instant (ISO text or a timestamp, with an offset: validated already) in UTC."""
    moment = pd.Timestamp(value)
    return (moment.tz_convert("UTC") if moment.tzinfo else moment.tz_localize("UTC")).to_pydatetime()


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    return str(value)


def _properties(value: object) -> str | None:
    """As the event store keeps them: the contract's compact JSON (an object from the API, or a file's
    text as written), from the one normaliser the import validates with."""
    if _text(value) is None:
        return None
    text, problem = properties_problem(value)
    if problem is not None:  # validated by the import before it got here: not a user's error
        raise ValueError(f"properties {problem}")
    return text


def pending_count(store: PlanStore) -> int:
    with store.session() as session:
        return int(
            session.scalar(sa.select(sa.func.count()).where(TriggerInboxRow.processed_at.is_(None))) or 0
        )
