"""The audit trail: every state-changing call appended as who, what, when, from where and how it
ended. Rows are only ever inserted (PostgreSQL refuses UPDATE and DELETE on the table; nothing in
the API or the CLI offers either)."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from pushplan.db.schema import AuditRow, utc
from pushplan.db.store import PlanStore

MAX_PAGE = 1_000


@dataclass(frozen=True)
class Actor:
    """Who acted: an API key (`key:<id>`, its role and team) or the command line (`cli:<os user>`),
    which has the database's own access and so no team."""

    actor: str
    role: str | None = None
    team: str | None = None
    source: str | None = None


def cli_actor(login: str | None = None, role: str = "admin") -> Actor:
    """The command line as an actor: `cli:<login>` (the OS user's by default)."""
    return Actor(f"cli:{login or getpass.getuser()}", role=role, source="cli")


def append(
    store: PlanStore,
    actor: Actor,
    action: str,
    *,
    target: str | None,
    outcome: str,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    with store.session() as session:
        session.add(
            AuditRow(
                at=at or datetime.now(UTC),
                actor=actor.actor[:200],
                team=actor.team,
                role=actor.role,
                action=action[:100],
                target=None if target is None else target[:300],
                source=None if actor.source is None else actor.source[:200],
                outcome=outcome[:40],
                detail=detail,
            )
        )


def read(
    store: PlanStore,
    *,
    actor: str | None = None,
    team: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Rows oldest first, filtered (action: a substring, e.g. "approve"); `after` is the last audit_id
    of the previous page."""
    query = sa.select(AuditRow).order_by(AuditRow.audit_id).limit(min(limit, MAX_PAGE))
    for column, value in ((AuditRow.actor, actor), (AuditRow.team, team), (AuditRow.target, target)):
        if value is not None:
            query = query.where(column == value)
    if action is not None:
        query = query.where(AuditRow.action.contains(action, autoescape=True))
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if until is not None:
        query = query.where(AuditRow.at < until)
    if after is not None:
        query = query.where(AuditRow.audit_id > after)
    with store.session() as session:
        rows = session.scalars(query).all()
        return [
            {
                "audit_id": row.audit_id,
                "at": utc(row.at),
                "actor": row.actor,
                "team": row.team,
                "role": row.role,
                "action": row.action,
                "target": row.target,
                "source": row.source,
                "outcome": row.outcome,
                "detail": row.detail,
            }
            for row in rows
        ]
