"""Dispatch's logic without Celery: the due-scan that hands plan items to tasks, and the send step.

Plain functions, tested without a broker; `dispatch.tasks` only wraps them (thin tasks on ids).

The life of a send (docs/dispatch.md, "The life of a send"):
1. `scan_due` (Celery beat, every `dispatch_scan_seconds`) moves due `planned` items of running
   campaigns to `queued` in chunks, each with a fresh claim token and a lease, and returns the chunks
   to enqueue. It also re-queues items whose lease lapsed (their worker died or the broker lost the
   message) under a new token, and starts fallback re-sends. No message ever carries a far-future ETA.
2. `send_chunk` takes a chunk's ids and its token and re-reads the rows; only rows still `queued`
   under that token are its to handle (a stale or duplicated message finds none). For each: the
   campaign's state (cancelled → `cancelled`, paused → back to `planned`), the window, quiet hours in
   the user's zone at the send instant. Then, one message at a time: one ledger step (dispatch.ledger:
   the previous call's outcome settled, then idempotency on the send id, the user's suppression list,
   the caps, a reservation), then the channel call. Every `dispatch_recheck_every` messages the
   campaigns' state is read again (a cancel or pause lands within that many sends), and the lease is
   extended before it can lapse. At the end, fenced by the token, the records and their events in
   one transaction.

Delivery guarantee (docs/dispatch.md has it whole): a call's outcome is durable in the ledger before
the next call starts, so a worker killed at any point leaves at most the call under way in doubt. A
later attempt records what the ledger holds without calling again (`sent`, `unknown`), and calls a
send in doubt again only on a channel that dedupes by the send id; elsewhere it records `unknown`.
An item is recorded once (the claim token fences every write) and never lost: a killed worker's items
stay `queued`, and the scan hands them out again once the lease lapses.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from dispatch.channels import DETAIL_MAX_CHARS, ChannelAdapter, Message, Outcome, adapter_for
from dispatch.ledger import CapLedger, Reservation, Settle, Settlement, Verdict, ledger_for
from pushplan.caps import FrequencyCap
from pushplan.db.schema import CampaignRow, DispatchEventRow, PlanItemRow, utc
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, Decision, DispatchState, EventType, ItemState, Reason
from pushplan.redact import scrub
from pushplan.settings import Settings
from pushplan.windows import QuietHours

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
            row.campaign_id: Campaign.stored(row.spec)
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
                .where(_member_of(session, PlanItemRow.plan_id, ids))
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
                    .where(_member_of(session, PlanItemRow.plan_id, chunk_ids))
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
    """What one send step did, by final state and reason (`retry` counts transient failures to redo,
    `superseded` items another step holds now)."""

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

    def write(self, session: Any, claim: str) -> set[str]:
        """Apply the changes to the rows still held under `claim`; the ids written."""
        written: set[str] = set()
        for values, ids in self.groups.items():
            written.update(
                session.scalars(
                    sa.update(PlanItemRow)
                    .where(_member_of(session, PlanItemRow.plan_id, ids), PlanItemRow.claim == claim)
                    .values(dict(values))
                    .returning(PlanItemRow.plan_id)
                    .execution_options(synchronize_session=False)
                )
            )
        return written


def _finished(state: ItemState, reason: Reason, detail: str, now: datetime) -> dict[str, Any]:
    return {
        "state": state.value,
        "reason": reason.value,
        "detail": detail,
        "claim": None,
        "lease_until": None,
        "updated_at": now,
    }


def _held_back(now: datetime) -> dict[str, Any]:
    """A paused campaign's item goes back to `planned`, for the due-scan to hand out after resume."""
    return {"state": ItemState.planned.value, "claim": None, "lease_until": None, "updated_at": now}


# Why a send is recorded `unknown` without a call: an earlier attempt reserved it, then its worker died.
MAY_HAVE_GONE = "an earlier attempt's call may have delivered"
WAS_UNDER_WAY = "an earlier attempt's call was under way when its worker stopped"

