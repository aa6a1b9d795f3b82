"""The `pushplan` command line: one Typer app whose commands are the entry points people and CI share."""

from __future__ import annotations

import json
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from features.schema import Kind
from pushplan.settings import get_settings

app = typer.Typer(
    name="pushplan",
    help="Self-hosted push personalisation: who gets which message, when, on which channel, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
events_app = typer.Typer(help="Import and inspect the event store (users and events).", no_args_is_help=True)
app.add_typer(events_app, name="events")
features_app = typer.Typer(
    help="Build, register, materialize and read features (Feast).", no_args_is_help=True
)
app.add_typer(features_app, name="features")

out = Console()
err = Console(stderr=True)


@app.callback()
def _configured() -> None:
    """Read the settings before any command, so a bad PUSHPLAN_* variable is one clear line."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        for problem in exc.errors():
            where = "PUSHPLAN_" + "_".join(map(str, problem["loc"])).upper() if problem["loc"] else "settings"
            err.print(f"[red]configuration error[/] ({where}): {problem['msg']}", highlight=False)
        raise typer.Exit(code=2) from None


@app.command()
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


@events_app.command("import")
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
        # Opt-outs and opt-ins reach the send path's suppression list, checked at every send.
        suppressed = suppress_from_file(settings, path) if result.kind is Kind.events else 0
        out.print(
            f"{result.path}: {result.rows:,} {result.kind} rows, {result.stored:,} stored, "
            f"{result.already_stored:,} already in the store"
            + (f"; {suppressed:,} opt-outs/opt-ins on the suppression list" if suppressed else ""),
            highlight=False,
            soft_wrap=True,
        )
    if refused:
        raise typer.Exit(code=1)


@events_app.command("stats")
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


@features_app.command("build")
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


@features_app.command("apply")
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


@features_app.command("materialize")
def features_materialize() -> None:
    """Load the newest snapshots into the online store (SQLite or Redis), incrementally."""
    from features.store import feature_store, materialize

    settings = get_settings()
    try:
        start, end = materialize(feature_store(settings), settings)
    except FileNotFoundError as exc:
        err.print(f"[red]cannot materialize[/]: {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    out.print(
        f"materialized snapshots from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", highlight=False
    )


@features_app.command("get")
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
        result[service] = {k: _plain(v) for k, v in row.items() if k != "user_id" and k not in request}
    if as_json:
        typer.echo(json.dumps({"user_id": user_id, "services": result}, indent=2))
        return
    for service, values in result.items():
        table = Table(title=service, show_header=False)
        for name, value in values.items():
            table.add_row(name, str(value))
        out.print(table)


def _plain(value: object) -> object:
    """JSON-ready: arrays become rounded lists, NaN becomes null."""
    import math

    import numpy as np

    if isinstance(value, np.ndarray | list):
        return [round(float(v), 4) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


class ModelName(StrEnum):
    click = "click"
    send_hour = "send-hour"
    variant = "variant"
    all = "all"


@app.command()
def train(
    model: Annotated[ModelName, typer.Argument(help="Which model to train.")] = ModelName.all,
    tune: Annotated[int, typer.Option("--tune", min=0, help="Optuna trials before the final fit.")] = 0,
    promote: Annotated[bool, typer.Option(help="Make the new versions champions even if they lose.")] = False,
) -> None:
    """Train, evaluate and register models; a new version becomes champion only if it wins."""
    from training.pipeline import train as run_training
    from training.specs import SPECS

    settings = get_settings()
    names = list(SPECS) if model is ModelName.all else [model.value]
    table = Table(title="training")
    for column in ("model", "version", "metric", "new", "champion before", "champion now"):
        table.add_column(column)
    for name in names:
        try:
            result = run_training(SPECS[name], settings, trials=tune, promote=promote)
        except ValueError as exc:
            err.print(f"[red]cannot train {name}[/]: {exc}", highlight=False)
            raise typer.Exit(code=1) from None
        before = "—" if result.champion_value is None else f"{result.champion_value:.4f}"
        table.add_row(
            name,
            str(result.version),
            result.metric,
            f"{result.value:.4f}",
            before,
            f"v{result.version}" if result.promoted else "unchanged",
        )
    out.print(table)


@app.command()
def evaluate(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sim_dir: Annotated[
        Path | None, typer.Option(help="A `pushplan simulate` output with truth/ (default: the demo's).")
    ] = None,
) -> None:
    """Judge the champions on the latest days: metrics, baselines, off-policy values, oracle share."""
    from training.champions import evaluate_champions

    settings = get_settings()
    try:
        result = evaluate_champions(settings, sim_dir or settings.data_dir / "simulation")
    except (LookupError, ValueError) as exc:
        err.print(f"[red]cannot evaluate[/]: {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=_plain))
        return
    _print_headline(result)


def _print_headline(result: dict) -> None:
    click, hour, variant = result["click"], result["send-hour"], result["variant"]
    table = Table(title="champions on the last days", show_header=False)
    table.add_row(
        "click: AUC / log loss / ECE", f"{click['auc']:.3f} / {click['log_loss']:.4f} / {click['ece']:.4f}"
    )
    table.add_row("click: base-rate log loss", f"{click['base_rate_log_loss']:.4f}")
    table.add_row(
        "send hour: top-1 / top-3 hit rate",
        f"{hour['top1_hit_rate']:.1%} / {hour['top3_hit_rate']:.1%}",
    )
    table.add_row(
        "  population best hour / user's most frequent",
        f"{hour['population_best_hour_top3']:.1%} / {hour['user_most_frequent_hour_top3']:.1%} (top-3)",
    )
    policy = variant
    table.add_row(
        "variant: SNIPS model vs random",
        f"{policy['snips_model']:.4f} vs {policy['snips_random']:.4f} ({policy['snips_lift']:+.1%})",
    )
    if "oracle" in result:
        oracle = result["oracle"]
        table.add_row("oracle share (models)", f"{oracle['oracle_share']:.3f}")
        table.add_row(
            "  random / population best hour",
            f"{oracle['random_share']:.3f} / {oracle['population_best_hour_share']:.3f}",
        )
        table.add_row(
            "  gap to 1.0 from time / from variant",
            f"{oracle['gap_from_time']:.3f} / {oracle['gap_from_variant']:.3f}",
        )
    out.print(table)


models_app = typer.Typer(help="The MLflow model registry: versions, aliases, metrics.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each registered model with its versions, aliases and headline metric."""
    from training.specs import SPECS
    from training.tracking import configure, list_models

    client = configure(get_settings())
    models = list_models(client, {spec.registered_name: spec.metric for spec in SPECS.values()})
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in models], indent=2, default=str))
        return
    table = Table(title="registered models")
    for column in ("model", "versions", "aliases", "metric", "champion"):
        table.add_column(column)
    for m in models:
        champion = "—" if m.champion_metric is None else f"{m.champion_metric:.4f}"
        aliases = ", ".join(f"{a}→v{v}" for a, v in m.aliases.items())
        table.add_row(m.name, str(len(m.versions)), aliases, m.headline_metric or "", champion)
    out.print(table)


