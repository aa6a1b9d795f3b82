"""Dispatch's logic without Celery: the due-scan that hands plan items to tasks, and the send step.

Plain functions, tested without a broker; `dispatch.tasks` only wraps them (STYLE.md, "Celery").

The life of a send (DESIGN.md, "Dispatch rules"):
1. `scan_due` (Celery beat, every `dispatch_scan_seconds`) moves due `planned` items of running
   campaigns to `queued` in chunks, each with a fresh claim token and a lease, and returns the chunks
   to enqueue. It also re-queues items whose lease lapsed (their worker died or the broker lost the
   message) under a new token, and starts fallback re-sends. No message ever carries a far-future ETA.
2. `send_chunk` takes a chunk's ids and its token and re-reads the rows; only rows still `queued`
   under that token are its to handle (a stale or duplicated message finds none). For each: the
   campaign's state (cancelled → `cancelled`, paused → back to `planned`), the window, quiet hours in
   the user's zone at the send instant; then one ledger step per send (dispatch.ledger: idempotency
   on the send id, the caps, a reservation); then the channel call; then, fenced by the token, the
   record and its events in one transaction. A failed call releases its reservation; a transient
   failure is retried by the due-scan after a doubling delay, up to `dispatch_max_attempts` calls.

Delivery guarantee: an item is recorded `sent` at most once, and never lost: a worker killed at any
point leaves it `queued`, and the scan hands it out again once the lease lapses. A worker killed
after the channel accepted a message but before the record is the one gap: the next attempt finds
its reservation (`duplicate`) and calls the channel again with the same idempotency key (the send
id). Channels that honour the key (the sandbox; webhook receivers that check `Idempotency-Key`)
then deliver once; those that do not (SMTP, FCM) may deliver that one message twice.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa

from dispatch.channels import Message, Outcome, adapter_for
from dispatch.ledger import CapLedger, Reservation, ledger_for
from dispatch.plan_store import CampaignRow, DispatchEventRow, PlanItemRow, PlanStore
from pushplan.caps import FrequencyCap
from pushplan.domain import Campaign, Decision, EventType, ItemState, Reason
from pushplan.settings import Settings
from serving.planner import QuietHours


class DispatchState(StrEnum):
    """A campaign's sending: `idle` until started, then `running`; `paused` holds its sends back, and
    `cancelled` is final (its unsent items become `cancelled`)."""

    idle = "idle"
    running = "running"
    paused = "paused"
    cancelled = "cancelled"


T = TypeVar("T")

# A user's channel address comes from these attributes of the users file (extra columns are kept).
RECIPIENT_COLUMN = {"push": "push_token", "sms": "phone", "email": "email"}


@dataclass(frozen=True)
class Chunk:
    """What one send task gets: ids, the claim token they were queued under, the dispatch clock."""

    plan_ids: list[str]
    claim: str
    as_of: str | None = None

    def args(self) -> list[Any]:
        return [self.plan_ids, self.claim, self.as_of]


def send_id(plan_id: str, fallback_step: int) -> str:
    """The idempotency key of a send: the plan item id, and `:n` for its n-th fallback re-send."""
    return plan_id if fallback_step == 0 else f"{plan_id}:{fallback_step}"


def scan_due(
    store: PlanStore, settings: Settings, *, as_of: datetime | None = None, max_chunks: int = 200
) -> list[Chunk]:
    """Queue what is due by `as_of` (default: now) and what lapsed; the chunks to enqueue, after commit.

    `as_of` is the dispatch clock: the wall clock in service, a simulated one when replaying a
    simulated campaign (the demo). Leases are always on the wall clock.
    """
    now = datetime.now(UTC)
    due_by = as_of or now
    size = settings.dispatch_chunk
    lease = now + timedelta(seconds=settings.dispatch_lease_seconds)
    stamp = due_by.isoformat() if as_of is not None else None
    chunks: list[Chunk] = []
    with store.session() as session:
        running = {
            row.campaign_id: Campaign.model_validate(row.spec)
            for row in session.scalars(
                sa.select(CampaignRow).where(CampaignRow.dispatch_state == DispatchState.running.value)
            )
        }
        in_flight = session.scalar(
            sa.select(sa.func.count()).where(
                PlanItemRow.campaign_id.in_(running), PlanItemRow.state == ItemState.queued.value
            )
        )
        room = max(0, min(size * max_chunks, settings.dispatch_max_in_flight - int(in_flight or 0)))
        # FOR UPDATE SKIP LOCKED: rows a send step holds are its own until it commits; the scan takes
        # the rest, and the conditions are those of the update, so nothing is taken twice.
        due = (
            session.scalars(
                sa.select(PlanItemRow.plan_id)
                .where(
                    PlanItemRow.campaign_id.in_(running),
                    PlanItemRow.state == ItemState.planned.value,
                    PlanItemRow.decision == Decision.send.value,
                    PlanItemRow.send_at <= due_by,
                )
                .order_by(PlanItemRow.send_at, PlanItemRow.plan_id)
                .limit(room)
                .with_for_update(skip_locked=True)
            ).all()
            if room
            else []
        )
        # Lapsed items of every campaign, paused or cancelled ones too: their send step settles them.
        lapsed = session.scalars(
            sa.select(PlanItemRow.plan_id)
            .where(
                PlanItemRow.state == ItemState.queued.value,
                PlanItemRow.lease_until < now,
            )
            .order_by(PlanItemRow.plan_id)
            .limit(size * max_chunks)
            .with_for_update(skip_locked=True)
        ).all()
        for ids in _chunked([*due, *lapsed], size):
            claim = str(uuid.uuid4())
            session.execute(
                sa.update(PlanItemRow)
                .where(PlanItemRow.plan_id.in_(ids))
                .values(state=ItemState.queued.value, claim=claim, lease_until=lease, updated_at=now)
            )
            chunks.append(Chunk(list(ids), claim, stamp))
        chunks += _start_fallbacks(session, running, due_by, now, lease, size, stamp)
    return chunks


def _start_fallbacks(
    session: Any,
    running: dict[str, Campaign],
    due_by: datetime,
    now: datetime,
    lease: datetime,
    size: int,
    stamp: str | None,
) -> list[Chunk]:
    """Sent items not opened within their campaign's `fallback_after` go again on its next channel."""
    chunks: list[Chunk] = []
    for campaign in running.values():
        if campaign.fallback_after is None or len(campaign.channels) < 2:
            continue
        for step, (current, following) in enumerate(
            zip(campaign.channels, campaign.channels[1:], strict=False)
        ):
            ids = session.scalars(
                sa.select(PlanItemRow.plan_id)
                .where(
                    PlanItemRow.campaign_id == campaign.campaign_id,
                    PlanItemRow.state == ItemState.sent.value,
                    PlanItemRow.fallback_step == step,
                    PlanItemRow.channel == current.value,
                    PlanItemRow.opened_at.is_(None),
                    PlanItemRow.sent_at <= due_by - campaign.fallback_after,
                )
                .order_by(PlanItemRow.plan_id)
                .with_for_update(skip_locked=True)
            ).all()
            for chunk_ids in _chunked(ids, size):
                claim = str(uuid.uuid4())
                session.execute(
                    sa.update(PlanItemRow)
                    .where(PlanItemRow.plan_id.in_(chunk_ids))
                    .values(
                        state=ItemState.queued.value,
                        channel=following.value,
                        fallback_step=step + 1,
                        attempts=0,
                        claim=claim,
                        lease_until=lease,
                        updated_at=now,
                    )
                )
                chunks.append(Chunk(list(chunk_ids), claim, stamp))
    return chunks


