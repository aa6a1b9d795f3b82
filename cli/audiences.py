"""`pushplan audience`: preview who a rule selects, export them, and list the fields rules may use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.output import err, out
from cli.plans import parse_now
from pushplan.settings import get_settings

app = typer.Typer(
    help="Audiences: who a rule over labels, features and attributes selects.", no_args_is_help=True
)

RULE = typer.Argument(help='A rule, e.g. \'lifecycle_stage in ("active", "sleeping")\' (docs/audiences.md).')
NOW = typer.Option(help="Evaluate as of this instant (ISO 8601 with offset; default: now).")


def _refused(exc: ValueError) -> typer.Exit:
    err.print(f"[red]rule refused[/]: {exc}", highlight=False)
    return typer.Exit(code=2)


@app.command("preview")
def audience_preview(
    rule: Annotated[str, RULE],
    channel: Annotated[
        list[str] | None, typer.Option(help="Count who is reachable on these channels (default: push).")
    ] = None,
    sample: Annotated[int, typer.Option(min=0, max=100, help="How many users to show.")] = 10,
    now: Annotated[str | None, NOW] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the preview as JSON.")] = False,
) -> None:
    """The count, the count reachable on the channels, a breakdown by label and a sample of users."""
    from features.audiences import preview
    from pushplan.domain import Channel

    try:
        channels = [Channel(c) for c in (channel or ["push"])]
        shown = preview(get_settings(), rule, parse_now(now), channels, sample)
    except ValueError as exc:
        raise _refused(exc) from None
    if as_json:
        typer.echo(json.dumps(shown, indent=2, default=str))
        return
    print_preview(shown)


def print_preview(shown: dict[str, Any]) -> None:
    """A preview as the terminal shows it: counts, then each label's breakdown, then the sample."""
    table = Table(title=f"audience: {shown['rule']}", show_header=False)
    table.add_row("users known", f"{shown['users']:,}")
    table.add_row("selected", f"{shown['count']:,}")
    for channel, count in shown["reachable"].items():
        table.add_row(f"  reachable: {channel}", f"{count:,}")
    table.add_row("features as of", str(shown["as_of"]))
    out.print(table)
    for label, counts in shown["by_label"].items():
        top = max(counts.values(), default=1)
        out.print(label)
        for name, count in counts.items():
            out.print(f"  {name:<16} {'█' * max(1, round(30 * count / top))} {count:,}", highlight=False)
    if shown["sample"]:
        sample = Table(title="sample")
        for column in shown["sample"][0]:
            sample.add_column(column)
        for row in shown["sample"]:
            sample.add_row(*("" if v is None else str(v) for v in row.values()))
        out.print(sample)


@app.command("export")
def audience_export(
    rule: Annotated[str, RULE],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the users (.csv or .parquet).")],
    reachable_on: Annotated[
        str | None,
        typer.Option(help="Keep only users opted in to this channel (push, sms or email)."),
    ] = None,
    now: Annotated[str | None, NOW] = None,
) -> None:
    """Write the users a rule selects, with the users file's columns and their labels: for a channel
    pushplan does not send on (an SMS platform, a call centre)."""
    import pyarrow.parquet as pq

    from features.audiences import BREAKDOWN, compile_for, select
    from pushplan.domain import OPT_IN_OF_CHANNEL, Channel

    settings = get_settings()
    try:
        compiled = compile_for(settings, rule)
        kept = OPT_IN_OF_CHANNEL[Channel(reachable_on)] if reachable_on else None
        attributes = pq.read_schema(settings.users_path).names if settings.users_path.exists() else []
        chosen = select(settings, compiled, parse_now(now), also=[*attributes, *BREAKDOWN]).frame
    except (ValueError, KeyError) as exc:
        raise _refused(ValueError(str(exc))) from None
    if kept is not None:
        chosen = chosen[chosen[kept].fillna(False).astype(bool)]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if out_file.suffix == ".parquet":
        chosen.to_parquet(out_file, index=False)
    else:
        chosen.to_csv(out_file, index=False)
    out.print(f"{len(chosen):,} users → {out_file}")


@app.command("fields")
def audience_fields() -> None:
    """The fields a rule may use: built-in labels and features, and the users file's own columns."""
    from features.audiences import schema
    from pushplan.audience_rules import describe

    table = Table(title="audience fields")
    for column in ("field", "kind", "values", "about"):
        table.add_column(column)
    for row in describe(schema(get_settings())):
        values = ", ".join(row["values"]) if row["values"] else ""  # type: ignore[arg-type]
        table.add_row(str(row["field"]), str(row["kind"]), values, str(row["about"]))
    out.print(table)
