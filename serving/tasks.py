"""Celery tasks of serving, on dispatch's one Celery app: whole-audience plan-job partitions, and the
firing task of triggered campaigns."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from dispatch.celery_app import app
from pushplan.db.store import PlanStore
from pushplan.db.trigger_inbox import INBOX_KEEP, pending_count, prune
from pushplan.settings import Settings, get_settings, per_settings

log = logging.getLogger(__name__)


@per_settings
def _store(settings: Settings) -> PlanStore:
    return PlanStore(settings)


@app.task(name="serving.tasks.plan_partition_task", acks_late=True, ignore_result=True)
def plan_partition_task(job_id: str, partition: int) -> int:
    """Plan one partition of a job; safe to run twice (re-planning replaces only what is not dispatched)."""
    # Imported when a partition runs: planning loads Feast and MLflow, which a worker that only sends
    # should not pay for at every start.
    from serving.plan_jobs import plan_partition

    settings = get_settings()
    return plan_partition(_store(settings), settings, job_id, partition)


@app.task(name="serving.tasks.fire_triggers_task", acks_late=True, ignore_result=True)
def fire_triggers_task(as_of: str | None = None) -> int:
    """Turn pending trigger-inbox events into plan items; safe to run twice or at once (claims and
    one item per firing); started by each batch of events and by beat. `as_of` is the clock firings
    are planned by (the wall clock in service; a simulated one when replaying a past day, as the
    tour does). Returns events processed."""
    settings = get_settings()
    store = _store(settings)
    moment = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    prune(store, keep=INBOX_KEEP, now=moment)
    if not pending_count(store):  # the usual beat tick: nothing arrived, nothing to load
        return 0
    from serving.triggers import fire_triggers  # planning loads Feast and MLflow: only when it runs

    summary = fire_triggers(store, settings, now=moment)
    if summary.events:
        log.info("trigger firings of %d events: %s", summary.events, dict(summary.outcomes))
    return summary.events


# The name this task had while plan jobs lived in dispatch: partitions an older deployment queued
# still run after an upgrade, instead of arriving as an unregistered task and stalling their job.
app.task(name="dispatch.tasks.plan_partition_task", acks_late=True, ignore_result=True)(
    plan_partition_task.run
)