@dataclass
class ChunkResult:
    """What one send step did, by final state and reason (`retry` counts transient failures to redo)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1


class _Updates:
    """Row changes grouped by their values, written as one UPDATE per group (fenced by the claim):
    a chunk's items fall into a handful of outcomes, so this is a few statements, not one per row."""

    def __init__(self) -> None:
        self.groups: dict[tuple[tuple[str, Any], ...], list[str]] = defaultdict(list)

    def add(self, plan_id: str, **values: Any) -> None:
        self.groups[tuple(sorted(values.items()))].append(plan_id)

    def write(self, session: Any, claim: str) -> None:
        for values, ids in self.groups.items():
            session.execute(
                sa.update(PlanItemRow)
                .where(PlanItemRow.plan_id.in_(ids), PlanItemRow.claim == claim)
                .values(dict(values))
                .execution_options(synchronize_session=False)
            )


def _finished(state: ItemState, reason: Reason, detail: str, now: datetime) -> dict[str, Any]:
    return {
        "state": state.value,
        "reason": reason.value,
        "detail": detail[:500],
        "claim": None,
        "lease_until": None,
        "updated_at": now,
    }


ROW_COLUMNS = (
    PlanItemRow.plan_id,
    PlanItemRow.campaign_id,
    PlanItemRow.user_id,
    PlanItemRow.channel,
    PlanItemRow.variant_id,
    PlanItemRow.timezone,
    PlanItemRow.propensity,
    PlanItemRow.attempts,
    PlanItemRow.fallback_step,
)


