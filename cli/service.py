"""`pushplan serve|worker|beat|check`: the long-running processes and the check of their services."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.output import out
from pushplan.settings import get_settings


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


def beat(loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info") -> None:
    """Run Celery beat: the periodic due-scan (PUSHPLAN_DISPATCH_SCAN_SECONDS) and the event flush."""
    from dispatch.celery_app import app as celery

    celery.start(["beat", f"--loglevel={loglevel}"])


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Service processes (uvicorn workers) sharing the port.")
    ] = 1,
) -> None:
    """Run the HTTP service (FastAPI under uvicorn); API docs at /docs."""
    import uvicorn

    from serving.app import create_app

    settings = get_settings()
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
        return
    # The stores' schemas (ours and MLflow's) are brought up to date here, once, before the workers
    # start together: MLflow's own migration does not expect two processes at once.
    from pushplan.db.engine import migrate
    from serving.scoring import ModelSet

    migrate(settings)
    ModelSet.load(settings)
    # Several processes need the app by name: each builds its own from the same environment.
    uvicorn.run(
        "serving.app:create_app", factory=True, workers=workers, host=host, port=port, log_level="info"
    )


def check() -> None:
    """Check that the active profile's services (data dir; Redis and PostgreSQL in production) answer."""
    from pushplan.reachability import check_services

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
