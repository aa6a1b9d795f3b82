"""`pushplan simulate` and `pushplan events import|stats`: data into the event store, and what it holds."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.output import err, out
from features.schema import Kind
from pushplan.settings import Settings, get_settings

app = typer.Typer(help="Import and inspect the event store (users and events).", no_args_is_help=True)


def simulate(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory to write users, events, campaigns and truth/ to.")
    ],
    users: Annotated[int, typer.Option(min=1, help="How many users to simulate.")] = 5_000,
    days: Annotated[int, typer.Option(min=1, help="How many days of history.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 7,
    start: Annotated[str, typer.Option(help="First simulated day (YYYY-MM-DD).")] = "2026-09-01",
) -> None:
    """Simulate users with hidden truth and their history, in the import format."""
    from features.simulator import simulate as run_simulation

    try:
        first_day = date.fromisoformat(start)
    except ValueError as exc:
        raise typer.BadParameter(f"{start!r} is not a YYYY-MM-DD date", param_hint="--start") from exc
    summary = run_simulation(out_dir, users, days, seed, first_day, progress=True)
    table = Table(title=f"simulated into {summary.out}", show_header=False)
    table.add_row("users", f"{summary.users:,} ({summary.cold_start_users:,} cold start)")
    table.add_row("events", f"{summary.events:,}")
    for kind, count in summary.by_type.items():
        table.add_row(f"  {kind}", f"{count:,}")
    table.add_row("time zones", str(summary.time_zones))
    table.add_row("push click rate", f"{summary.click_rate:.2%} of delivered")
    table.add_row("best hour ≠ population's (>2 h)", f"{summary.best_hour_differs_share:.0%} of users")
    out.print(table)


@app.command("import")
def events_import(
    files: Annotated[list[Path], typer.Argument(help="CSV or parquet files of users or events.")],
    kind: Annotated[
        Kind | None, typer.Option(help="users or events; detected from the columns when omitted.")
    ] = None,
) -> None:
    """Validate and store files; a file with a bad row is refused whole, naming row, column and reason."""
    from dispatch.suppression import suppress_from_file
    from features.event_store import EventStore, ImportRefused

    settings = get_settings()
    store = EventStore(settings)
    refused = 0
    for path in files:
        try:
            result = store.import_file(path, kind, progress=True)
        except ImportRefused as exc:
            refused += 1
            err.print(f"[bold red]refused[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            continue
        # Opt-outs and opt-ins reach the send path's suppression list, checked at every send; live
        # triggers' events the trigger inbox (kept even when already stored: a re-import after a
        # crash between the two repairs the inbox, and the inbox ignores what it has).
        suppressed = suppress_from_file(settings, path) if result.kind is Kind.events else 0
        if result.kind is Kind.events:
            _note_for_triggers(settings, path)
        out.print(
            f"{result.path}: {result.rows:,} {result.kind} rows, {result.stored:,} stored, "
            f"{result.already_stored:,} already in the store"
            + (f"; {suppressed:,} opt-outs/opt-ins on the suppression list" if suppressed else ""),
            highlight=False,
            soft_wrap=True,
        )
    if refused:
        raise typer.Exit(code=1)


def _note_for_triggers(settings: Settings, path: Path) -> None:
    from features.event_store import events_in_file
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from pushplan.db.trigger_inbox import INBOX_COLUMNS, listened_events, note_events

    migrate(settings)
    store = PlanStore(settings)
    names = listened_events(store)
    if names and note_events(store, events_in_file(path, INBOX_COLUMNS, names)):
        from serving.tasks import fire_triggers_task

        fire_triggers_task.apply_async()


@app.command("stats")
def events_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Count users and events by type, with the first and last event time."""
    from features.event_store import EventStore

    stats = EventStore(get_settings()).stats()
    if as_json:
        typer.echo(json.dumps(stats.as_dict(), indent=2))
        return
    table = Table(title="event store", show_header=False)
    table.add_row("users", f"{stats.users:,}")
    table.add_row("events", f"{stats.events:,}")
    for kind, count in stats.by_type.items():
        table.add_row(f"  {kind}", f"{count:,}")
    table.add_row("first", str(stats.first))
    table.add_row("last", str(stats.last))
    out.print(table)