@app.command("plan")
def plan_command(
    campaign_file: Annotated[Path, typer.Argument(help="The campaign, as JSON (the Campaign contract).")],
    users_file: Annotated[Path, typer.Option("--users", help="CSV or parquet with a user_id column.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the plan items (parquet).")],
    now: Annotated[str | None, typer.Option(help="Plan as of this instant (ISO 8601; default: now).")] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Exploration seed; the same seed gives the same plan.")
    ] = 0,
    online: Annotated[
        bool,
        typer.Option(
            "--online/--offline",
            help="Read features from the online store, or (default) the offline store as of --now.",
        ),
    ] = False,
) -> None:
    """Plan a whole audience offline: features read in bulk, models applied to arrays, items to parquet."""
    from datetime import UTC, datetime

    import pandas as pd
    from pydantic import ValidationError

    from dispatch.plan_store import PlanStore, migrate
    from features.store import feature_store
    from pushplan.domain import Campaign
    from serving.audience import build_audience
    from serving.capped_plan import plan_within_caps
    from serving.models import ModelSet

    settings = get_settings()
    try:
        campaign = Campaign.model_validate_json(campaign_file.read_text())
    except (OSError, ValidationError) as exc:
        err.print(f"[red]bad campaign[/] {campaign_file}: {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    users = (
        pd.read_parquet(users_file) if users_file.suffix == ".parquet" else pd.read_csv(users_file, dtype=str)
    )
    if "user_id" not in users:
        err.print(f"[red]{users_file}[/]: no user_id column", highlight=False)
        raise typer.Exit(code=2)
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    if moment.tzinfo is None:
        raise typer.BadParameter("give a UTC offset, e.g. 2026-11-01T00:00:00Z", param_hint="--now")
    ids = users["user_id"].astype(str).drop_duplicates().tolist()
    models = ModelSet.load(settings)
    audience = build_audience(
        feature_store(settings),
        settings,
        models,
        campaign,
        ids,
        moment,
        source="online" if online else "offline",
    )
    # Other campaigns' stored sends bind this plan's caps, as they do in the service.
    migrate(settings)
    arbitrated = plan_within_caps(PlanStore(settings), settings, campaign, audience, moment, seed=seed)
    items = arbitrated.items
    if arbitrated.displaced:
        out.print(f"would displace {len(arbitrated.displaced):,} weaker sends of other campaigns (caps)")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    items.assign(model_versions=items["model_versions"].map(json.dumps)).to_parquet(out_file, index=False)
    _print_plan_summary(items, f"plan: {len(items):,} users → {out_file}")