def send_chunk(
    store: PlanStore,
    settings: Settings,
    plan_ids: list[str],
    claim: str,
    as_of: datetime | None = None,
    *,
    ledger: CapLedger | None = None,
) -> ChunkResult:
    """Send the chunk's items that are still `queued` under `claim`; see the module docstring."""
    ledger = ledger or ledger_for(settings)
    result = ChunkResult()
    now = datetime.now(UTC)
    at = as_of or now
    quiet = QuietHours(settings.quiet_start_hour, settings.quiet_end_hour).mask()
    decided = _Updates()
    with store.session() as session:
        rows = session.execute(
            sa.select(*ROW_COLUMNS)
            .where(
                PlanItemRow.plan_id.in_(plan_ids),
                PlanItemRow.claim == claim,
                PlanItemRow.state == ItemState.queued.value,
            )
            .order_by(PlanItemRow.plan_id)
            .with_for_update()  # the scan skips these while this step decides about them
        ).all()
        if not rows:
            return result
        campaigns = {
            row.campaign_id: (Campaign.model_validate(row.spec), DispatchState(row.dispatch_state))
            for row in session.scalars(
                sa.select(CampaignRow).where(CampaignRow.campaign_id.in_({r.campaign_id for r in rows}))
            )
        }
        caps = {cid: FrequencyCap.of(settings, campaign) for cid, (campaign, _) in campaigns.items()}
        pending: list[_Pending] = []
        for row in rows:
            campaign, state = campaigns[row.campaign_id]
            zone = row.timezone or settings.default_timezone
            local = at.astimezone(ZoneInfo(zone))
            if state is DispatchState.cancelled:
                change = _finished(ItemState.cancelled, Reason.cancelled, "the campaign was cancelled", now)
            elif state is not DispatchState.running:  # paused: wait for resume as a planned item
                decided.add(
                    row.plan_id, state=ItemState.planned.value, claim=None, lease_until=None, updated_at=now
                )
                result.add("held_back")
                continue
            elif at >= campaign.window.end:
                change = _finished(
                    ItemState.suppressed, Reason.expired, f"window ended {campaign.window.end}", now
                )
            elif quiet[local.hour]:
                change = _finished(
                    ItemState.suppressed, Reason.quiet_hours, f"{local:%H:%M} local in {zone}", now
                )
            else:
                pending.append(_pending(row, campaign, caps[row.campaign_id], settings, at))
                continue
            decided.add(row.plan_id, **change)
            result.add(f"{change['state']}:{change['reason']}")
        # Attempts are counted before the call, so a crash mid-call still counts; the lease covers it.
        lease = now + timedelta(seconds=settings.dispatch_lease_seconds)
        for item in pending:
            decided.add(item.plan_id, attempts=item.attempts, lease_until=lease)
        decided.write(session, claim)
    if not pending:
        return result

    verdicts = ledger.reserve([p.reservation for p in pending])
    to_call = [p for p, v in zip(pending, verdicts, strict=True) if not v.capped]
    outcomes = _call_channels(settings, [p.message for p in to_call])
    failed_calls = [p.reservation for p in to_call if not outcomes[p.message.send_id].ok]
    ledger.release(failed_calls)  # a failed call holds no cap

    recorded = _Updates()
    events: list[dict[str, Any]] = []
    with store.session() as session:
        held = set(
            session.scalars(
                sa.select(PlanItemRow.plan_id)
                .where(
                    PlanItemRow.plan_id.in_([p.plan_id for p in pending]),
                    PlanItemRow.claim == claim,  # fenced: a lapsed lease handed it to another task
                    PlanItemRow.state == ItemState.queued.value,
                )
                .order_by(PlanItemRow.plan_id)
                .with_for_update()
            )
        )
        for item, verdict in zip(pending, verdicts, strict=True):
            if item.plan_id not in held:
                result.add("superseded")
                continue
            if verdict.capped:
                recorded.add(
                    item.plan_id, **_finished(ItemState.suppressed, Reason.capped, f"cap {verdict}", now)
                )
                result.add(f"suppressed:{Reason.capped}")
                continue
            outcome = outcomes[item.message.send_id]
            if outcome.ok:
                recorded.add(
                    item.plan_id,
                    state=ItemState.sent.value,
                    sent_at=at,
                    detail=None,
                    claim=None,
                    lease_until=None,
                    updated_at=now,
                )
                events += _events(item, at, (EventType.push_sent, EventType.push_delivered))
                result.add("sent")
            elif outcome.transient and item.attempts < settings.dispatch_max_attempts:
                delay = settings.dispatch_retry_seconds * 2 ** (item.attempts - 1)
                recorded.add(
                    item.plan_id,
                    lease_until=now + timedelta(seconds=delay),
                    detail=_said(outcome),
                    updated_at=now,
                )
                result.add("retry")
            else:
                recorded.add(
                    item.plan_id, **_finished(ItemState.failed, Reason.send_failed, _said(outcome), now)
                )
                events += _events(item, at, (EventType.push_failed,))
                result.add(f"failed:{outcome.reason}")
        recorded.write(session, claim)
        if events:
            # Multi-row INSERTs, a thousand rows each: under SQLite's limit on bound parameters.
            for batch in _chunked(events, 1_000):
                session.execute(sa.insert(DispatchEventRow).values(batch))
    return result


