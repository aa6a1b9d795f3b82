"""Whole-audience plan jobs: a campaign's audience partitioned into Celery tasks running the planner.

The audience (the users the campaign's rule selects, or every user) is chosen once when the job is
created and kept beside it (`job_users_path`); users outside it get no item at all.

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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.audiences import compile_for, select
from pushplan.db.plan_jobs import JobState, fail_job, get_job, insert_job, record_partition
from pushplan.db.schema import PlanJobRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, PlannedByTrigger
from pushplan.files import write_parquet
from pushplan.settings import Settings
from serving.capped_plan import plan_users
from serving.scoring import models_of


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
    """Record a job over the campaign's audience (every user in the users file without a rule),
    selected once, as of `now`, and kept beside the job so every partition plans the same users
    whatever the feature tables become meanwhile; the caller enqueues its partitions."""
    if campaign.trigger is not None:
        raise PlannedByTrigger(campaign.campaign_id)
    moment = now or datetime.now(UTC)
    if not settings.users_path.exists() or pq.read_metadata(settings.users_path).num_rows == 0:
        raise ValueError(f"no users to plan: {settings.users_path} is missing or empty (import users first)")
    rule = compile_for(settings, campaign.audience) if campaign.audience is not None else None
    chosen = select(settings, rule, moment).frame["user_id"]
    total = len(chosen)
    job = insert_job(
        store,
        campaign.campaign_id,
        partitions=max(1, math.ceil(total / settings.plan_job_partition_users)),
        users=total,
        now=moment,
        seed=seed,
    )
    write_parquet(
        pa.table({"user_id": pa.array(chosen.tolist(), pa.string())}), job_users_path(settings, job.job_id)
    )
    return job


def job_users_path(settings: Settings, job_id: str) -> Path:
    """The users a job plans (its audience as of the job's `now`)."""
    return settings.data_dir / "plan_jobs" / f"{job_id}.parquet"


def plan_partition(store: PlanStore, settings: Settings, job_id: str, partition: int) -> int:
    """Plan one partition of a job and record its progress; returns users planned."""
    job = get_job(store, job_id)
    if job is None or job.state != JobState.running:
        return 0
    campaign = store.get_campaign(job.campaign_id)
    if campaign is None:
        return fail_job(store, job_id, f"campaign {job.campaign_id!r} no longer exists")
    chosen = job_users_path(settings, job_id)
    # A job recorded before audiences were kept beside jobs plans every user, as it did then.
    users = pd.read_parquet(chosen if chosen.exists() else settings.users_path, columns=["user_id"])
    users = users["user_id"].astype(str)
    mine = users[user_partition(users, job.partitions) == partition].tolist()
    now = datetime.fromisoformat(job.spec["now"])
    try:
        models = models_of(settings)
        arbitrated = plan_users(
            store,
            settings,
            models,
            campaign,
            mine,
            now,
            seed=int(job.spec["seed"]),
            source="offline",
            members_only=True,
        )
    except Exception as exc:  # recorded on the job for its caller to see, then raised for the worker log
        fail_job(store, job_id, f"partition {partition}: {type(exc).__name__}: {exc}")
        raise
    counts = arbitrated.items["decision"].value_counts().to_dict()
    record_partition(store, job_id, partition, len(mine), counts)
    return len(mine)
