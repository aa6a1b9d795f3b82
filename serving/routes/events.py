"""Events back from campaign systems: validated like `events import`, stored whole or not at all."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from dispatch.control import mark_opened
from features.event_store import EventStore, ImportRefused
from features.store import feature_store, push_events
from serving.deps import BODY_RESPONSES, CampaignRole, PlanStoreDep

router = APIRouter(tags=["events"])


class EventsBatch(BaseModel):
    events: list[dict[str, Any]] = Field(
        min_length=1, max_length=50_000, description="Rows of the events contract."
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
                        }
                    ]
                }
            ]
        }
    }


class EventsAccepted(BaseModel):
    received: int
    stored: int
    already_stored: int


# A refused batch is a 422 whose `detail` is the import's message (row, column, reason), a string;
# a body that is not a batch at all gets FastAPI's usual 422. Both schemas are in the components:
# HTTPValidationError from every route with a body, Problem from the auth responses.
REFUSED = {
    "description": "Not a batch, or a row breaks the events contract (nothing was stored).",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/HTTPValidationError"},
                    {"$ref": "#/components/schemas/Problem"},
                ]
            }
        }
    },
}


@router.post("/v1/events", response_model=EventsAccepted, responses=BODY_RESPONSES | {422: REFUSED})
def post_events(body: EventsBatch, request: Request, store: PlanStoreDep, _: CampaignRole) -> EventsAccepted:
    """Store a batch of events (idempotent on event_id), fold sends and clicks into online fatigue, and
    note opens on their plan items (a campaign's fallback re-sends only what was not opened)."""
    settings = request.app.state.settings
    frame = pd.DataFrame(body.events).astype(object).where(lambda f: f.notna(), None)
    # The same path as a file import, so the same validation, messages and whole-or-nothing rule.
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "events.parquet"
        frame.astype({c: "string" for c in frame.columns}).to_parquet(path, index=False)
        try:
            result = EventStore(settings).import_file(path)
        except ImportRefused as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY, exc.detail.replace(str(path), "events")
            ) from None
    if {"event_type", "user_id", "timestamp"} <= set(frame.columns):
        push_events(
            feature_store(settings),
            settings,
            frame.assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")),
        )
        mark_opened(store, frame)
    return EventsAccepted(received=result.rows, stored=result.stored, already_stored=result.already_stored)
