"""Events back from campaign systems (validated like `events import`, stored whole or not at all), and
channel providers' feedback (bounces, unsubscribes, complaints) for the suppression list."""

from __future__ import annotations

import json
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from dispatch.celery_app import enqueue
from dispatch.control import mark_opened
from dispatch.ledger import OptChange
from dispatch.suppression import suppress, suppress_from_events
from features.event_store import EventStore, ImportRefused, ImportResult
from features.store import feature_store, push_events
from pushplan.db.schema import CampaignRow, PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.db.trigger_inbox import note_events
from pushplan.domain import Channel, EventType
from pushplan.settings import Settings
from serving.deps import BODY_RESPONSES, EventsRole, PlanStoreDep, unprocessable
from serving.keys import Caller

router = APIRouter(tags=["events"])


class EventsBatch(BaseModel):
    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=50_000,
        description="Rows of the events contract (docs/event-store.md): built-in event types or the "
        "app's own names, with an optional flat `properties` object.",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "events": [
                        {
                            "event_id": "e-0001",
                            "user_id": "u0000042",
                            "event_type": "push_clicked",
                            "timestamp": "2026-10-06T09:00:00Z",
                            "campaign_id": "black-friday",
                            "variant_id": "a",
                            "channel": "push",
                        },
                        {
                            "event_id": "e-0002",
                            "user_id": "u0000042",
                            "event_type": "coupon_claimed",
                            "timestamp": "2026-10-06T09:05:00Z",
                            "properties": {"coupon": "WELCOME10", "amount": 10},
                        },
                    ]
                }
            ]
        }
    }


class EventsAccepted(BaseModel):
    received: int
    stored: int
    already_stored: int


# A refused batch is a 422 whose `detail` is the import's message (row, column, reason), a string.
REFUSED = unprocessable("Not a batch, or a row breaks the events contract (nothing was stored).")


@router.post("/v1/events", response_model=EventsAccepted, responses=BODY_RESPONSES | REFUSED)
def post_events(
    body: EventsBatch, request: Request, store: PlanStoreDep, caller: EventsRole
) -> EventsAccepted:
    """Store a batch of events (idempotent on event_id), fold sends and clicks into online fatigue, note
    opens on their plan items (a campaign's fallback re-sends only what was not opened), and put
    `opt_out` / `unsubscribed` users on the suppression list (`opt_in` lifts it) that every send checks.
    An event naming another team's campaign is refused (an `events` key speaks for its own team)."""
    settings = request.app.state.settings
    frame = pd.DataFrame(body.events).astype(object).where(lambda f: f.notna(), None)
    _own_campaigns_only(store, caller, frame)
    result = _import(settings, frame)
    if {"event_type", "user_id", "timestamp"} <= set(frame.columns):
        # First: the one a user is owed. A failure after it is repaired by posting the batch again.
        suppress_from_events(settings, frame)
        push_events(
            feature_store(settings),
            settings,
            frame.assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")),
        )
        mark_opened(store, frame)
        # Live triggers' events to the inbox, and the firing task started: firings are planned by a
        # worker, never in this request (beat runs the task too, should this message be lost).
        if note_events(store, frame):
            enqueue(settings, "serving.tasks.fire_triggers_task")
    return EventsAccepted(received=result.rows, stored=result.stored, already_stored=result.already_stored)


def _own_campaigns_only(store: PlanStore, caller: Caller, frame: pd.DataFrame) -> None:
    """Refuse the batch when a row names a campaign of another team: its opens would mark that
    team's items, its sends and clicks would feed that team's report."""
    if caller.is_admin or "campaign_id" not in frame:
        return
    named = frame["campaign_id"].dropna().astype(str)
    with store.session() as session:
        teams = dict(
            session.execute(
                sa.select(CampaignRow.campaign_id, CampaignRow.team).where(
                    CampaignRow.campaign_id.in_(named.unique().tolist())
                )
            ).all()
        )
    for row, campaign_id in named.items():
        if teams.get(campaign_id, caller.team) != caller.team:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"events row {row}: campaign_id {campaign_id!r} is not a campaign of team "
                f"{caller.team!r}; nothing was stored",
            )


def _import(settings: Settings, frame: pd.DataFrame) -> ImportResult:
    """The same path as a file import, so the same validation, messages and whole-or-nothing rule."""
    if "properties" in frame:  # a JSON object in the request: stored as its JSON text, checked as such
        frame = frame.assign(properties=frame["properties"].map(_json_text))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "events.parquet"
        frame.astype({c: "string" for c in frame.columns}).to_parquet(path, index=False)
        try:
            return EventStore(settings).import_file(path)
        except ImportRefused as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY, exc.detail.replace(str(path), "events")
            ) from None


