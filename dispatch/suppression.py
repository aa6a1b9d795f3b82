"""The suppression list, fed from events: `opt_out` and `unsubscribed` put a user on it for the event's
channel (or for every channel when the event names none), `opt_in` takes them off; bounces and
provider unsubscribes arrive as channel feedback.

The list lives beside the caps in the send ledger (`dispatch.ledger`: Redis in `production`, the
plan store's SQL database in `local`) and is checked in the same atomic step as the caps, at the send
instant, so a user who opts out after planning gets nothing more: no re-plan is needed to stop them.
Changes carry the event's timestamp and the latest one wins, so files imported out of order, or an
API call that repeats an old event, cannot undo a newer choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dispatch.ledger import ALL_CHANNELS, OptChange, ledger_for
from features.event_store import events_in_file
from pushplan.db.engine import migrate
from pushplan.domain import EventType
from pushplan.settings import Profile, Settings

SUPPRESSING = frozenset({EventType.opt_out.value, EventType.unsubscribed.value})
LIFTING = frozenset({EventType.opt_in.value})
COLUMNS = ["user_id", "event_type", "timestamp", "channel"]


def opt_changes(events: pd.DataFrame) -> list[OptChange]:
    """The suppression-list changes in a frame of events (contract columns; `channel` optional)."""
    if events.empty or not {"user_id", "event_type", "timestamp"} <= set(events.columns):
        return []
    kinds = events["event_type"].astype(str)
    chosen = events[kinds.isin(SUPPRESSING | LIFTING)]
    if chosen.empty:
        return []
    at = pd.to_datetime(chosen["timestamp"], utc=True, format="ISO8601")
    channels: Iterable[object] = chosen["channel"] if "channel" in chosen else [None] * len(chosen)
    return [
        OptChange(
            user_id=str(user),
            channel=str(channel) if isinstance(channel, str) and channel else ALL_CHANNELS,
            at=stamp.to_pydatetime(warn=False),  # a datetime holds microseconds; finer is noise here
            opted_out=kind in SUPPRESSING,
        )
        for user, kind, stamp, channel in zip(
            chosen["user_id"], chosen["event_type"], at, channels, strict=True
        )
    ]


def suppress(settings: Settings, changes: list[OptChange]) -> int:
    """Apply changes to the profile's suppression list (the plan store migrated); how many."""
    if changes:
        ledger_for(settings).suppress(changes)
    return len(changes)


def suppress_from_events(settings: Settings, events: pd.DataFrame) -> int:
    return suppress(settings, opt_changes(events))


def suppress_from_file(settings: Settings, path: Path) -> int:
    """The changes in an events file already validated and stored (CSV or parquet), applied; the
    plan store is migrated first, since an import may come before anything else made it."""
    frame = events_in_file(path, COLUMNS, SUPPRESSING | LIFTING)
    changes = opt_changes(frame)
    if changes and settings.profile is Profile.local:
        migrate(settings)
    return suppress(settings, changes)