# One more channel call made: the same expression object for every row, so the rows still group.
ONE_MORE_ATTEMPT = PlanItemRow.attempts + 1

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
    PlanItemRow.lease_until,
    PlanItemRow.window_end,
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
    now = datetime.now(UTC)
    at = as_of or now
    with store.session() as session:
        # No row lock: the lease keeps the due-scan off these rows, and every write is fenced by the claim.
        rows = session.execute(
            sa.select(*ROW_COLUMNS)
            .where(
                _member_of(session, PlanItemRow.plan_id, plan_ids),
                PlanItemRow.claim == claim,
                PlanItemRow.state == ItemState.queued.value,
            )
            .order_by(PlanItemRow.plan_id)
        ).all()
        if not rows:
            return ChunkResult()
        campaigns = {
            row.campaign_id: (Campaign.stored(row.spec), DispatchState(row.dispatch_state))
            for row in session.scalars(
                sa.select(CampaignRow).where(CampaignRow.campaign_id.in_({r.campaign_id for r in rows}))
            )
        }
    caps = {cid: FrequencyCap.of(settings, campaign) for cid, (campaign, _) in campaigns.items()}
    step = _SendStep(store, settings, ledger, claim, now, as_of)
    items = [
        _pending(row, campaigns[row.campaign_id][0], caps[row.campaign_id], settings, at) for row in rows
    ]
    # What an earlier attempt left in the ledger (its worker died before recording it): a send that
    # went, or may have gone, is recorded as that, whatever the campaign's state or the clock say now.
    known = ledger.outcomes([item.message.send_id for item in items])
    for row, item in zip(rows, items, strict=True):
        held_over = known.get(item.message.send_id)
        if held_over is Verdict.sent:
            step.sent(item)
        elif held_over is Verdict.unknown:
            step.unknown(item, MAY_HAVE_GONE)
        elif not step.stopped(
            item, campaigns[row.campaign_id][1], at, in_doubt=held_over is Verdict.in_doubt
        ):
            step.pending.append(dataclasses.replace(item, in_doubt=held_over is Verdict.in_doubt))
            step.lease_until = min(step.lease_until, _aware(row.lease_until))
    try:
        step.send_pending()
    except Exception:
        # The ledger or the database failed mid-chunk (Redis down, say): settle and record the calls
        # already made, so they are not left in doubt; the rest stays queued for the next lease.
        step.settle_best_effort()
        step.write()
        raise
    return step.write()