def _json_text(value: object) -> object:
    return json.dumps(value) if isinstance(value, dict | list) else value


class FeedbackKind(StrEnum):
    bounce = "bounce"  # the address is dead: that channel is suppressed, no event
    unsubscribe = "unsubscribe"  # the user said stop at the provider (a link, STOP by SMS)
    complaint = "complaint"  # marked as spam: treated as an unsubscribe


class ChannelFeedback(BaseModel):
    """One provider report about a send or a user: by `send_id` (the Idempotency-Key pushplan sent),
    or by `user_id` when the provider reports on an address rather than a message."""

    kind: FeedbackKind
    send_id: str | None = Field(default=None, max_length=64)
    user_id: str | None = Field(default=None, max_length=200)
    at: AwareDatetime = Field(description="When the provider saw it (ISO 8601 with an offset).")

    @model_validator(mode="after")
    def _someone(self) -> ChannelFeedback:
        if not (self.send_id or self.user_id):
            raise ValueError("give send_id or user_id")
        return self


class FeedbackBatch(BaseModel):
    feedback: list[ChannelFeedback] = Field(min_length=1, max_length=10_000)


class FeedbackAccepted(BaseModel):
    received: int
    suppressed: int = Field(description="Suppression-list entries written (one per report).")
    events_stored: int = Field(description="`unsubscribed` events new to the event store.")


@router.post(
    "/v1/channels/{channel}/feedback",
    response_model=FeedbackAccepted,
    responses=BODY_RESPONSES | REFUSED,
)
def post_channel_feedback(
    channel: Channel, body: FeedbackBatch, request: Request, store: PlanStoreDep, caller: EventsRole
) -> FeedbackAccepted:
    """A channel provider's bounces, unsubscribes and complaints: each puts the user on the suppression
    list for this channel at once (checked at every later send); unsubscribes and complaints are also
    stored as `unsubscribed` events (with the campaign, when a send_id names it), like any event."""
    settings = request.app.state.settings
    sends = _sends(store, [f.send_id for f in body.feedback if f.send_id], caller)
    changes: list[OptChange] = []
    events: list[dict[str, Any]] = []
    for index, report in enumerate(body.feedback):
        user_id, campaign_id = report.user_id, None
        if report.send_id:
            if report.send_id not in sends:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_ENTITY,
                    f"feedback[{index}]: no send {report.send_id!r} (send_id is the Idempotency-Key "
                    "pushplan sent); nothing was stored",
                )
            user_id, campaign_id = sends[report.send_id]
        assert user_id is not None  # the model requires send_id or user_id
        changes.append(OptChange(user_id, channel.value, report.at, opted_out=True))
        if report.kind is not FeedbackKind.bounce:
            events.append(
                {
                    # With the instant: a user may unsubscribe again after opting back in.
                    "event_id": f"feedback/{channel.value}/{report.send_id or user_id}/{report.kind.value}"
                    f"/{report.at.isoformat()}",
                    "user_id": user_id,
                    "event_type": EventType.unsubscribed.value,
                    "timestamp": report.at.isoformat(),
                    "campaign_id": campaign_id,
                    "channel": channel.value,
                }
            )
    stored = _import(settings, pd.DataFrame(events)).stored if events else 0
    suppress(settings, changes)
    return FeedbackAccepted(received=len(body.feedback), suppressed=len(changes), events_stored=stored)


def _sends(store: PlanStore, send_ids: list[str], caller: Caller) -> dict[str, tuple[str, str]]:
    """send_id -> (user, campaign) for the send ids that name a plan item (`<plan_id>[:<step>]`) of
    a campaign the caller's team owns (another team's sends are as unknown as missing ones)."""
    plan_ids = {send_id.split(":", 1)[0]: send_id for send_id in send_ids}
    if not plan_ids:
        return {}
    with store.session() as session:
        query = (
            sa.select(PlanItemRow.plan_id, PlanItemRow.user_id, PlanItemRow.campaign_id)
            .join(CampaignRow, CampaignRow.campaign_id == PlanItemRow.campaign_id)
            .where(PlanItemRow.plan_id.in_(list(plan_ids)))
        )
        if not caller.is_admin:
            query = query.where(CampaignRow.team == caller.team)
        rows = session.execute(query).all()
    found = {plan_id: (user, campaign) for plan_id, user, campaign in rows}
    return {
        send_id: found[send_id.split(":", 1)[0]] for send_id in send_ids if send_id.split(":", 1)[0] in found
    }
