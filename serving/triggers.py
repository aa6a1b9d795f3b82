"""Triggered campaigns: the firing task that turns inbox events into plan items (docs/triggers.md).

One run (`fire_triggers`, a Celery task started by each batch of events and by beat):
1. claims a batch of pending inbox events under a lease (pushplan.db.trigger_inbox);
2. for every live triggered campaign, cancels its planned sends whose user did an `unless` event
   after the firing and before the send (`condition_met`);
3. finds its firings: `on` events (of `on_campaign`, if set) inside the campaign's window whose
   properties pass `where` and whose user is in the campaign's audience, new to the store (one
   firing per campaign, user and source event, so a replay fires nothing again);
4. applies the trigger's limits in event order: a user fired within `once_per_user_days` is skipped
   `frequency`; past `max_sends` or `max_users`, `budget_spent`;
5. plans the rest with the same planner as any campaign (holdout, exploration, channel, variant,
   the best slot in the firing's own window `delay` after the event, quiet hours, caps, reasons),
   firings of the same second together; a send whose user already did an `unless` event is
   cancelled before it is stored;
6. stores the items and marks the events processed, fenced by the claim.
The due-scan then sends each item when its slot comes; nothing waits in the broker.

The holdout is drawn by (campaign, user), as for every campaign: a user's firings all fall in the
same arm, so a held-out user is never sent by a later firing and the comparison stays clean.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import numpy as np
import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, Field

from features.audiences import compile_for, select
from pushplan.audience_rules import evaluate, parse
from pushplan.db.plan_items import HOLDING
from pushplan.db.schema import CampaignRow, PlanItemRow, TriggerInboxRow
from pushplan.db.store import PlanStore
from pushplan.db.trigger_inbox import INBOX_COLUMNS, LIVE_TRIGGER
from pushplan.domain import Campaign, Decision, DispatchState, ItemState, Reason, SendWindow
from pushplan.settings import Settings
from serving.capped_plan import plan_users
from serving.planner import holdout_draw, plan_ids
from serving.scoring import ModelSet, models_of


@dataclass
class FiringSummary:
    """What one run did: events claimed, and per campaign its firings by outcome."""

    events: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, campaign_id: str, outcome: str, count: int = 1) -> None:
        if count:
            self.outcomes[campaign_id][outcome] = self.outcomes[campaign_id].get(outcome, 0) + count


def fire_triggers(
    store: PlanStore,
    settings: Settings,
    *,
    models: ModelSet | None = None,
    now: datetime | None = None,
    limit: int | None = None,
) -> FiringSummary:
    """Claim pending inbox events and make the firings' plan items; see the module docstring."""
    moment = now or datetime.now(UTC)
    claim, events = _claim(store, settings, limit or settings.trigger_batch)
    summary = FiringSummary(events=len(events))
    if events.empty:
        return summary
    campaigns = live_triggered(store)
    for campaign in campaigns:
        _cancel_on_unless(store, campaign, events, summary)
        firings = _firings(store, settings, campaign, events, moment)
        if firings.empty:
            continue
        models = models or models_of(settings)
        items, displaced = _plan_firings(store, settings, models, campaign, firings, moment)
        items = _cancelled_if_done(store, campaign, items)
        store.save_items(items, displaced)
        for outcome, count in _outcomes(items).items():
            summary.add(campaign.campaign_id, outcome, count)
    _processed(store, claim, events["event_id"].tolist(), moment)
    return summary


def live_triggered(store: PlanStore) -> list[Campaign]:
    """Triggered campaigns that listen now: running, or paused (their firings wait to be sent)."""
    with store.session() as session:
        rows = session.scalars(sa.select(CampaignRow).where(LIVE_TRIGGER)).all()
        return [Campaign.stored(row.spec) for row in rows]


