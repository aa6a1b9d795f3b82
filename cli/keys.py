"""`pushplan keys create`: API keys for the HTTP service."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from pushplan.settings import get_settings

app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)


class KeyRole(StrEnum):
    campaign = "campaign"
    operator = "operator"
    admin = "admin"


@app.command("create")
def keys_create(role: Annotated[KeyRole, typer.Option(help="campaign, operator or admin.")]) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from serving.keys import Role, create_key

    settings = get_settings()
    migrate(settings)
    typer.echo(create_key(PlanStore(settings), Role(role.value)))
