"""Audiences: preview who a rule selects before a campaign uses it, and list the fields rules may use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from features.audiences import preview, schema
from pushplan.audience_rules import MAX_RULE_CHARS, RuleError, describe
from pushplan.domain import Channel, Instant
from serving.deps import BODY_RESPONSES, Problem, ReaderRole, not_audited, unprocessable

router = APIRouter(prefix="/v1/audiences", tags=["audiences"])

BAD_RULE = unprocessable("The rule is malformed, or names an unknown field or value.")
NO_USERS: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "No users have been imported yet."}
}


class PreviewRequest(BaseModel):
    rule: str = Field(
        max_length=MAX_RULE_CHARS,
        examples=['lifecycle_stage in ("active", "sleeping") and did purchase in last 30 days'],
    )
    channels: list[Channel] = Field(
        default=[Channel.push], min_length=1, description="Count who is reachable on any of these."
    )
    sample: int = Field(default=10, ge=0, le=100, strict=True, description="How many users to show.")
    now: Instant | None = Field(default=None, description="Evaluate as of this instant (default: now).")


class Preview(BaseModel):
    rule: str
    fields: list[str] = Field(description="The fields the rule reads.")
    as_of: datetime | None = Field(description="The feature snapshot the labels and features are from.")
    users: int = Field(description="Users known (the users file).")
    count: int = Field(description="Users the rule selects.")
    reachable: dict[str, int] = Field(description="Of them, opted in per channel, and on any (`any`).")
    by_label: dict[str, dict[str, int]] = Field(description="Of them, by lifecycle stage and RFM segment.")
    sample: list[dict[str, Any]]


@router.post("/preview", response_model=Preview, responses=BODY_RESPONSES | BAD_RULE | NO_USERS)
def preview_audience(body: PreviewRequest, request: Request, _: ReaderRole) -> Preview:
    """Who the rule selects now: the count, the count reachable on the channels, a breakdown by
    label and a sample of users; a bad rule answers 422 naming the field and position."""
    not_audited(request)  # a question, not a change
    settings = request.app.state.settings
    moment = body.now or datetime.now(UTC)
    try:
        return Preview(**preview(settings, body.rule, moment, body.channels, body.sample))
    except RuleError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"rule: {exc}") from None
    except ValueError as exc:  # no users imported yet
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.get("/fields")
def audience_fields(request: Request, _: ReaderRole) -> list[dict[str, Any]]:
    """The fields a rule may use (built-in labels and features, the users file's own attributes)."""
    return describe(schema(request.app.state.settings))