def _print_plan_summary(items: Any, title: str) -> None:
    """Decisions, skip reasons, variant shares and a local-hour histogram of a plan's items."""
    decisions = items["decision"].value_counts()
    table = Table(title=title, show_header=False)
    for decision in ("send", "holdout", "skip"):
        table.add_row(decision, f"{int(decisions.get(decision, 0)):,}")
    for reason, count in items.loc[items["decision"] == "skip", "reason"].value_counts().items():
        table.add_row(f"  skipped: {reason}", f"{count:,}")
    sends = items[items["decision"] == "send"]
    for variant, share in sends["variant_id"].value_counts(normalize=True).sort_index().items():
        table.add_row(f"  variant {variant}", f"{share:.0%}")
    out.print(table)
    if not sends.empty:
        hours = sends["local_send_at"].str.slice(11, 13).astype(int).value_counts().sort_index()
        top = hours.max()
        out.print("local send hour")
        for hour, count in hours.items():
            out.print(f"  {hour:02d}:00 {'█' * max(1, round(40 * count / top))} {count:,}", highlight=False)


@app.command()
def report(
    campaign: Annotated[str | None, typer.Option("--campaign", help="A pushplan campaign's id.")] = None,
    experiment_log: Annotated[
        Path | None,
        typer.Option("--experiment-log", help="CSV or parquet, one row per user: arm and outcomes."),
    ] = None,
    arm_column: Annotated[str | None, typer.Option(help="The log's column holding each user's arm.")] = None,
    control: Annotated[str | None, typer.Option(help="The control arm's value in --arm-column.")] = None,
    outcome: Annotated[
        list[str] | None, typer.Option("--outcome", help="An outcome column (0/1 or numeric); repeatable.")
    ] = None,
    segment_column: Annotated[
        list[str] | None,
        typer.Option("--segment-column", help="A column to break results down by; repeatable."),
    ] = None,
    covariate: Annotated[
        list[str] | None,
        typer.Option("--covariate", help="A column known before assignment, for uplift models; repeatable."),
    ] = None,
    expected_share: Annotated[
        list[str] | None,
        typer.Option(
            "--expected-share", help="ARM=FRACTION, the intended split (default: equal); repeatable."
        ),
    ] = None,
    horizon_hours: Annotated[
        float,
        typer.Option(min=0, max=24 * 90, help="Campaigns: hours after the window's end that outcomes count."),
    ] = 72.0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the HTML page here.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
) -> None:
    """Uplift report: lift over the randomized control with intervals, funnel, segments, uplift targeting.

    Either --campaign ID, or --experiment-log FILE --arm-column COL --control ARM --outcome COL [...].
    """
    from datetime import timedelta

    from training.campaign_log import NoSuchCampaign
    from training.report import (
        campaign_report,
        experiment_log_report,
        headline_text,
        lift_text,
        parse_shares,
    )

    settings = get_settings()
    if (campaign is None) == (experiment_log is None):
        raise typer.BadParameter("give either --campaign or --experiment-log", param_hint="--campaign")
    try:
        if campaign is not None:
            from dispatch.plan_store import migrate

            migrate(settings)
            built = campaign_report(settings, campaign, horizon=timedelta(hours=horizon_hours))
            default_out = settings.data_dir / "reports" / f"{campaign}.html"
        else:
            assert experiment_log is not None
            needed = {"--arm-column": arm_column, "--control": control, "--outcome": outcome}
            absent = [flag for flag, value in needed.items() if not value]
            if absent:
                raise typer.BadParameter(f"an experiment log needs {', '.join(absent)}", param_hint=absent[0])
            assert arm_column is not None and control is not None and outcome is not None
            built = experiment_log_report(
                experiment_log,
                arm_column,
                control,
                outcome,
                segments=segment_column or [],
                covariates=covariate or [],
                expected_share=parse_shares(expected_share or []) or None,
            )
            default_out = experiment_log.with_suffix(".report.html")
        html_path = write_report(built, out_path or default_out, json_path)
    except (NoSuchCampaign, OSError, ValueError) as exc:  # FileNotFoundError is an OSError
        err.print(f"[red]cannot report[/]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    out.print(f"report: {html_path}" + (f" and {json_path}" if json_path else ""), highlight=False)
    out.print(headline_text(built), highlight=False)
    if campaign is not None and built["headline"]:  # what the holdout adds: purchases made anyway
        out.print(lift_text(built, "revenue"), highlight=False)
    if built.get("note"):
        err.print(f"[yellow]{built['note']}[/]", highlight=False)
    if built["srm"] and built["srm"]["mismatch"]:
        err.print(f"[yellow]sample ratio mismatch[/] (p = {built['srm']['p_value']:.2g}): check assignment")


def write_report(built: dict[str, Any], html_path: Path, json_path: Path | None) -> Path:
    """The page (and the JSON) written whole or not at all: a half-written report is never left."""
    from training.report_page import render_html

    targets = [(html_path, render_html(built))]
    if json_path is not None:
        targets.append((json_path, json.dumps(built, indent=2, allow_nan=False)))
    for path, text in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.tmp")
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(path)
    return html_path


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    queues: Annotated[str, typer.Option(help="Queues to consume, comma-separated.")] = "scans,sends,plans",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Run a Celery worker: sends plan items, plans audience partitions, runs the due-scans beat asks for."""
    from dispatch.celery_app import app as celery

    celery.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            # Gossip, mingle and remote control need broadcast queues, which the local profile's
            # filesystem broker lacks; dispatch needs none of them (the plan store holds all state).
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def beat(loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info") -> None:
    """Run Celery beat: the periodic due-scan (PUSHPLAN_DISPATCH_SCAN_SECONDS) and the event flush."""
    from dispatch.celery_app import app as celery

    celery.start(["beat", f"--loglevel={loglevel}"])


campaign_app = typer.Typer(help="Start, pause, resume or cancel a campaign's sends.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


def _control(campaign_id: str, action: str) -> None:
    from dispatch.control import NoSuchCampaign, TransitionRefused, control
    from dispatch.plan_store import PlanStore, migrate

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


@campaign_app.command("dispatch")
def campaign_dispatch(campaign_id: str) -> None:
    """Start sending: planned items go out as they fall due (needs `pushplan worker` and `pushplan beat`)."""
    _control(campaign_id, "dispatch")


@campaign_app.command("pause")
def campaign_pause(campaign_id: str) -> None:
    """Hold the campaign's sends until resumed."""
    _control(campaign_id, "pause")


@campaign_app.command("resume")
def campaign_resume(campaign_id: str) -> None:
    """Go on sending after a pause."""
    _control(campaign_id, "resume")


@campaign_app.command("cancel")
def campaign_cancel(campaign_id: str) -> None:
    """Stop for good: items not yet handed to a channel are cancelled and never sent."""
    _control(campaign_id, "cancel")


@campaign_app.command("status")
def campaign_status(campaign_id: str) -> None:
    """The campaign's items by decision, state and reason."""
    from dispatch.control import item_states
    from dispatch.plan_store import PlanStore, migrate

    settings = get_settings()
    migrate(settings)
    counts = item_states(PlanStore(settings), campaign_id)
    _print_dispatch_counts(counts, f"{campaign_id}: items by state")


def _print_dispatch_counts(counts: Any, title: str) -> None:
    table = Table(title=title)
    for column in ("decision", "state", "reason", "items"):
        table.add_column(column, justify="right" if column == "items" else "left")
    for row in counts.sort_values(["decision", "state", "reason"], na_position="first").itertuples():
        table.add_row(row.decision, row.state, row.reason or "", f"{row.items:,}")
    out.print(table)


keys_app = typer.Typer(help="API keys for the HTTP service.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


class KeyRole(StrEnum):
    campaign = "campaign"
    operator = "operator"
    admin = "admin"


@keys_app.command("create")
def keys_create(role: Annotated[KeyRole, typer.Option(help="campaign, operator or admin.")]) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from dispatch.plan_store import PlanStore, migrate
    from serving.keys import Role, create_key

    settings = get_settings()
    migrate(settings)
    typer.echo(create_key(PlanStore(settings), Role(role.value)))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the HTTP service (FastAPI under uvicorn); API docs at /docs."""
    import uvicorn

    from serving.app import create_app

    uvicorn.run(create_app(get_settings()), host=host, port=port, log_level="info")


@app.command()
def check() -> None:
    """Check that the active profile's services (data dir; Redis and PostgreSQL in production) answer."""
    from pushplan.services import check_services

    settings = get_settings()
    statuses = check_services(settings)
    table = Table(title=f"profile {settings.profile}")
    for column in ("service", "target", "status"):
        table.add_column(column)
    for status in statuses:
        mark = "[green]ok[/]" if status.ok else "[red]down[/]"
        table.add_row(status.name, status.target, f"{mark} {status.detail}")
    out.print(table)
    if not all(status.ok for status in statuses):
        raise typer.Exit(code=1)


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=1, help="How many users to simulate.")] = 5_000,
    days: Annotated[int, typer.Option(min=1, help="How many days of history.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """The tour on the local profile: simulate, import, features, train, evaluate, serve and plan,
    dispatch through a Celery worker, the simulated users' responses posted back, and the uplift report."""
    import time

    started = time.monotonic()
    settings = get_settings()
    sim_dir = settings.data_dir / "simulation"
    out.rule("1. simulate")
    simulate(out_dir=sim_dir, users=users, days=days, seed=seed)
    out.rule("2. import")
    events_import(
        [sim_dir / "users.parquet", sim_dir / "events.parquet", sim_dir / "campaigns.json"], kind=None
    )
    events_stats(as_json=False)
    out.rule("3. features")
    features_build()
    features_apply()
    features_materialize()
    out.rule("4. train")
    train(ModelName.all, tune=0, promote=False)
    out.rule("5. evaluate")
    evaluate(as_json=False, sim_dir=sim_dir)
    out.rule("6. serve and plan")
    campaign_id = _demo_plan_through_the_service(settings)
    out.rule("7. dispatch")
    _demo_dispatch(settings, campaign_id)
    out.rule("8. responses")
    _demo_responses(settings, campaign_id, sim_dir)
    out.rule("9. report")
    report(campaign=campaign_id, json_path=settings.data_dir / "reports" / f"{campaign_id}.json")
    _demo_next_steps(settings, campaign_id, sim_dir, time.monotonic() - started)


def _demo_next_steps(settings: Any, campaign_id: str, sim_dir: Path, seconds: float) -> None:
    """Where to look next: the MLflow UI, the API docs, the report page, the notebooks."""
    import os
    import sys

    tracking = (settings.data_dir / "mlflow.db").resolve()
    report = (settings.data_dir / "reports" / f"{campaign_id}.html").resolve()
    # The commands as they can be typed here: .venv/bin/... unless the virtualenv is on PATH.
    where = Path(sys.executable).parent
    on_path = os.environ.get("PATH", "").split(os.pathsep)
    bin_dir = "" if str(where) in on_path else f"{os.path.relpath(where)}/"
    out.rule("next")
    out.print(
        f"The tour took {seconds / 60:.1f} min. The simulator's hidden truth is in {sim_dir / 'truth'}.\n"
        f"  models in MLflow:  {bin_dir}mlflow ui --backend-store-uri sqlite:///{tracking}\n"
        f"                     then http://127.0.0.1:5000\n"
        f"  the API and docs:  {bin_dir}pushplan serve --port 8000   then http://127.0.0.1:8000/docs\n"
        f"  the report page:   {report}\n"
        f"                     served to operators: KEY=$({bin_dir}pushplan keys create --role operator)\n"
        f'                     curl -H "X-API-Key: $KEY" http://127.0.0.1:8000/reports/campaigns/{campaign_id}\n'
        f"  plan items:        KEY=$({bin_dir}pushplan keys create --role campaign)\n"
        f'                     curl -H "X-API-Key: $KEY" '
        f"'http://127.0.0.1:8000/v1/campaigns/{campaign_id}/plan-items?limit=3'\n"
        f"  the notebooks:     make notebooks",
        highlight=False,
        soft_wrap=True,
    )


def _demo_plan_through_the_service(settings: Any) -> str:
    """Start the HTTP service, create the demo campaign and plan every user through the API."""
    from datetime import UTC, datetime, time, timedelta

    import pandas as pd

    from dispatch.plan_store import PlanStore, migrate
    from features.event_store import EventStore
    from pushplan.tour import demo_campaign, plan_through_api, running_service
    from serving.keys import Role, create_key

    last = EventStore(settings).stats().last
    assert last is not None  # the tour imported events a step earlier
    # The campaign runs for the day after the simulated history, planned as of its start.
    start = datetime.combine(last.date() + timedelta(days=1), time(), tzinfo=UTC)
    campaign = demo_campaign(start)
    user_ids = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].astype(str).tolist()
    migrate(settings)
    key = create_key(PlanStore(settings), Role.campaign)
    with running_service(settings.data_dir, key) as service:
        out.print(f"service at {service.base_url} (log: {service.log})", highlight=False)
        items = plan_through_api(service, campaign, user_ids, start)
    out.print(
        f"created campaign {campaign.campaign_id!r} ({len(campaign.variants)} variants, "
        f"{start:%Y-%m-%d} UTC) and planned {len(items):,} users through POST /v1/plans",
        highlight=False,
    )
    _print_plan_summary(items, f"plan: {len(items):,} users")
    return campaign.campaign_id


def _demo_dispatch(settings: Any, campaign_id: str) -> None:
    """Start the campaign and replay its window through a real worker (the sandbox channel)."""
    from dispatch.control import control, flush_events, item_states
    from dispatch.plan_store import PlanStore
    from dispatch.replay import replay
    from features.simulator.answers import read_outbox
    from pushplan.tour import running_worker

    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    assert campaign is not None  # the tour created it a step earlier
    control(store, campaign_id, "dispatch")
    with running_worker(settings.data_dir.resolve()) as worker:
        out.print(f"worker pid {worker.pid} (log: {settings.data_dir / 'worker.log'})", highlight=False)
        chunks = replay(store, settings, campaign)
    moved = flush_events(store, settings)
    counts = item_states(store, campaign_id)
    sent = int(counts.loc[counts["state"] == "sent", "items"].sum())
    outbox = read_outbox(settings.sandbox_dir / "outbox.jsonl", campaign_id)
    out.print(
        f"replayed {campaign.window.start:%Y-%m-%d} every half hour: {chunks} send tasks, {sent:,} sent, "
        f"{len(outbox):,} messages in {settings.sandbox_dir / 'outbox.jsonl'}, "
        f"{moved:,} push_sent/push_delivered events stored",
        highlight=False,
    )
    _print_dispatch_counts(counts, f"{campaign_id}: items by state")


def _demo_responses(settings: Any, campaign_id: str, sim_dir: Path) -> None:
    """The simulated users answer what was sent; the answers go back through POST /v1/events."""
    from collections import Counter

    from dispatch.plan_store import PlanStore
    from features.simulator.answers import answer_sends, post_events, read_outbox
    from features.simulator.population import Population
    from pushplan.tour import running_service
    from serving.keys import Role, create_key

    store = PlanStore(settings)
    campaign = store.get_campaign(campaign_id)
    assert campaign is not None
    holdouts, after = [], None
    while True:
        page = store.list_items(campaign_id, decision="holdout", limit=5_000, after=after)
        holdouts += [item.user_id for item in page]
        if len(page) < 5_000:
            break
        after = page[-1].plan_id
    sent = read_outbox(settings.sandbox_dir / "outbox.jsonl", campaign_id)
    events = answer_sends(Population.load(sim_dir), campaign, sent, holdouts)
    key = create_key(store, Role.campaign)
    with running_service(settings.data_dir, key) as service, service.client() as client:
        totals = post_events(client, events)
    kinds = Counter(events["event_type"])
    table = Table(title=f"responses to {len(sent):,} sends and {len(holdouts):,} holdouts", show_header=False)
    for kind in ("push_opened", "push_clicked", "converted", "unsubscribed", "purchase"):
        table.add_row(kind, f"{kinds.get(kind, 0):,}")
    table.add_row("posted to POST /v1/events", f"{totals['received']:,} ({totals['stored']:,} new)")
    out.print(table)


def main() -> None:
    app()
