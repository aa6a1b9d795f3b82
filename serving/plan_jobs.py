"""Whole-audience plan jobs: a campaign's audience partitioned into Celery tasks running the planner.

Partition k of n holds the users whose stable hash of user_id is k modulo n, so a task needs only
the job id and its number (tasks take ids), and a job scales out by adding workers. Each partition
plans its users from the offline store as of the job's `now` through the one plan path
(serving.capped_plan.plan_users, source="offline"), which stores them; the job row counts progress.
Re-running a partition is harmless: re-planning replaces only items not yet handed to dispatch.
"""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from pushplan.db.plan_jobs import JobState, fail_job, get_job, insert_job, record_partition
from pushplan.db.schema import PlanJobRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign
from pushplan.settings import Settings, per_settings
from serving.capped_plan import plan_users
from serving.scoring import ModelSet


def user_partition(user_ids: pd.Series, partitions: int) -> np.ndarray:
    """Each user's partition: crc32 of the id modulo `partitions` (stable across processes and runs)."""
    return np.array([zlib.crc32(u.encode()) % partitions for u in user_ids.astype(str)], dtype=int)


def create_job(
    store: PlanStore,
    settings: Settings,
    campaign: Campaign,
    *,
    now: datetime | None = None,
    seed: int = 0,
) -> PlanJobRow:
    """Record a job over every user in the event store's users file; the caller enqueues its partitions."""
    users = (
        pd.read_parquet(settings.users_path, columns=["user_id"]) if settings.users_path.exists() else None
    )
    if users is None or users.empty:
        raise ValueError(f"no users to plan: {settings.users_path} is missing or empty (import users first)")
    total = len(users)
    return insert_job(
        store,
        campaign.campaign_id,
        partitions=max(1, math.ceil(total / settings.plan_job_partition_users)),
        users=total,
        now=now or datetime.now(UTC),
        seed=seed,
    )


@per_settings
def _models(settings: Settings) -> ModelSet:
    return ModelSet.load(settings)


def plan_partition(store: PlanStore, settings: Settings, job_id: str, partition: int) -> int:
    """Plan one partition of a job and record its progress; returns users planned."""
    job = get_job(store, job_id)
    if job is None or job.state != JobState.running:
        return 0
    campaign = store.get_campaign(job.campaign_id)
    if campaign is None:
        return fail_job(store, job_id, f"campaign {job.campaign_id!r} no longer exists")
    users = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].astype(str)
    mine = users[user_partition(users, job.partitions) == partition].tolist()
    now = datetime.fromisoformat(job.spec["now"])
    try:
        models = _models(settings)
        models.refresh_if_stale()
        arbitrated = plan_users(
            store, settings, models, campaign, mine, now, seed=int(job.spec["seed"]), source="offline"
        )
    except Exception as exc:  # recorded on the job for its caller to see, then raised for the worker log
        fail_job(store, job_id, f"partition {partition}: {type(exc).__name__}: {exc}")
        raise
    counts = arbitrated.items["decision"].value_counts().to_dict()
    record_partition(store, job_id, partition, len(mine), counts)
    return len(mine)
