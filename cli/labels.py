"""`pushplan labels`: operators' custom labels, each a named audience rule kept with its versions."""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer
from rich.table import Table

from cli.output import err, out
from pushplan.settings import Settings, get_settings

app = typer.Typer(help="Custom labels: named rules recomputed with the feature tables.", no_args_is_help=True)

AUTHOR = typer.Option(help="Who defines it (default: the login name).")


def _author(author: str | None) -> str:
    return author or getpass.getuser()


def _audit(settings: Settings, action: str, name: str, author: str, **detail: object) -> None:
    from pushplan.db.audit import append, cli_actor
    from pushplan.db.store import PlanStore

    actor = cli_actor(author)
    append(PlanStore(settings), actor, f"cli labels {action}", target=name, outcome="ok", detail=detail)


@app.command("define")
def labels_define(
    name: Annotated[str, typer.Argument(help="The label's name, e.g. high_value.")],
    rule: Annotated[str, typer.Argument(help="Its rule, e.g. 'monetary_90d > 1000' (docs/audiences.md).")],
    author: Annotated[str | None, AUTHOR] = None,
) -> None:
    """Define a label, or a new version of one; it takes effect at the next `pushplan features build`."""
    from features.audiences import define_label
    from pushplan.db.engine import migrate

    settings = get_settings()
    migrate(settings)
    try:
        stored = define_label(settings, name, rule, _author(author))
    except ValueError as exc:
        err.print(f"[red]label refused[/]: {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    _audit(settings, "define", name, stored.author, rule=rule, version=stored.version)
    out.print(
        f"label {stored.name!r} v{stored.version} by {stored.author}: {stored.rule} "
        "(computed at the next `pushplan features build`)",
        highlight=False,
    )


@app.command("remove")
def labels_remove(
    name: Annotated[str, typer.Argument(help="The label to remove (its history is kept).")],
    author: Annotated[str | None, AUTHOR] = None,
) -> None:
    """Remove a label from the next build on; its versions stay on record."""
    from features.audiences import remove_label
    from pushplan.db.engine import migrate

    settings = get_settings()
    migrate(settings)
    try:
        stored = remove_label(settings, name, _author(author))
    except KeyError as exc:
        err.print(f"[red]{exc.args[0]}[/]", highlight=False)
        raise typer.Exit(code=2) from None
    _audit(settings, "remove", name, stored.author, version=stored.version)
    out.print(f"label {name!r} removed in v{stored.version} by {stored.author}", highlight=False)


@app.command("list")
def labels_list(
    history: Annotated[
        bool, typer.Option("--history", help="Every version, removed labels included.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The custom labels in force (or every version with --history)."""
    from pushplan.db.engine import migrate
    from pushplan.db.labels import label_versions, labels_in_force
    from pushplan.db.store import PlanStore

    settings = get_settings()
    migrate(settings)
    store = PlanStore(settings)
    shown = label_versions(store) if history else labels_in_force(store)
    rows = [
        {
            "name": v.name,
            "version": v.version,
            "rule": v.rule,
            "author": v.author,
            "created_at": v.created_at.isoformat(),
        }
        for v in shown
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="custom labels" + (" (every version)" if history else ""))
    for column in ("name", "version", "rule", "author", "created_at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "(removed)" for c in row))
    out.print(table)
