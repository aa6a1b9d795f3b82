"""`pushplan campaign dispatch|pause|resume|cancel|status`: control a campaign's sends."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from cli.output import err, out
from pushplan.settings import get_settings

app = typer.Typer(help="Start, pause, resume or cancel a campaign's sends.", no_args_is_help=True)


def _control(campaign_id: str, action: str) -> None:
    from dispatch.control import TransitionRefused, control
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from pushplan.domain import NoSuchCampaign

    settings = get_settings()
    migrate(settings)
    try:
        state, cancelled = control(PlanStore(settings), campaign_id, action)
    except (NoSuchCampaign, TransitionRefused) as exc:
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(code=2) from None
    extra = f"; {cancelled:,} items cancelled" if action == "cancel" else ""
    out.print(f"campaign {campaign_id!r} is {state.value}{extra}", highlight=False)
    campaign_status(campaign_id)


@app.command("dispatch")
def campaign_dispatch(campaign_id: str) -> None:
    """Start sending: planned items go out as they fall due (needs `pushplan worker` and `pushplan beat`)."""
    _control(campaign_id, "dispatch")


@app.command("pause")
def campaign_pause(campaign_id: str) -> None:
    """Hold the campaign's sends until resumed."""
    _control(campaign_id, "pause")


@app.command("resume")
def campaign_resume(campaign_id: str) -> None:
    """Go on sending after a pause."""
    _control(campaign_id, "resume")


@app.command("cancel")
def campaign_cancel(campaign_id: str) -> None:
    """Stop for good: items not yet handed to a channel are cancelled and never sent."""
    _control(campaign_id, "cancel")


@app.command("status")
def campaign_status(campaign_id: str) -> None:
    """The campaign's items by decision, state and reason."""
    from dispatch.control import item_states
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore

    settings = get_settings()
    migrate(settings)
    counts = item_states(PlanStore(settings), campaign_id)
    print_dispatch_counts(counts, f"{campaign_id}: items by state")


def print_dispatch_counts(counts: Any, title: str) -> None:
    table = Table(title=title)
    for column in ("decision", "state", "reason", "items"):
        table.add_column(column, justify="right" if column == "items" else "left")
    for row in counts.sort_values(["decision", "state", "reason"], na_position="first").itertuples():
        table.add_row(row.decision, row.state, row.reason or "", f"{row.items:,}")
    out.print(table)
