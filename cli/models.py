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
    """Train, evaluate and register models; a new version becomes champion only if it beats the simple
    rules and the current champion. `all` trains every model the data allows and says what the others
    need (exit 0 when at least one trained)."""
    from training.datasets import NoExamples
    from training.pipeline import train as run_training
    from training.specs import SPECS

    settings = get_settings()
    names = list(SPECS) if model is ModelName.all else [model.value]
    table = Table(title="training")
    for column in ("model", "version", "metric", "new", "best rule", "champion before", "serving now"):
        table.add_column(column)
    skipped: dict[str, str] = {}
    for name in names:
        try:
            result = run_training(SPECS[name], settings, trials=tune, promote=promote)
        except NoExamples as exc:
            skipped[name] = str(exc)
            continue
        except ValueError as exc:
            err.print(f"[red]cannot train {name}[/]: {exc}", highlight=False)
            raise typer.Exit(code=1) from None
        before = "—" if result.champion_value is None else f"{result.champion_value:.4f}"
        rule = result.verdict.best_rule if result.verdict else ""
        rule_value = result.metrics.get(_rule_metric(name, rule))
        table.add_row(
            name,
            str(result.version),
            result.metric,
            f"{result.value:.4f}",
            f"{rule} {rule_value:.4f}" if isinstance(rule_value, float) else rule,
            before,
            result.serving + (" (champion retired)" if result.retired else ""),
        )
        if result.verdict and not result.verdict.beats:
            err.print(f"[yellow]{name} v{result.version}[/] {result.verdict.describe()}", highlight=False)
    if len(skipped) < len(names):
        out.print(table)
    for name, reason in skipped.items():
        err.print(
            f"[yellow]not trained: {name}[/]: {reason}; serving uses heuristics for it", highlight=False
        )
    if len(skipped) == len(names):
        raise typer.Exit(code=1)


def _rule_metric(model: str, rule: str) -> str:
    """Where a rule's figure for the spec's metric sits in the training metrics."""
    if model == "send-hour":
        return f"{rule}_within1"
    if model == "variant":
        return {"random_variant": "snips_random", "best_variant_overall": "snips_best_overall"}.get(rule, "")
    return "base_rate_log_loss"


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
    from training.habits import RULES

    table = Table(title="models as they serve, on the last days", show_header=False)
    click, hour, variant = result["click"], result["send-hour"], result["variant"]
    for name in ("click", "send-hour", "variant"):
        table.add_row(f"{name}: serving", str(result[name].get("serving", "")))
    if "auc" in click:
        table.add_row(
            "click: AUC / log loss / ECE",
            f"{click['auc']:.3f} / {click['log_loss']:.4f} / {click['ece']:.4f}",
        )
        table.add_row("click: base-rate log loss", f"{click['base_rate_log_loss']:.4f}")
    if "top1_hit_rate" in hour:
        table.add_row(
            "send hour: top-1 / within one hour",
            f"{hour['top1_hit_rate']:.1%} / {hour['within1_hit_rate']:.1%}",
        )
        for rule in RULES:
            table.add_row(
                f"  {rule.replace('_', ' ')}", f"{hour[f'{rule}_top1']:.1%} / {hour[f'{rule}_within1']:.1%}"
            )
        for bucket, row in hour["by_history"].items():
            if row["rows"]:
                figures = " · ".join(f"{p} {row[f'{p}_within1']:.1%}" for p in ("model", *RULES))
                table.add_row(f"  {bucket} events ({row['rows']:,}), within 1 h", figures)
    if "snips_model" in variant:
        table.add_row(
            "variant: SNIPS model / random / best overall",
            " / ".join(f"{variant[k]:.4f}" for k in ("snips_model", "snips_random", "snips_best_overall")),
        )
    if "oracle" in result:
        oracle = result["oracle"]
        table.add_row("oracle share (as served)", f"{oracle['oracle_share']:.3f}")
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
    for column in ("model", "versions", "aliases", "metric", "champion", "serving"):
        table.add_column(column)
    for m in models:
        champion = "—" if m.champion_metric is None else f"{m.champion_metric:.4f}"
        aliases = ", ".join(f"{a}→v{v}" for a, v in m.aliases.items())
        serving = f"v{m.aliases['champion']}" if "champion" in m.aliases else f"rule:{m.serving_rule}"
        table.add_row(m.name, str(len(m.versions)), aliases, m.headline_metric or "", champion, serving)
    out.print(table)
