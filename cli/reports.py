"""`pushplan report`: the uplift report of a campaign or of any experiment's log, as a page and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.output import err, out
from pushplan.settings import get_settings


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

    from pushplan.domain import NoSuchCampaign
    from reports.report import (
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
            from pushplan.db.engine import migrate

            migrate(settings)
            from pushplan.domain import identifier_problem

            built = campaign_report(settings, campaign, horizon=timedelta(hours=horizon_hours))
            # The id names the default file: one stored before ids were restricted could climb out
            # of the reports directory (`../`), so it needs --out.
            problem = identifier_problem(campaign)
            if problem is not None and out_path is None:
                raise typer.BadParameter(f"{problem}; name the page with --out", param_hint="--campaign")
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
    from pushplan.files import write_text
    from reports.page import render_html

    # Both rendered before either is written: a report that cannot be JSON leaves no page behind.
    targets = [(html_path, render_html(built))]
    if json_path is not None:
        targets.append((json_path, json.dumps(built, indent=2, allow_nan=False)))
    for path, text in targets:
        write_text(text, path)
    return html_path
