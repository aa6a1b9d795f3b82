"""A send task that sends nothing, for benchmarks/dispatch.py: what Celery alone costs per chunk.

It takes a send chunk's arguments and only adds the chunk's size to a Redis counter, so the benchmark
sees when every chunk is done. The worker loads it with `--include benchmarks.noop_tasks`.
"""

from __future__ import annotations

from typing import Any

from dispatch.celery_app import app
from pushplan.settings import Settings, get_settings, per_settings

NOOP_COUNTER = "pushplan-bench:noop-items"


@per_settings
def _redis(settings: Settings) -> Any:
    import redis

    assert settings.redis_url
    return redis.Redis.from_url(settings.redis_url)


@app.task(name="benchmarks.noop_tasks.noop_chunk_task", acks_late=True, ignore_result=True)
def noop_chunk_task(plan_ids: list[str], claim: str, as_of: str | None = None) -> int:
    """Count the chunk's items (the same arguments as dispatch.tasks.send_chunk_task) and nothing else."""
    return int(_redis(get_settings()).incrby(NOOP_COUNTER, len(plan_ids)))
