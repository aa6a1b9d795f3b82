"""`pushplan train`, `pushplan evaluate` and `pushplan models list`: the three models and their registry."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.output import err, out, plain
from pushplan.settings import get_settings

app = typer.Typer(help="The MLflow model registry: versions, aliases, metrics.", no_args_is_help=True)


class ModelName(StrEnum):
    click = "click"
    send_hour = "send-hour"
    variant = "variant"
    all = "all"


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
        typer.echo(json.dumps(result, indent=2, default=plain))
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


@app.command("list")
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
