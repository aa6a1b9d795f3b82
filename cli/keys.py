"""`pushplan keys create | list | revoke | rotate`: API keys for the HTTP service. Each change is
written to the audit trail as the command line's (`cli:<login>`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.output import err, out
from pushplan.db.schema import DEFAULT_TEAM
from pushplan.settings import get_settings

if TYPE_CHECKING:  # imported late at run time, to keep --help fast
    from pushplan.db.store import PlanStore

app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)
DURATION = re.compile(r"(\d+)([dhm])")


class KeyRole(StrEnum):
    campaign = "campaign"
    events = "events"
    operator = "operator"
    approver = "approver"
    admin = "admin"


def _store() -> PlanStore:
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore

    settings = get_settings()
    migrate(settings)
    return PlanStore(settings)


def _expiry(text: str | None, now: datetime) -> datetime | None:
    """`90d`, `12h`, `30m` from now, or an ISO 8601 instant (UTC when it has no offset)."""
    if text is None:
        return None
    match = DURATION.fullmatch(text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        return now + timedelta(**{unit: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (90d, 12h, 30m) nor an ISO 8601 instant"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _audit(store: PlanStore, action: str, target: str, **detail: object) -> None:
    from pushplan.db.audit import append, cli_actor

    append(store, cli_actor(), f"cli keys {action}", target=target, outcome="ok", detail=detail or None)


@app.command("create")
def keys_create(
    role: Annotated[KeyRole, typer.Option(help="campaign, events, operator, approver or admin.")],
    team: Annotated[str, typer.Option(help="The team whose campaigns the key acts on.")] = DEFAULT_TEAM,
    name: Annotated[str | None, typer.Option(help="Who holds it, in words.")] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it stops working: 90d, 12h, 30m, or an ISO 8601 instant.")
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from serving.keys import Role, create_key, key_id_of

    store = _store()
    now = datetime.now(UTC)
    try:
        presented = create_key(
            store, Role(role.value), team=team, name=name, expires_at=_expiry(expires, now)
        )
    except ValueError as exc:
        err.print(f"[red]key refused[/]: {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    key_id = key_id_of(presented)
    assert key_id is not None
    _audit(store, "create", key_id, role=role.value, team=team)
    typer.echo(presented)


@app.command("list")
def keys_list(
    team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Every key: role, team, expiry, last use, revocation (never a secret)."""
    from pushplan.db.api_keys import list_keys

    now = datetime.now(UTC)
    rows = [key.shown(now) for key in list_keys(_store(), team=team)]  # as GET /v1/keys shows them
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=datetime.isoformat))
        return
    table = Table(title=f"{len(rows)} API keys")
    for column in ("key_id", "role", "team", "name", "created_at", "expires_at", "last_used_at", "usable"):
        table.add_column(column)
    for row in rows:
        usable = "yes" if row["usable"] else ("revoked" if row["revoked_at"] else "expired")
        table.add_row(*(str(row[c] or "") for c in list(row)[:7]), usable)
    out.print(table)


@app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (pp_<id>_…).")]) -> None:
    """Revoke a key: its next request, in any process, gets 401."""
    from pushplan.db.api_keys import revoke_key

    store = _store()
    revoked = revoke_key(store, key_id, datetime.now(UTC))
    if revoked is None:
        err.print(f"[red]no key {key_id!r}[/]", highlight=False)
        raise typer.Exit(code=2)
    _audit(store, "revoke", key_id)
    out.print(f"key {key_id} ({revoked.role}, team {revoked.team}) is revoked", highlight=False)


@app.command("rotate")
def keys_rotate(key_id: Annotated[str, typer.Argument(help="The key's id (pp_<id>_…).")]) -> None:
    """Print a new secret for the key (same id, role and team); the old one gets 401 at once."""
    from serving.keys import rotate_key

    store = _store()
    presented = rotate_key(store, key_id, datetime.now(UTC))
    if presented is None:
        err.print(f"[red]no usable key {key_id!r} (unknown, revoked or expired)[/]", highlight=False)
        raise typer.Exit(code=2)
    _audit(store, "rotate", key_id)
    typer.echo(presented)
