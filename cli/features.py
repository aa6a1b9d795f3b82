"""`pushplan features build|apply|materialize|get`: the feature tables and the Feast repo."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cli.output import err, out, plain
from pushplan.settings import get_settings

app = typer.Typer(help="Build, register, materialize and read features (Feast).", no_args_is_help=True)


@app.command("build")
def features_build() -> None:
    """Compute the daily feature tables from the event store (point-in-time correct snapshots)."""
    from features.store import write_defaults
    from features.tables import build_feature_tables

    settings = get_settings()
    try:
        summary = build_feature_tables(settings, progress=True)
    except ValueError as exc:
        err.print(f"[red]cannot build features[/]: {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    write_defaults(settings)
    out.print(
        f"built {len(summary.tables)} feature tables: {summary.rows:,} snapshots of {summary.users:,} users "
        f"over {summary.days} days ({summary.first_snapshot:%Y-%m-%d} … {summary.last_snapshot:%Y-%m-%d})",
        highlight=False,
        soft_wrap=True,
    )


@app.command("apply")
def features_apply() -> None:
    """Register the feature repo (entity, sources, views, on-demand view, services) with Feast."""
    from features.store import apply, feature_store

    settings = get_settings()
    names = apply(feature_store(settings), settings)
    out.print(
        f"applied {len(names)} Feast objects: {', '.join(n for n in names if n)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("materialize")
def features_materialize() -> None:
    """Load the newest snapshots into the online store (SQLite or Redis), incrementally."""
    import contextlib
    import io

    from features.store import feature_store, materialize

    settings = get_settings()
    try:
        # Feast prints its own account of the run with print(), in colour codes even into a log file;
        # the line below says what was materialized, so Feast's copy is dropped.
        with contextlib.redirect_stdout(io.StringIO()):
            start, end = materialize(feature_store(settings), settings)
    except FileNotFoundError as exc:
        err.print(f"[red]cannot materialize[/]: {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    out.print(
        f"materialized snapshots from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", highlight=False
    )


@app.command("get")
def features_get(
    user_id: Annotated[str, typer.Argument(help="The user whose online features to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    hour: Annotated[int, typer.Option(min=0, max=23, help="Candidate local hour for request features.")] = 12,
    tags: Annotated[str, typer.Option(help="Comma-separated variant tags for request features.")] = "",
) -> None:
    """Show a user's online features, by feature service (cold-start users show the defaults)."""
    from datetime import UTC, datetime, timedelta

    from feast.errors import FeatureServiceNotFoundException

    from features.store import SERVICES, feature_store, online_features

    settings = get_settings()
    store = feature_store(settings)
    try:
        store.get_feature_service(SERVICES[0])
    except FeatureServiceNotFoundException:
        err.print(
            "[red]no feature services registered[/]: run `pushplan features apply` first", highlight=False
        )
        raise typer.Exit(code=1) from None
    now = datetime.now(UTC)
    request = {
        "request_time": now,
        "candidate_local_hour": hour,
        "window_start": now,
        "window_end": now + timedelta(days=1),
        "variant_tags": tags,
    }
    result = {}
    for service in SERVICES:
        row = online_features(store, settings, service, [user_id], request).iloc[0].to_dict()
        result[service] = {k: plain(v) for k, v in row.items() if k != "user_id" and k not in request}
    if as_json:
        typer.echo(json.dumps({"user_id": user_id, "services": result}, indent=2))
        return
    for service, values in result.items():
        table = Table(title=service, show_header=False)
        for name, value in values.items():
            table.add_row(name, str(value))
        out.print(table)