@dataclass(frozen=True)
class _Pending:
    plan_id: str
    reservation: Reservation
    message: Message
    propensity: float | None
    attempts: int  # channel calls made, this one included


def _pending(row: Any, campaign: Campaign, cap: FrequencyCap, settings: Settings, at: datetime) -> _Pending:
    """What a send needs, from a plan item row (ROW_COLUMNS) of a campaign."""
    variant = next((v for v in campaign.variants if v.variant_id == row.variant_id), campaign.variants[0])
    channel = row.channel or campaign.channels[0].value
    sid = send_id(row.plan_id, row.fallback_step)
    return _Pending(
        plan_id=row.plan_id,
        reservation=Reservation(
            send_id=sid,
            user_id=row.user_id,
            campaign_id=row.campaign_id,
            channel=channel,
            at=at,
            zone=row.timezone or settings.default_timezone,
            cap=cap,
        ),
        message=Message(
            send_id=sid,
            plan_id=row.plan_id,
            campaign_id=row.campaign_id,
            user_id=row.user_id,
            channel=channel,
            variant_id=row.variant_id,
            title=variant.title,
            body=variant.body,
            sent_at=at,
        ),
        propensity=row.propensity,
        attempts=row.attempts + 1,
    )


def _call_channels(settings: Settings, messages: list[Message]) -> dict[str, Outcome]:
    """Each channel's messages in one adapter call; a channel that is not configured fails them all
    (permanently: retrying cannot configure it), with the adapter's explanation."""
    by_channel: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        by_channel[message.channel].append(message)
    outcomes: dict[str, Outcome] = {}
    for channel, batch in by_channel.items():
        try:
            adapter = adapter_for(settings, channel)
        except ValueError as exc:
            outcomes |= {
                m.send_id: Outcome(m.send_id, ok=False, reason="not_configured", detail=str(exc))
                for m in batch
            }
            continue
        batch = _with_recipients(settings, channel, batch)
        outcomes |= {o.send_id: o for o in adapter.send(batch)}
    return outcomes


def _with_recipients(settings: Settings, channel: str, messages: list[Message]) -> list[Message]:
    column = RECIPIENT_COLUMN.get(channel)
    if column is None:
        return messages
    addresses = _recipients(settings.users_path, column)
    return [
        dataclasses.replace(m, recipient=addresses.get(m.user_id))  # frozen: a copy with the address
        for m in messages
    ]


_RECIPIENTS: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}


def _recipients(users_path: Path, column: str) -> dict[str, str]:
    """user_id → address from the users file's `column`, re-read when the file changes."""
    if not users_path.exists():
        return {}
    key, mtime = (str(users_path), column), users_path.stat().st_mtime
    cached = _RECIPIENTS.get(key)
    if cached is None or cached[0] != mtime:
        if column not in pq.read_schema(users_path).names:
            mapping: dict[str, str] = {}
        else:
            users = pd.read_parquet(users_path, columns=["user_id", column]).dropna()
            mapping = dict(zip(users["user_id"].astype(str), users[column].astype(str), strict=True))
        _RECIPIENTS[key] = cached = (mtime, mapping)
    return cached[1]


def _said(outcome: Outcome) -> str:
    return f"{outcome.reason}: {outcome.detail}"[:500] if outcome.detail else str(outcome.reason)


def _events(item: _Pending, at: datetime, kinds: Iterable[EventType]) -> list[dict[str, Any]]:
    message = item.message
    return [
        {
            "event_id": f"{message.send_id}/{kind.value}",  # stable: a re-flush stores nothing twice
            "user_id": message.user_id,
            "event_type": kind.value,
            "timestamp": at,
            "campaign_id": message.campaign_id,
            "variant_id": message.variant_id,
            "channel": message.channel,
            "propensity": item.propensity if kind is EventType.push_sent else None,
            "flushed": False,
        }
        for kind in kinds
    ]


def _chunked(ids: list[T], size: int) -> Iterable[list[T]]:
    for first in range(0, len(ids), size):
        yield ids[first : first + size]