class _SendStep:
    """One chunk's sending: each call reserved and settled in the ledger one message at a time, the
    campaigns' state re-read, the clock and the lease checked as it goes, the outcomes written at the end.

    Per message, one ledger round trip carries the previous call's settlement and this send's
    reservation, so no call starts before the one before it is durable: a worker killed anywhere
    leaves at most the call under way in doubt (`in_doubt`), which a later attempt makes again only
    on a channel that dedupes, and records `unknown` on any other.
    """

    def __init__(
        self,
        store: PlanStore,
        settings: Settings,
        ledger: CapLedger,
        claim: str,
        now: datetime,
        as_of: datetime | None,
    ) -> None:
        self.store, self.settings, self.ledger, self.claim = store, settings, ledger, claim
        self.now, self.as_of = now, as_of
        self.quiet = QuietHours.of(settings).mask()
        self.pending: list[_Pending] = []
        # A lease must outlast one call: at least twice the channel timeout, whatever the setting.
        self.hold = timedelta(
            seconds=max(settings.dispatch_lease_seconds, 2 * settings.channel_timeout_seconds)
        )
        self.lease_until = now + timedelta(seconds=settings.dispatch_lease_seconds)
        self.updates = _Updates()
        self.outcomes: dict[str, str] = {}  # plan_id -> what ChunkResult counts
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.to_settle: list[Settlement] = []  # the last call's outcome, until the next round trip
        self._campaign_ids: list[str] | None = None
        self._adapters: dict[str, ChannelAdapter | str] = {}

    def record(self, plan_id: str, outcome: str, values: dict[str, Any]) -> None:
        if values.get("detail"):
            # Every detail stored passes here. It can quote a provider or an exception (an address, a
            # token, a URL with its key): scrubbed, then cut (a cut could leave part of a token too
            # short to be recognised).
            values = values | {"detail": scrub(values["detail"])[:DETAIL_MAX_CHARS]}
        self.updates.add(plan_id, **values)
        self.outcomes[plan_id] = outcome

    def finish(self, plan_id: str, state: ItemState, reason: Reason, detail: str, **more: Any) -> None:
        self.record(plan_id, f"{state}:{reason}", _finished(state, reason, detail, self.now) | more)

    def clock(self) -> datetime:
        """The send instant: the dispatch clock when replaying, else now (a chunk may take a while)."""
        return self.as_of or datetime.now(UTC)

    def stopped(self, item: _Pending, state: DispatchState, at: datetime, *, in_doubt: bool) -> bool:
        """Record why the item is not sent now, if it is not: the campaign cancelled or paused, the
        window over, quiet hours in the user's zone. A send in doubt is never recorded as any of
        those (its call may have gone): it is `unknown`."""
        zone = item.reservation.zone
        local = at.astimezone(ZoneInfo(zone))
        if state is DispatchState.cancelled:
            why = (ItemState.cancelled, Reason.cancelled, "the campaign was cancelled")
        elif state is not DispatchState.running:
            why = None  # paused: back to planned, for the scan to hand out after resume
        elif at >= item.window_end:
            why = (ItemState.suppressed, Reason.expired, f"window ended {item.window_end}")
        elif self.quiet[local.hour]:
            why = (ItemState.suppressed, Reason.quiet_hours, f"{local:%H:%M} local in {zone}")
        else:
            return False
        if in_doubt:
            self.give_up_in_doubt(item, WAS_UNDER_WAY)
        elif why is None:
            self.record(item.plan_id, "held_back", _held_back(self.now))
        else:
            self.finish(item.plan_id, *why)
        return True

    def send_pending(self) -> None:
        settings, ledger = self.settings, self.ledger
        held = {p.plan_id for p in self.pending}
        states: dict[str, DispatchState] = {}
        for index, item in enumerate(self.pending):
            if index % settings.dispatch_recheck_every == 0:
                states = self._campaign_states()
            if self._lease_running_out():
                held = self._extend_lease(held)
            if item.plan_id not in held:
                continue  # another step holds it now (its lease lapsed): it is theirs to send
            at = self.clock()
            moved = at - item.message.sent_at > timedelta(seconds=1)
            if moved:
                item = _retimed(item, at)
            state = states.get(item.reservation.campaign_id, DispatchState.cancelled)
            # The window and quiet hours were checked at the chunk's start; again only once time moved.
            if (moved or state is not DispatchState.running) and self.stopped(
                item, state, at, in_doubt=item.in_doubt
            ):
                continue
            try:  # before any reservation: a message that cannot be built fails alone, reserving nothing
                adapter = self._adapter(item.message.channel)
                message = _addressed(settings, item.message)
                why = "not_configured"
            except Exception as exc:
                adapter, message, why = f"{type(exc).__name__}: {exc}", item.message, "error"
            if isinstance(adapter, str):
                if item.in_doubt:
                    self.give_up_in_doubt(item, f"in doubt, and its channel cannot be called now: {adapter}")
                else:
                    self._failed(item, Outcome(item.message.send_id, ok=False, reason=why, detail=adapter))
                continue
            (verdict,) = ledger.reserve([item.reservation], settle=self.to_settle)
            self.to_settle = []
            outcome = self._send(item, verdict, adapter, message)
            if outcome is not None:
                self.to_settle.append(Settlement(item.reservation, outcome))
        ledger.settle(self.to_settle)
        self.to_settle = []

    def _adapter(self, channel: str) -> ChannelAdapter | str:
        """The channel's adapter (or why there is none), looked up once per chunk."""
        if channel not in self._adapters:
            self._adapters[channel] = _adapter(self.settings, channel)
        return self._adapters[channel]

    def settle_best_effort(self) -> None:
        """After a failure mid-chunk: the last call's outcome, if the ledger can still take it."""
        try:
            self.ledger.settle(self.to_settle)
        except Exception:  # the ledger is what failed: the call stays in doubt, as documented
            return

    def _send(
        self, item: _Pending, verdict: Verdict, adapter: ChannelAdapter, message: Message
    ) -> Settle | None:
        """Act on the ledger's verdict for one send; what to settle it as, if anything."""
        if verdict.capped:
            self.finish(item.plan_id, ItemState.suppressed, Reason.capped, f"cap {verdict}")
            return None
        if verdict is Verdict.opted_out:
            detail = f"user opted out of {item.message.channel} before the send"
            self.finish(item.plan_id, ItemState.suppressed, Reason.opted_out, detail)
            return None
        if verdict is Verdict.sent:  # an earlier attempt's call delivered; its worker died before the record
            self.sent(item)
            return None
        if verdict is Verdict.unknown:
            self.unknown(item, MAY_HAVE_GONE)
            return None
        if verdict is Verdict.in_doubt and not adapter.dedupes:
            self.give_up_in_doubt(item, WAS_UNDER_WAY)
            return None
        outcome = _call(adapter, message)
        if outcome.ok:
            self.sent(item, attempted=True)
            return Settle.sent
        if outcome.unknown:
            self.unknown(item, _said(outcome), attempted=True)
            return Settle.unknown
        self._failed(item, outcome)
        return Settle.release  # a failed call holds no cap, and a retry reserves again

    def sent(self, item: _Pending, *, attempted: bool = False) -> None:
        at = item.message.sent_at
        values = {
            "state": ItemState.sent.value,
            "sent_at": at,
            "detail": None,
            "claim": None,
            "lease_until": None,
            "updated_at": self.now,
        }
        self.record(item.plan_id, "sent", values | ({"attempts": ONE_MORE_ATTEMPT} if attempted else {}))
        self.events[item.plan_id] = _events(item, at, (EventType.push_sent, EventType.push_delivered))

    def unknown(self, item: _Pending, detail: str, *, attempted: bool = False) -> None:
        more = {"attempts": ONE_MORE_ATTEMPT} if attempted else {}
        self.finish(item.plan_id, ItemState.unknown, Reason.outcome_unknown, detail, **more)

    def give_up_in_doubt(self, item: _Pending, detail: str) -> None:
        """A send in doubt that will not be called again: `unknown` here and in the ledger."""
        self.unknown(item, detail)
        self.to_settle.append(Settlement(item.reservation, Settle.unknown))

    def _failed(self, item: _Pending, outcome: Outcome) -> None:
        attempts = item.attempts  # this call included
        if outcome.transient and attempts < self.settings.dispatch_max_attempts:
            delay = self.settings.dispatch_retry_seconds * 2 ** (attempts - 1)
            values = {
                "lease_until": datetime.now(UTC) + timedelta(seconds=delay),
                "detail": _said(outcome),
                "attempts": ONE_MORE_ATTEMPT,
                "updated_at": self.now,
            }
            self.record(item.plan_id, "retry", values)
            return
        self.finish(
            item.plan_id, ItemState.failed, Reason.send_failed, _said(outcome), attempts=ONE_MORE_ATTEMPT
        )
        self.outcomes[item.plan_id] = f"failed:{outcome.reason}"
        self.events[item.plan_id] = _events(item, item.message.sent_at, (EventType.push_failed,))

    def _campaign_states(self) -> dict[str, DispatchState]:
        """The chunk's campaigns' dispatch states now: a pause or cancel is seen within RECHECK sends."""
        if self._campaign_ids is None:
            self._campaign_ids = sorted({p.reservation.campaign_id for p in self.pending})
        query = sa.select(CampaignRow.campaign_id, CampaignRow.dispatch_state).where(
            CampaignRow.campaign_id.in_(self._campaign_ids)
        )
        engine = self.store.engine
        if engine.dialect.name == "postgresql":
            # One read, no transaction around it: a round trip instead of three, every 20 sends.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                rows = connection.execute(query).all()
        else:  # SQLite: the store's sessions, whose transactions the engine begins its own way
            with self.store.session() as session:
                rows = session.execute(query).all()
        return {campaign_id: DispatchState(state) for campaign_id, state in rows}

    def _lease_running_out(self) -> bool:
        return self.lease_until - datetime.now(UTC) < self.hold / 2

    def _extend_lease(self, held: set[str]) -> set[str]:
        """Renew the lease of the chunk's rows still ours; the ids still held (fenced by the claim)."""
        now = datetime.now(UTC)
        lease_until = now + self.hold
        with self.store.session() as session:
            kept = set(
                session.scalars(
                    sa.update(PlanItemRow)
                    .where(
                        _member_of(session, PlanItemRow.plan_id, sorted(held)),
                        PlanItemRow.claim == self.claim,
                        PlanItemRow.state == ItemState.queued.value,
                    )
                    .values(lease_until=lease_until, updated_at=now)
                    .returning(PlanItemRow.plan_id)
                    .execution_options(synchronize_session=False)
                )
            )
        self.lease_until = lease_until
        return kept

    def write(self) -> ChunkResult:
        """Record every outcome, fenced by the claim, with its events, in one transaction."""
        result = ChunkResult()
        with self.store.session() as session:
            written = self.updates.write(session, self.claim)
            _insert_events(session, [e for plan_id in written for e in self.events.get(plan_id, [])])
        for item in self.pending:
            if item.plan_id not in self.outcomes:
                self.outcomes[item.plan_id] = "superseded"
        for plan_id, outcome in self.outcomes.items():
            result.add(outcome if plan_id in written else "superseded")
        return result


