"""Celery tasks of serving, on dispatch's one Celery app: whole-audience plan-job partitions."""

from __future__ import annotations

from dispatch.celery_app import app
from pushplan.db.store import PlanStore
from pushplan.settings import Settings, get_settings, per_settings


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


# The name this task had while plan jobs lived in dispatch: partitions an older deployment queued
# still run after an upgrade, instead of arriving as an unregistered task and stalling their job.
app.task(name="dispatch.tasks.plan_partition_task", acks_late=True, ignore_result=True)(
    plan_partition_task.run
)
