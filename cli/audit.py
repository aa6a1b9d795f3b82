"""`pushplan audit`: read the audit trail (every state-changing call: who, what, when, from where)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from cli.output import out
from pushplan.settings import get_settings


def _instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or instant") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def audit(
    actor: Annotated[str | None, typer.Option(help="key:<id> or cli:<login>.")] = None,
    team: Annotated[str | None, typer.Option(help="The acting key's team.")] = None,
    action: Annotated[str | None, typer.Option(help="A part of the action, e.g. approve or keys.")] = None,
    target: Annotated[str | None, typer.Option(help="A campaign, key, job or channel id.")] = None,
    since: Annotated[str | None, typer.Option(help="From this instant (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this instant (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many rows.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The audit trail, oldest first, filtered."""
    from pushplan.db.audit import read
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore

    settings = get_settings()
    migrate(settings)
    rows = read(
        PlanStore(settings),
        actor=actor,
        team=team,
        action=action,
        target=target,
        since=_instant(since),
        until=_instant(until),
        limit=limit,
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"audit trail: {len(rows)} rows")
    for column in ("at", "actor", "team", "action", "target", "source", "outcome"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["at"].isoformat(timespec="seconds"),
            row["actor"],
            row["team"] or "",
            row["action"],
            row["target"] or "",
            row["source"] or "",
            row["outcome"],
        )
    out.print(table)
