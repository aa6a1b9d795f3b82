"""The `pushplan` command: one Typer app whose commands are the entry points people and CI share.

The commands live one module per group beside this one; this module builds the app, reads the
settings before any command, and sets up logging and warnings once for every command."""

from __future__ import annotations

import logging
import os
import warnings
from typing import TextIO

import typer

from cli import (
    audiences,
    audit,
    campaigns,
    demo,
    events,
    features,
    keys,
    labels,
    models,
    plans,
    reports,
    service,
)
from cli.output import err
from pushplan.settings import get_settings

app = typer.Typer(
    name="pushplan",
    help="Self-hosted push personalisation: who gets which message, when, on which channel, and why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
# `pushplan --help` lists the commands in this order, then the groups in theirs.
app.command()(events.simulate)
app.command()(models.train)
app.command()(models.evaluate)
app.command("plan")(plans.plan_command)
app.command()(reports.report)
app.command()(service.worker)
app.command()(service.beat)
app.command()(service.serve)
app.command()(service.check)
app.command()(demo.demo)
app.command()(audit.audit)
app.add_typer(events.app, name="events")
app.add_typer(features.app, name="features")
app.add_typer(models.app, name="models")
app.add_typer(campaigns.app, name="campaign")
app.add_typer(audiences.app, name="audience")
app.add_typer(labels.app, name="labels")
app.add_typer(keys.app, name="keys")


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


# Warnings that libraries raise about their own internals, which nobody running pushplan can act on:
# (category, the library whose code raised it, how the message starts). Anything else still shows.
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # MLflow's tracking store maps its tables with a loader strategy SQLAlchemy 2 deprecates.
    (DeprecationWarning, "mlflow", "The ``noload`` loader strategy is deprecated"),
)
# Records of libraries' loggers dropped by message: (logger, how the message starts).
HARMLESS_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # training/pipeline.py saves models with cloudpickle on purpose: the registry is this deployment's own.
    ("mlflow.sklearn", "Saving scikit-learn models in the pickle or cloudpickle format"),
    # The local profile's filesystem broker has no host to connect to (dispatch/celery_app.py).
    ("kombu.connection", "No hostname was supplied"),
)


class _DropRecords(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def _harmless(message: Warning | str, category: type[Warning], filename: str) -> bool:
    parts = os.path.normpath(filename).split(os.sep)
    return any(
        issubclass(category, kind) and library in parts and str(message).startswith(start)
        for kind, library, start in HARMLESS_WARNINGS
    )


def quiet_libraries() -> None:
    """Every command prints its own output and the warnings that matter, nothing else.

    Known harmless warnings are dropped where they are shown rather than by `warnings.filterwarnings`:
    importing Feast puts "once" filters for every DeprecationWarning and RuntimeWarning in front of
    any filter set earlier, and Feast is imported late, by the commands that need it. No handler is
    added to the root logger: Celery (`worker`, `beat`) and uvicorn (`serve`) format their own logs,
    and elsewhere Python's last-resort handler prints warnings and errors.
    """
    # MLflow sets its loggers' level from this variable when it is imported (a value set by the user
    # wins); its INFO lines ("Creating initial MLflow database tables...") are not the command's output.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("feast").setLevel(logging.WARNING)
    for name, start in HARMLESS_LOG_RECORDS:
        logging.getLogger(name).addFilter(_DropRecords(start))
    show = warnings.showwarning

    def show_unless_harmless(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not _harmless(message, category, filename):
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_unless_harmless


def main() -> None:
    quiet_libraries()
    app()
