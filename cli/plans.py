"""`pushplan plan`: plan a whole audience offline, within caps, into a parquet file."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.output import err, out
from pushplan.settings import get_settings


def plan_command(
    campaign_file: Annotated[Path, typer.Argument(help="The campaign, as JSON (the Campaign contract).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the plan items (parquet).")],
    users_file: Annotated[
        Path | None,
        typer.Option(
            "--users",
            help="CSV or parquet with a user_id column (default: the campaign's audience, or every user); "
            "listed users outside the audience are skipped not_in_audience.",
        ),
    ] = None,
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
    import pandas as pd
    from pydantic import ValidationError

    from features.audiences import compile_for, select
    from pushplan.db.engine import migrate
    from pushplan.db.store import PlanStore
    from pushplan.domain import Campaign, PlannedByTrigger
    from serving.capped_plan import plan_users
    from serving.scoring import ModelSet

    settings = get_settings()
    try:
        campaign = Campaign.model_validate_json(campaign_file.read_text())
    except (OSError, ValidationError) as exc:
        err.print(f"[red]bad campaign[/] {campaign_file}: {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    if campaign.trigger is not None:
        err.print(
            f"[red]not planned[/] {campaign_file}: {PlannedByTrigger(campaign.campaign_id)}", highlight=False
        )
        raise typer.Exit(code=2)
    moment = parse_now(now)
    if users_file is None:
        try:
            rule = compile_for(settings, campaign.audience) if campaign.audience is not None else None
            ids = select(settings, rule, moment).frame["user_id"].tolist()
        except ValueError as exc:
            err.print(f"[red]bad audience[/] {campaign_file}: {exc}", highlight=False)
            raise typer.Exit(code=2) from None
    else:
        users = (
            pd.read_parquet(users_file)
            if users_file.suffix == ".parquet"
            else pd.read_csv(users_file, dtype=str)
        )
        if "user_id" not in users:
            err.print(f"[red]{users_file}[/]: no user_id column", highlight=False)
            raise typer.Exit(code=2)
        ids = users["user_id"].astype(str).drop_duplicates().tolist()
    models = ModelSet.load(settings)
    # Other campaigns' stored sends bind this plan's caps, as they do in the service; nothing is stored.
    migrate(settings)
    arbitrated = plan_users(
        PlanStore(settings),
        settings,
        models,
        campaign,
        ids,
        moment,
        seed=seed,
        source="online" if online else "offline",
        save=False,
        members_only=users_file is None,
    )
    items = arbitrated.items
    if arbitrated.displaced:
        out.print(f"would displace {len(arbitrated.displaced):,} weaker sends of other campaigns (caps)")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    items.assign(model_versions=items["model_versions"].map(json.dumps)).to_parquet(out_file, index=False)
    print_plan_summary(items, f"plan: {len(items):,} users → {out_file}")


def parse_now(now: str | None) -> datetime:
    """A command's --now: an ISO 8601 instant with its UTC offset, or this instant."""
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    if moment.tzinfo is None:
        raise typer.BadParameter("give a UTC offset, e.g. 2026-11-01T00:00:00Z", param_hint="--now")
    return moment


def print_plan_summary(items: Any, title: str) -> None:
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
