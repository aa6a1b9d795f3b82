"""Celery tasks: thin wrappers that take ids, re-read their rows and call dispatch's plain functions."""

from __future__ import annotations

import logging
from datetime import datetime

from dispatch.celery_app import app
from dispatch.control import flush_events
from dispatch.sending import scan_due, send_chunk
from pushplan.db.store import PlanStore
from pushplan.settings import Settings, get_settings, per_settings

log = logging.getLogger(__name__)


@per_settings
def _store(settings: Settings) -> PlanStore:
    return PlanStore(settings)


@app.task(name="dispatch.tasks.due_scan_task", ignore_result=True)
def due_scan_task(as_of: str | None = None) -> int:
    """Queue what is due and what lapsed, and enqueue a send task per chunk; returns chunks sent."""
    settings = get_settings()
    chunks = scan_due(_store(settings), settings, as_of=datetime.fromisoformat(as_of) if as_of else None)
    for chunk in chunks:
        send_chunk_task.apply_async(args=chunk.args())
    return len(chunks)


@app.task(name="dispatch.tasks.send_chunk_task", acks_late=True, ignore_result=True)
def send_chunk_task(plan_ids: list[str], claim: str, as_of: str | None = None) -> dict[str, int]:
    """Send one chunk; safe to run twice (the claim token and the ledger make the second a no-op)."""
    settings = get_settings()
    result = send_chunk(
        _store(settings), settings, plan_ids, claim, datetime.fromisoformat(as_of) if as_of else None
    )
    log.info("chunk of %d: %s", len(plan_ids), dict(result.counts))
    return dict(result.counts)


@app.task(name="dispatch.tasks.flush_events_task", acks_late=True, ignore_result=True)
def flush_events_task() -> int:
    settings = get_settings()
    return flush_events(_store(settings), settings)
