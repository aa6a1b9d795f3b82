"""Campaign control (start, pause, resume, cancel), what dispatch owes the event store, and opens seen.

Shared by the API (`POST /v1/campaigns/{id}/dispatch|pause|resume|cancel`) and the CLI
(`pushplan campaign …`), so both enforce the same transitions.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pushplan.approvals import Approval
from pushplan.db.schema import CampaignRow, DispatchEventRow, PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.db.trigger_inbox import note_events
from pushplan.domain import Decision, DispatchState, EventType, ItemState, NoSuchCampaign, Reason
from pushplan.settings import Settings

# action → (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[set[DispatchState], DispatchState]] = {
    "dispatch": ({DispatchState.idle, DispatchState.paused, DispatchState.running}, DispatchState.running),
    "pause": ({DispatchState.running, DispatchState.paused}, DispatchState.paused),
    "resume": ({DispatchState.paused, DispatchState.running}, DispatchState.running),
    "cancel": (set(DispatchState), DispatchState.cancelled),
}


class TransitionRefused(ValueError):
    pass


def control(store: PlanStore, campaign_id: str, action: str) -> tuple[DispatchState, int]:
    """Apply `action` to the campaign; the new state, and how many items a cancel cancelled.

    Repeating an action is harmless (dispatching a running campaign changes nothing); a cancelled
    campaign stays cancelled. Cancelling marks the planned items `cancelled` here; queued ones are
    cancelled by their send step, which re-reads the campaign first, so an item whose channel call
    is already under way is recorded as what it is (sent), never as cancelled.
    """
    allowed, target = TRANSITIONS[action]
    now = datetime.now(UTC)
    with store.session() as session:
        row = session.get(CampaignRow, campaign_id, with_for_update=True)
        if row is None:
            raise NoSuchCampaign(f"no campaign {campaign_id!r}")
        current = DispatchState(row.dispatch_state)
        if current not in allowed:
            raise TransitionRefused(f"campaign {campaign_id!r} is {current.value}; it cannot {action}")
        approval = Approval(row.approval)
        if target is DispatchState.running and not approval.may_dispatch:
            why = "; ".join(row.approval_reasons or [])
            raise TransitionRefused(
                f"campaign {campaign_id!r} is {approval.value} ({why}): it needs an approver's yes "
                "before it may dispatch"
                if approval is Approval.draft
                else f"campaign {campaign_id!r} was rejected by {row.decided_by}: "
                f"{row.decision_comment or 'no comment'}; change it to submit it again"
            )
        row.dispatch_state, row.updated_at = target.value, now
        cancelled = 0
        if target is DispatchState.cancelled:
            cancelled = session.execute(  # type: ignore[attr-defined]  # an UPDATE's CursorResult
                sa.update(PlanItemRow)
                .where(
                    PlanItemRow.campaign_id == campaign_id,
                    PlanItemRow.decision == Decision.send.value,
                    PlanItemRow.state == ItemState.planned.value,
                )
                .values(
                    state=ItemState.cancelled.value,
                    reason=Reason.cancelled.value,
                    detail="the campaign was cancelled",
                    claim=None,
                    lease_until=None,
                    updated_at=now,
                )
            ).rowcount
    return target, int(cancelled or 0)


def dispatch_state(store: PlanStore, campaign_id: str) -> DispatchState | None:
    with store.session() as session:
        state = session.scalar(
            sa.select(CampaignRow.dispatch_state).where(CampaignRow.campaign_id == campaign_id)
        )
    return DispatchState(state) if state else None


def item_states(store: PlanStore, campaign_id: str) -> pd.DataFrame:
    """Counts of the campaign's items by (decision, state, reason): what dispatch did, in one table."""
    with store.session() as session:
        rows = session.execute(
            sa.select(PlanItemRow.decision, PlanItemRow.state, PlanItemRow.reason, sa.func.count())
            .where(PlanItemRow.campaign_id == campaign_id)
            .group_by(PlanItemRow.decision, PlanItemRow.state, PlanItemRow.reason)
        ).all()
    return pd.DataFrame(rows, columns=["decision", "state", "reason", "items"])


def mark_opened(store: PlanStore, events: pd.DataFrame) -> int:
    """Record the first open (or click) of each campaign's item, so fallback re-sends skip it."""
    opened = events[
        events["event_type"].isin([EventType.push_opened.value, EventType.push_clicked.value])
        & events.get("campaign_id", pd.Series(None, index=events.index)).notna()
    ]
    if opened.empty:
        return 0
    first = (
        opened.assign(timestamp=pd.to_datetime(opened["timestamp"], utc=True, format="ISO8601"))
        .groupby(["campaign_id", "user_id"])["timestamp"]
        .min()
    )
    updated = 0
    with store.session() as session:
        for (campaign_id, user_id), at in first.items():
            updated += session.execute(  # type: ignore[attr-defined]  # an UPDATE's CursorResult
                sa.update(PlanItemRow)
                .where(
                    PlanItemRow.campaign_id == campaign_id,
                    PlanItemRow.user_id == user_id,
                    PlanItemRow.opened_at.is_(None),
                )
                .values(opened_at=at.to_pydatetime())
            ).rowcount
    return updated


def flush_events(store: PlanStore, settings: Settings, limit: int = 50_000) -> int:
    """Move dispatch's outbox of events into the event store, fold the sends into the online fatigue
    features (as `POST /v1/events` does) where a Feast repo is applied, and keep those live triggers
    listen to in the trigger inbox; returns events moved.

    Idempotent into the event store: it ignores event ids it holds, so a flush that dies after the
    import and before marking rows flushed only repeats itself. The online fatigue counts are
    approximate between daily builds anyway (features.store.push_events), so a repeat there only
    over-counts until the next build.
    """
    from features.event_store import EventStore
    from features.store import feature_store, push_events

    with store.session() as session:
        rows = session.execute(
            sa.select(
                DispatchEventRow.event_id,
                DispatchEventRow.user_id,
                DispatchEventRow.event_type,
                DispatchEventRow.timestamp,
                DispatchEventRow.campaign_id,
                DispatchEventRow.variant_id,
                DispatchEventRow.channel,
                DispatchEventRow.propensity,
            )
            .where(DispatchEventRow.flushed.is_(False))
            .order_by(DispatchEventRow.timestamp)
            .limit(limit)
        ).all()
    if not rows:
        return 0
    events = pd.DataFrame(rows, columns=list(rows[0]._fields))
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    events["value"] = None
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "dispatch-events.parquet"
        events.astype(
            {c: "string" for c in events.columns if c not in ("propensity", "timestamp")}
        ).to_parquet(path, index=False)
        EventStore(settings).import_file(path)
    if (settings.feast_dir / "registry.db").exists():  # no repo applied yet: nothing online to update
        push_events(feature_store(settings), settings, events)
    # A journey's next step listens to these (`on: push_sent` of an earlier campaign); beat's firing
    # task picks them up (serving's task, which dispatch names but does not import).
    note_events(store, events)
    with store.session() as session:
        session.execute(
            sa.update(DispatchEventRow)
            .where(DispatchEventRow.event_id.in_(events["event_id"].tolist()))
            .values(flushed=True)
        )
    return len(events)
