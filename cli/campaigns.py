"""`pushplan campaign dispatch|pause|resume|cancel|status|trigger|approve|reject`: control a campaign's
sends, see a triggered campaign's firings, and decide on a sensitive one. Each change is written to
the audit trail as the command line's (`cli:<login>`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.output import err, out
from pushplan.settings import get_settings

app = typer.Typer(help="Start, pause, resume or cancel a campaign's sends.", no_args_is_help=True)


def _control(campaign_id: str, action: str) -> None:
    from dispatch.control import TransitionRefused, control
    from pushplan.db.audit import append, cli_actor
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from pushplan.domain import NoSuchCampaign

    settings = get_settings()
    migrate(settings)
    store = PlanStore(settings)
    try:
        state, cancelled = control(store, campaign_id, action)
    except (NoSuchCampaign, TransitionRefused) as exc:
        append(store, cli_actor(), f"cli campaign {action}", target=campaign_id, outcome="refused")
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(code=2) from None
    append(store, cli_actor(), f"cli campaign {action}", target=campaign_id, outcome="ok")
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


@app.command("trigger")
def campaign_trigger(campaign_id: str) -> None:
    """A triggered campaign's state, its firings by outcome and its budget (docs/triggers.md)."""
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from serving.triggers import trigger_status

    settings = get_settings()
    migrate(settings)
    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    if campaign is None or campaign.trigger is None:
        err.print(f"[red]no triggered campaign {campaign_id!r}[/]", highlight=False)
        raise typer.Exit(code=2)
    shown = trigger_status(store, campaign)
    table = Table(title=f"{campaign_id}: trigger {shown.state.value}, {shown.why}", show_header=False)
    table.add_row("firings", f"{shown.firings:,}")
    for outcome, count in sorted(shown.by_outcome.items()):
        table.add_row(f"  {outcome}", f"{count:,}")
    budget = f" of {shown.max_sends:,}" if shown.max_sends is not None else ""
    table.add_row("sends", f"{shown.sends:,}{budget}")
    users = f" of {shown.max_users:,}" if shown.max_users is not None else ""
    table.add_row("users sent", f"{shown.users_sent:,}{users}")
    table.add_row("events waiting", f"{shown.pending_events:,}")
    out.print(table)


def _decide(campaign_id: str, approve: bool, comment: str, by: str | None) -> None:
    from pushplan.approvals import ApprovalRefused
    from pushplan.db.audit import append, cli_actor
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore

    settings = get_settings()
    migrate(settings)
    store = PlanStore(settings)
    actor = cli_actor(by, role="approver")
    verb = "approve" if approve else "reject"
    try:
        meta = store.decide_approval(
            campaign_id, approve=approve, by=actor.actor, comment=comment, now=datetime.now(UTC)
        )
    except ApprovalRefused as exc:
        append(
            store,
            actor,
            f"cli campaign {verb}",
            target=campaign_id,
            outcome="refused",
            detail={"comment": comment},
        )
        err.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(code=2) from None
    if meta is None:
        err.print(f"[red]no campaign {campaign_id!r}[/]", highlight=False)
        raise typer.Exit(code=2)
    append(
        store, actor, f"cli campaign {verb}", target=campaign_id, outcome="ok", detail={"comment": comment}
    )
    out.print(
        f"campaign {campaign_id!r} is {meta.approval.value} by {actor.actor}: {comment}", highlight=False
    )


COMMENT = typer.Option("--comment", "-m", help="Why: kept with the decision and in the audit trail.")
BY = typer.Option(help="Who decides (default: the login name); never the one who wrote the campaign.")


@app.command("approve")
def campaign_approve(
    campaign_id: str, comment: Annotated[str, COMMENT], by: Annotated[str | None, BY] = None
) -> None:
    """Approve a draft (a sensitive campaign) so that it may dispatch."""
    _decide(campaign_id, True, comment, by)


@app.command("reject")
def campaign_reject(
    campaign_id: str, comment: Annotated[str, COMMENT], by: Annotated[str | None, BY] = None
) -> None:
    """Reject a draft, saying why: it cannot dispatch until its spec changes."""
    _decide(campaign_id, False, comment, by)


def print_dispatch_counts(counts: Any, title: str) -> None:
    table = Table(title=title)
    for column in ("decision", "state", "reason", "items"):
        table.add_column(column, justify="right" if column == "items" else "left")
    for row in counts.sort_values(["decision", "state", "reason"], na_position="first").itertuples():
        table.add_row(row.decision, row.state, row.reason or "", f"{row.items:,}")
    out.print(table)
