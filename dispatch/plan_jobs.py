"""Whole-audience plan jobs: a campaign's audience partitioned into Celery tasks running the planner.

Partition k of n holds the users whose stable hash of user_id is k modulo n, so a task needs only
the job id and its number (tasks take ids), and a job scales out by adding workers. Each partition
plans its users from the offline store as of the job's `now` (serving.audience, source="offline"),
weighs them against the caps (serving.capped_plan) and stores them; the job row counts progress.
Re-running a partition is harmless: re-planning replaces only items not yet handed to dispatch.
"""

from __future__ import annotations

import math
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from dispatch.plan_store import PlanJobRow, PlanStore
from pushplan.domain import Campaign
from pushplan.settings import Settings, per_settings


class JobState:
    running = "running"
    done = "done"
    failed = "failed"


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
    moment = datetime.now(UTC)
    row = PlanJobRow(
        job_id=str(uuid.uuid4()),
        campaign_id=campaign.campaign_id,
        state=JobState.running,
        partitions=max(1, math.ceil(total / settings.plan_job_partition_users)),
        partitions_done=0,
        users=total,
        users_planned=0,
        spec={"now": (now or moment).isoformat(), "seed": seed, "counts": {}},
        error=None,
        created_at=moment,
        updated_at=moment,
    )
    with store.session() as session:
        session.add(row)
    return row


def get_job(store: PlanStore, job_id: str) -> PlanJobRow | None:
    with store.session() as session:
        return session.get(PlanJobRow, job_id)


@per_settings
def _models(settings: Settings) -> Any:
    from serving.models import ModelSet

    return ModelSet.load(settings)


def plan_partition(store: PlanStore, settings: Settings, job_id: str, partition: int) -> int:
    """Plan one partition of a job and record its progress; returns users planned."""
    from features.store import feature_store
    from serving.audience import build_audience
    from serving.capped_plan import plan_within_caps

    job = get_job(store, job_id)
    if job is None or job.state != JobState.running:
        return 0
    campaign = store.get_campaign(job.campaign_id)
    if campaign is None:
        return _fail(store, job_id, f"campaign {job.campaign_id!r} no longer exists")
    users = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].astype(str)
    mine = users[user_partition(users, job.partitions) == partition].tolist()
    now = datetime.fromisoformat(job.spec["now"])
    try:
        models = _models(settings)
        models.refresh_if_stale()
        audience = build_audience(
            feature_store(settings), settings, models, campaign, mine, now, source="offline"
        )
        arbitrated = plan_within_caps(store, settings, campaign, audience, now, seed=int(job.spec["seed"]))
        store.save_items(arbitrated.items, arbitrated.displaced)
    except Exception as exc:  # recorded on the job for its caller to see, then raised for the worker log
        _fail(store, job_id, f"partition {partition}: {type(exc).__name__}: {exc}")
        raise
    counts = arbitrated.items["decision"].value_counts().to_dict()
    with store.session() as session:
        row = session.get(PlanJobRow, job_id, with_for_update=True)
        assert row is not None
        spec = dict(row.spec)
        done = set(spec.get("done", []))
        if partition in done:  # a redelivered task: its items were re-planned in place, count once
            return len(mine)
        spec["done"] = sorted(done | {partition})
        spec["counts"] = {
            k: int(spec["counts"].get(k, 0) + counts.get(k, 0)) for k in {*spec["counts"], *counts}
        }
        row.spec = spec
        row.partitions_done = len(spec["done"])
        row.users_planned += len(mine)
        if row.partitions_done >= row.partitions and row.state == JobState.running:
            row.state = JobState.done
        row.updated_at = datetime.now(UTC)
    return len(mine)


def _fail(store: PlanStore, job_id: str, error: str) -> int:
    with store.session() as session:
        session.execute(
            sa.update(PlanJobRow)
            .where(PlanJobRow.job_id == job_id)
            .values(state=JobState.failed, error=error[:2000], updated_at=datetime.now(UTC))
        )
    return 0