@dataclass(frozen=True)
class _Pending:
    plan_id: str
    reservation: Reservation
    message: Message
    propensity: float | None
    attempts: int  # channel calls made, this one included
    window_end: datetime
    in_doubt: bool = False  # an earlier attempt reserved it and may have called: never recorded as not sent


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
        # A firing's own window (a triggered campaign's item), else the campaign's.
        window_end=_aware(row.window_end) if row.window_end is not None else campaign.window.end,
    )


def _retimed(item: _Pending, at: datetime) -> _Pending:
    """The same send at a later instant: a chunk that takes a while checks its caps and quiet hours, and
    records its sends, at the instant each goes, not when the chunk started."""
    return dataclasses.replace(
        item,
        reservation=dataclasses.replace(item.reservation, at=at),
        message=dataclasses.replace(item.message, sent_at=at),
    )


def _adapter(settings: Settings, channel: str) -> ChannelAdapter | str:
    """The channel's adapter, or why there is none (a channel that is not configured fails its items
    permanently: retrying cannot configure it)."""
    try:
        return adapter_for(settings, channel)
    except ValueError as exc:
        return str(exc)


def _call(adapter: ChannelAdapter, message: Message) -> Outcome:
    """One channel call; whatever it raises is this message's failure, never the chunk's."""
    try:
        (outcome,) = adapter.send([message])
    except Exception as exc:  # a bug or bad data in one message must not stop the others
        return Outcome(message.send_id, ok=False, reason="error", detail=f"{type(exc).__name__}: {exc}")
    return outcome


