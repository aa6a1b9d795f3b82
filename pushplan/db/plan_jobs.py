"""Plan jobs in the database: a whole-audience plan's row, its partitions' progress and its failure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from pushplan.db.schema import PlanJobRow
from pushplan.db.store import PlanStore


class JobState:
    running = "running"
    done = "done"
    failed = "failed"


def insert_job(
    store: PlanStore, campaign_id: str, *, partitions: int, users: int, now: datetime, seed: int
) -> PlanJobRow:
    """A new running job over `users` users in `partitions` partitions; the caller enqueues them."""
    moment = datetime.now(UTC)
    row = PlanJobRow(
        job_id=str(uuid.uuid4()),
        campaign_id=campaign_id,
        state=JobState.running,
        partitions=partitions,
        partitions_done=0,
        users=users,
        users_planned=0,
        spec={"now": now.isoformat(), "seed": seed, "counts": {}},
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


def record_partition(
    store: PlanStore, job_id: str, partition: int, users: int, counts: dict[str, int]
) -> None:
    """Count a partition done once (a redelivered task re-plans in place and is not counted again)."""
    with store.session() as session:
        row = session.get(PlanJobRow, job_id, with_for_update=True)
        assert row is not None
        spec = dict(row.spec)
        done = set(spec.get("done", []))
        if partition in done:
            return
        spec["done"] = sorted(done | {partition})
        spec["counts"] = {
            k: int(spec["counts"].get(k, 0) + counts.get(k, 0)) for k in {*spec["counts"], *counts}
        }
        row.spec = spec
        row.partitions_done = len(spec["done"])
        row.users_planned += users
        if row.partitions_done >= row.partitions and row.state == JobState.running:
            row.state = JobState.done
        row.updated_at = datetime.now(UTC)


def fail_job(store: PlanStore, job_id: str, error: str) -> int:
    with store.session() as session:
        session.execute(
            sa.update(PlanJobRow)
            .where(PlanJobRow.job_id == job_id)
            .values(state=JobState.failed, error=error[:2000], updated_at=datetime.now(UTC))
        )
    return 0