def _claim(store: PlanStore, settings: Settings, limit: int) -> tuple[str, pd.DataFrame]:
    """Pending events (never claimed, or whose claim's lease lapsed) under a fresh claim, oldest first.

    The UPDATE repeats the pending condition and the rows are read back by the claim, as the due-scan
    does: SQLite has no SKIP LOCKED, so two tasks may select the same ids, and only the first to
    write takes them."""
    now = datetime.now(UTC)
    claim = str(uuid.uuid4())
    pending = sa.and_(
        TriggerInboxRow.processed_at.is_(None),
        sa.or_(TriggerInboxRow.lease_until.is_(None), TriggerInboxRow.lease_until < now),
    )
    with store.session() as session:
        ids = session.scalars(
            sa.select(TriggerInboxRow.event_id)
            .where(pending)
            .order_by(TriggerInboxRow.timestamp, TriggerInboxRow.event_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if ids:
            session.execute(
                sa.update(TriggerInboxRow)
                .where(TriggerInboxRow.event_id.in_(ids), pending)
                .values(claim=claim, lease_until=now + timedelta(seconds=settings.dispatch_lease_seconds))
            )
        rows = session.execute(
            sa.select(*(getattr(TriggerInboxRow, c) for c in INBOX_COLUMNS))
            .where(TriggerInboxRow.claim == claim)
            .order_by(TriggerInboxRow.timestamp, TriggerInboxRow.event_id)
        ).all()
    events = pd.DataFrame(rows, columns=list(INBOX_COLUMNS))
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    return claim, events


def _processed(store: PlanStore, claim: str, event_ids: list[str], now: datetime) -> None:
    with store.session() as session:
        session.execute(
            sa.update(TriggerInboxRow)
            .where(TriggerInboxRow.event_id.in_(event_ids), TriggerInboxRow.claim == claim)
            .values(processed_at=now, lease_until=None)
        )


def _cancel_on_unless(
    store: PlanStore, campaign: Campaign, events: pd.DataFrame, summary: FiringSummary
) -> None:
    """Planned sends of this campaign whose user did an `unless` event after the firing and before
    the send become `cancelled` / `condition_met`; queued or sent ones are dispatch's already."""
    trigger = campaign.trigger
    assert trigger is not None
    done = events[events["event_type"].isin(trigger.unless)]
    if done.empty:
        return
    cancelled = 0
    with store.session() as session:
        for user_id, event_type, at in done[["user_id", "event_type", "timestamp"]].itertuples(index=False):
            result = cast(
                sa.CursorResult[Any],
                session.execute(
                    sa.update(PlanItemRow)
                    .where(
                        PlanItemRow.campaign_id == campaign.campaign_id,
                        PlanItemRow.user_id == user_id,
                        PlanItemRow.decision == Decision.send.value,
                        PlanItemRow.state == ItemState.planned.value,
                        # After the firing: `on` and `unless` may name the same event (a follow-up
                        # to a purchase unless another purchase), and the firing's own is not "another".
                        PlanItemRow.fired_at < at.to_pydatetime(),
                        PlanItemRow.send_at > at.to_pydatetime(),
                    )
                    .values(
                        state=ItemState.cancelled.value,
                        reason=Reason.condition_met.value,
                        detail=f"{event_type} at {at.isoformat()}",
                        updated_at=datetime.now(UTC),
                    )
                ),
            )
            cancelled += int(result.rowcount or 0)
    summary.add(campaign.campaign_id, Reason.condition_met.value, cancelled)


def _firings(
    store: PlanStore, settings: Settings, campaign: Campaign, events: pd.DataFrame, now: datetime
) -> pd.DataFrame:
    """The campaign's new firings among `events`: its `on` events (of `on_campaign`) inside its
    window, whose properties pass `where`, whose user is in its audience, not yet fired."""
    trigger = campaign.trigger
    assert trigger is not None
    start, end = pd.Timestamp(campaign.window.start), pd.Timestamp(campaign.window.end)
    chosen = events[
        (events["event_type"] == trigger.on) & (events["timestamp"] >= start) & (events["timestamp"] < end)
    ]
    if trigger.on_campaign is not None:
        chosen = chosen[chosen["campaign_id"] == trigger.on_campaign]
    if trigger.where is not None and not chosen.empty:
        chosen = chosen[evaluate(parse(trigger.where), _PropertyColumns(chosen["properties"]))]
    if campaign.audience is not None and not chosen.empty:
        rule = compile_for(settings, campaign.audience)
        users = pd.unique(chosen["user_id"]).tolist()
        members = set(select(settings, rule, now, users).frame["user_id"])
        chosen = chosen[chosen["user_id"].isin(members)]
    if chosen.empty:
        return chosen
    with store.session() as session:
        seen = set(
            session.scalars(
                sa.select(PlanItemRow.firing_id).where(
                    PlanItemRow.campaign_id == campaign.campaign_id,
                    PlanItemRow.firing_id.in_(chosen["event_id"].tolist()),
                )
            )
        )
    return chosen[~chosen["event_id"].isin(seen)].reset_index(drop=True)


@dataclass
class _PropertyColumns:
    """`pushplan.audience_rules.Columns` over events' properties (JSON text); a missing key is no value."""

    properties: pd.Series

    def __post_init__(self) -> None:
        self.frame = pd.DataFrame(
            [json.loads(p) if isinstance(p, str) else {} for p in self.properties], dtype=object
        )

    def column(self, name: str) -> pd.Series:
        if name in self.frame:
            return self.frame[name]
        return pd.Series([None] * len(self.properties), dtype=object)

    def did(self, event: str, days: int) -> np.ndarray:  # Trigger refuses `did` in `where`
        raise ValueError("`where` compares the event's properties only")


def _plan_firings(
    store: PlanStore,
    settings: Settings,
    models: ModelSet,
    campaign: Campaign,
    firings: pd.DataFrame,
    now: datetime,
) -> tuple[pd.DataFrame, list[str]]:
    """Apply the trigger's limits in event order, then plan what is left through the planner; the
    items, and other campaigns' planned sends they displaced under the caps."""
    trigger = campaign.trigger
    assert trigger is not None
    limits = _Limits.read(store, campaign, firings["user_id"].unique().tolist())
    in_control = dict(
        zip(
            firings["user_id"],
            holdout_draw(campaign.campaign_id, firings["user_id"].to_numpy()) < campaign.holdout_fraction,
            strict=True,
        )
    )
    skipped: list[dict[str, Any]] = []
    kept: list[int] = []
    for position, (user_id, at) in enumerate(firings[["user_id", "timestamp"]].itertuples(index=False)):
        reason = limits.refusal(trigger, user_id, at)
        if reason is None:
            limits.count(user_id, at, sends=not in_control[user_id])
            kept.append(position)
        else:
            skipped.append(_skip_item(campaign, firings.iloc[position], reason))
    parts = [pd.DataFrame(skipped)] if skipped else []
    displaced: list[str] = []
    planned = firings.iloc[kept]
    # Firings whose windows open in the same second are planned together (one feature read, one
    # planner pass: at a thousand events a second, one pass per second); a user twice in one second
    # goes in separate passes, one item per firing. A window opens no earlier than the delay says.
    opens = (planned["timestamp"] + trigger.delay).dt.ceil("s")
    planned_at = pd.Timestamp(now).ceil("s")
    for opening, group in planned.groupby(opens, sort=True):
        closing = opening + trigger.send_within
        # A window that opened before the firing was planned (a delay of 0, a task running late)
        # opens now: its first slot is now itself, not the next slot of the grid, which a short
        # window may not even hold.
        window = SendWindow(
            start=(planned_at if opening < planned_at < closing else opening).to_pydatetime(),
            end=closing.to_pydatetime(),
        )
        # The campaign as the planner sees one firing: its window, and no trigger (a campaign with
        # one is refused by the plan path, which only this task may plan through).
        fired = campaign.model_copy(update={"window": window, "trigger": None})
        repeat = group.groupby("user_id").cumcount()
        for _, part in group.groupby(repeat):
            seed = zlib.crc32(f"{opening.isoformat()}".encode())
            arbitrated = plan_users(
                store,
                settings,
                models,
                fired,
                part["user_id"].tolist(),
                now,
                seed=seed,
                save=False,
                members_only=True,
            )
            parts.append(_as_firings(arbitrated.items, campaign, part, window.end))
            displaced += arbitrated.displaced
    return pd.concat(parts, ignore_index=True), displaced


def _as_firings(
    items: pd.DataFrame, campaign: Campaign, part: pd.DataFrame, window_end: datetime
) -> pd.DataFrame:
    """The planner's items (one per user of `part`, in order) as items of these firings."""
    items = items.reset_index(drop=True).copy()
    items["firing_id"] = part["event_id"].to_numpy()
    items["fired_at"] = part["timestamp"].to_numpy()
    items["window_end"] = pd.Timestamp(window_end)
    items["plan_id"] = plan_ids(campaign.campaign_id, items["user_id"], items["firing_id"])
    return items


def _skip_item(campaign: Campaign, firing: pd.Series, reason: Reason) -> dict[str, Any]:
    return {
        "plan_id": plan_ids(campaign.campaign_id, [firing["user_id"]], [firing["event_id"]])[0],
        "campaign_id": campaign.campaign_id,
        "user_id": firing["user_id"],
        "decision": Decision.skip.value,
        "reason": reason.value,
        "state": ItemState.suppressed.value,
        "firing_id": firing["event_id"],
        "fired_at": firing["timestamp"],
        "model_versions": {},
    }


@dataclass
class _Limits:
    """A trigger's limits as stored, counted forward as this run's firings are decided."""

    last_fired: dict[str, pd.Timestamp]
    sends: int
    users: set[str]

    @classmethod
    def read(cls, store: PlanStore, campaign: Campaign, user_ids: list[str]) -> _Limits:
        counted = (Reason.frequency.value, Reason.budget_spent.value)
        with store.session() as session:
            last = session.execute(
                sa.select(PlanItemRow.user_id, sa.func.max(PlanItemRow.fired_at))
                .where(
                    PlanItemRow.campaign_id == campaign.campaign_id,
                    PlanItemRow.user_id.in_(user_ids),
                    sa.or_(PlanItemRow.reason.is_(None), PlanItemRow.reason.not_in(counted)),
                )
                .group_by(PlanItemRow.user_id)
            ).all()
            sent = session.execute(
                sa.select(PlanItemRow.user_id).where(
                    PlanItemRow.campaign_id == campaign.campaign_id,
                    PlanItemRow.decision == Decision.send.value,
                    PlanItemRow.state.in_(HOLDING),
                )
            ).all()
        return cls(
            {user: pd.to_datetime(at, utc=True) for user, at in last if at is not None},
            len(sent),
            {user for (user,) in sent},
        )

    def refusal(self, trigger: Any, user_id: str, at: pd.Timestamp) -> Reason | None:
        previous = self.last_fired.get(user_id)
        if (
            trigger.once_per_user_days is not None
            and previous is not None
            and at - previous < pd.Timedelta(days=trigger.once_per_user_days)
        ):
            return Reason.frequency
        if trigger.max_sends is not None and self.sends >= trigger.max_sends:
            return Reason.budget_spent
        if (
            trigger.max_users is not None
            and user_id not in self.users
            and len(self.users) >= trigger.max_users
        ):
            return Reason.budget_spent
        return None

    def count(self, user_id: str, at: pd.Timestamp, *, sends: bool) -> None:
        self.last_fired[user_id] = at
        if sends:  # a held-out firing sends nothing and spends no budget
            self.sends += 1
            self.users.add(user_id)


def _cancelled_if_done(store: PlanStore, campaign: Campaign, items: pd.DataFrame) -> pd.DataFrame:
    """Sends whose user did an `unless` event after the firing, already in the inbox when the firing
    is planned (events out of order, or a firing task running late), are stored cancelled."""
    trigger = campaign.trigger
    assert trigger is not None
    if items.empty or not trigger.unless:
        return items
    sends = items[items["decision"] == Decision.send.value]
    if sends.empty:
        return items
    with store.session() as session:
        done = session.execute(
            sa.select(TriggerInboxRow.user_id, TriggerInboxRow.event_type, TriggerInboxRow.timestamp).where(
                TriggerInboxRow.user_id.in_(sends["user_id"].unique().tolist()),
                TriggerInboxRow.event_type.in_(trigger.unless),
                TriggerInboxRow.timestamp > pd.Timestamp(sends["fired_at"].min()).to_pydatetime(),
            )
        ).all()
    if not done:
        return items
    after = pd.DataFrame(done, columns=["user_id", "event_type", "at"])
    after["at"] = pd.to_datetime(after["at"], utc=True)
    items = items.copy()
    for index, row in sends.iterrows():
        mine = after[
            (after["user_id"] == row["user_id"])
            & (after["at"] > pd.Timestamp(row["fired_at"]))
            & (after["at"] < pd.Timestamp(row["send_at"]))
        ]
        if not mine.empty:
            first = mine.sort_values("at").iloc[0]
            items.loc[index, ["state", "reason", "detail"]] = [
                ItemState.cancelled.value,
                Reason.condition_met.value,
                f"{first['event_type']} at {first['at'].isoformat()}",
            ]
    return items


def _outcome(decision: str, reason: object) -> str:
    """What became of a firing: send (explored or not), holdout, or why it does not send."""
    return reason if isinstance(reason, str) and reason != Reason.exploration.value else decision


def _outcomes(items: pd.DataFrame) -> dict[str, int]:
    """Items by what became of their firing (`_outcome`)."""
    return dict(Counter(map(_outcome, items["decision"], items["reason"])))


class TriggerState(StrEnum):
    waiting = "waiting"  # not started (dispatch idle), or its window has not opened
    live = "live"  # firing
    paused = "paused"  # firing; its sends wait for resume
    budget_spent = "budget_spent"  # max_sends or max_users reached: later firings are skipped
    ended = "ended"  # its window is over, or the campaign was cancelled


class TriggerStatus(BaseModel):
    """A triggered campaign's state, its firings by outcome, and its budget."""

    campaign_id: str
    state: TriggerState
    why: str = Field(description="The state in words.")
    firings: int = Field(description="Firings stored: one per (user, source event).")
    by_outcome: dict[str, int] = Field(
        description="send, holdout, or why a firing does not send (frequency, budget_spent, "
        "condition_met, quiet_hours, no_window, opted_out, capped, …)."
    )
    sends: int = Field(description="Firings planned to send, sent or on their way (not cancelled).")
    users_sent: int
    max_sends: int | None
    max_users: int | None
    pending_events: int = Field(description="Inbox events not yet processed by the firing task.")


def trigger_status(store: PlanStore, campaign: Campaign, now: datetime | None = None) -> TriggerStatus:
    """Where the trigger stands: a spent budget says so, and so does an ended window."""
    trigger = campaign.trigger
    if trigger is None:
        raise ValueError(f"campaign {campaign.campaign_id!r} has no trigger")
    moment = now or datetime.now(UTC)
    with store.session() as session:
        dispatch = session.scalar(
            sa.select(CampaignRow.dispatch_state).where(CampaignRow.campaign_id == campaign.campaign_id)
        )
        rows = session.execute(
            sa.select(PlanItemRow.decision, PlanItemRow.reason, PlanItemRow.state, sa.func.count())
            .where(PlanItemRow.campaign_id == campaign.campaign_id)
            .group_by(PlanItemRow.decision, PlanItemRow.reason, PlanItemRow.state)
        ).all()
        users_sent = session.scalar(
            sa.select(sa.func.count(sa.distinct(PlanItemRow.user_id))).where(
                PlanItemRow.campaign_id == campaign.campaign_id,
                PlanItemRow.decision == Decision.send.value,
                PlanItemRow.state.in_(HOLDING),
            )
        )
        pending = session.scalar(
            sa.select(sa.func.count()).where(
                TriggerInboxRow.processed_at.is_(None), TriggerInboxRow.event_type == trigger.on
            )
        )
    by_outcome: dict[str, int] = defaultdict(int)
    sends = 0
    for decision, reason, state, count in rows:
        by_outcome[_outcome(decision, reason)] += int(count)
        if decision == Decision.send.value and state in HOLDING:
            sends += int(count)
    users = int(users_sent or 0)
    spent = None
    if trigger.max_sends is not None and sends >= trigger.max_sends:
        spent = f"{sends:,} of {trigger.max_sends:,} sends"
    elif trigger.max_users is not None and users >= trigger.max_users:
        spent = f"{users:,} of {trigger.max_users:,} users"
    if dispatch == DispatchState.cancelled.value:
        state, why = TriggerState.ended, "the campaign was cancelled"
    elif moment >= campaign.window.end:
        state, why = TriggerState.ended, "its window is over"
    elif spent is not None:
        state, why = TriggerState.budget_spent, f"{spent}: later firings are skipped budget_spent"
    elif dispatch == DispatchState.idle.value:
        state, why = TriggerState.waiting, "not started: dispatch it to begin firing"
    elif moment < campaign.window.start:
        state, why = TriggerState.waiting, f"fires from {campaign.window.start.isoformat()}"
    elif dispatch == DispatchState.paused.value:
        state, why = TriggerState.paused, "firing; its sends wait until resumed"
    else:
        state, why = TriggerState.live, f"firing on {trigger.on} until {campaign.window.end.isoformat()}"
    return TriggerStatus(
        campaign_id=campaign.campaign_id,
        state=state,
        why=why,
        firings=sum(by_outcome.values()),
        by_outcome=dict(by_outcome),
        sends=sends,
        users_sent=users,
        max_sends=trigger.max_sends,
        max_users=trigger.max_users,
        pending_events=int(pending or 0),
    )
