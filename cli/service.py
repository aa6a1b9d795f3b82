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
) -> None:
    """Run the HTTP service (FastAPI under uvicorn); API docs at /docs."""
    import uvicorn

    from serving.app import create_app

    uvicorn.run(create_app(get_settings()), host=host, port=port, log_level="info")


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
