"""The audit trail for admins: who changed what, when, from where, and how it ended. Read only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pushplan.db.audit import MAX_PAGE, read
from pushplan.domain import Instant
from serving.deps import AdminRole, PlanStoreDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEntry(BaseModel):
    audit_id: int
    at: datetime
    actor: str = Field(description="key:<key id>, or cli:<login> for the command line.")
    team: str | None
    role: str | None
    action: str = Field(
        description='The call: "POST /v1/campaigns/{campaign_id}/dispatch", "cli keys revoke".'
    )
    target: str | None = Field(description="What it acted on: a campaign, key, job or channel id.")
    source: str | None = Field(description="The client's address, or `cli`.")
    outcome: str = Field(description="The HTTP status, or the command's result.")
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last.")


@router.get("", response_model=AuditPage)
def get_audit(
    store: PlanStoreDep,
    _: AdminRole,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    team: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=100, description="A part of the action.")] = None,
    target: Annotated[str | None, Query(max_length=300)] = None,
    since: Instant | None = None,
    until: Instant | None = None,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    """The audit trail, oldest first, filtered; every state-changing call made with a valid key is
    here, refused ones included."""
    rows = read(
        store,
        actor=actor,
        team=team,
        action=action,
        target=target,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    entries = [AuditEntry(**row) for row in rows]
    return AuditPage(entries=entries, next_after=entries[-1].audit_id if len(entries) == limit else None)