def _addressed(settings: Settings, message: Message) -> Message:
    column = RECIPIENT_COLUMN.get(message.channel)
    if column is None:
        return message
    address = _recipients(settings.users_path, column).get(message.user_id)
    return dataclasses.replace(message, recipient=address)  # frozen: a copy with the address


def _aware(value: datetime | None) -> datetime:
    return datetime.now(UTC) if value is None else utc(value)


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
    """An outcome's reason and detail, as `record` stores them (not every detail comes from an adapter
    that scrubs it: `_call` quotes whatever one raised)."""
    return f"{outcome.reason}: {outcome.detail}" if outcome.detail else str(outcome.reason)


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


# The outbox's columns and their PostgreSQL array types, for one INSERT ... SELECT FROM unnest(...).
EVENT_ARRAYS = {
    "event_id": "varchar[]",
    "user_id": "varchar[]",
    "event_type": "varchar[]",
    "timestamp": "timestamptz[]",
    "campaign_id": "varchar[]",
    "variant_id": "varchar[]",
    "channel": "varchar[]",
    "propensity": "float8[]",
    "flushed": "boolean[]",
}
INSERT_EVENTS_PG = sa.text(
    f"INSERT INTO dispatch_events ({', '.join(EVENT_ARRAYS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:{column} AS {kind})" for column, kind in EVENT_ARRAYS.items())
    + ")"
)


def _insert_events(session: Any, events: list[dict[str, Any]]) -> None:
    """A chunk's events in one statement. On PostgreSQL one column array each through unnest: nine
    parameters, where a multi-row VALUES has nine per row for SQLAlchemy to compile and psycopg to
    parse, and executemany a round of the protocol per row. Elsewhere (SQLite), multi-row INSERTs of
    a thousand rows, under its limit on bound parameters."""
    if not events:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(INSERT_EVENTS_PG, {column: [e[column] for e in events] for column in EVENT_ARRAYS})
        return
    for batch in _chunked(events, 1_000):
        session.execute(sa.insert(DispatchEventRow).values(batch))


def _member_of(session: Any, column: Any, values: list[str]) -> Any:
    """`column IN values`; on PostgreSQL `column = ANY(:array)`, one parameter: a chunk's 500 ids as
    500 parameters cost more to compile and for the driver to parse than the query costs the server."""
    if session.get_bind().dialect.name == "postgresql":
        return column == sa.any_(sa.literal(list(values), type_=postgresql.ARRAY(sa.String)))
    return column.in_(values)


def _chunked(ids: list[T], size: int) -> Iterable[list[T]]:
    for first in range(0, len(ids), size):
        yield ids[first : first + size]
