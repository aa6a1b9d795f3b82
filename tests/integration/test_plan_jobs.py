"""Whole-audience plan jobs through the API and a real Celery worker (local profile: the filesystem
broker, SQLite), against the same plan made in one call: partitions change nothing but the speed."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from cli.demo import demo_campaign, running_worker
from features.audiences import compile_for, select
from features.store import feature_store
from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.app import create_app
from serving.audience import build_audience
from serving.capped_plan import plan_within_caps
from serving.keys import Role, create_key
from serving.scoring import ModelSet
from tests.conftest import SIM_START
from tests.features_setup import built_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_plan_job_plans_its_audience_in_partitions_as_one_plan_would(tmp_path: Path, sim_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", plan_job_partition_users=400)
    built_store(settings, sim_dir)
    migrate(settings)
    store = PlanStore(settings)
    key = create_key(store, Role.campaign)
    start = datetime.combine(SIM_START + timedelta(days=35), datetime.min.time(), tzinfo=UTC)
    campaign = demo_campaign(start)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUSHPLAN_")},
        "PUSHPLAN_DATA_DIR": str(settings.data_dir),
        "PUSHPLAN_PLAN_JOB_PARTITION_USERS": "400",
    }
    headers = {"X-API-Key": key}
    with TestClient(create_app(settings)) as client, running_worker(settings.data_dir, 2, env):
        assert client.post("/v1/campaigns", json=campaign.model_dump(mode="json"), headers=headers).is_success
        created = client.post(
            f"/v1/campaigns/{campaign.campaign_id}/plan-jobs",
            json={"now": start.isoformat(), "seed": 3},
            headers=headers,
        )
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["partitions"] == 4 and job["users"] == 1500 and job["state"] == "running"
        deadline = time.monotonic() + 300
        while job["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            job = client.get(f"/v1/plan-jobs/{job['job_id']}", headers=headers).json()
        assert job["state"] == "done", (job, (settings.data_dir / "worker.log").read_text()[-3000:])
        assert job["partitions_done"] == 4 and job["users_planned"] == 1500
        assert sum(job["counts"].values()) == 1500
        missing = client.get("/v1/plan-jobs/nope", headers=headers)
        assert missing.status_code == 404

        # The partitions changed nothing but the speed: the same items as one plan of everyone.
        stored = pd.DataFrame([i.model_dump() for i in store.list_items(campaign.campaign_id, limit=10_000)])
        users = pd.read_parquet(settings.users_path, columns=["user_id"])["user_id"].astype(str).tolist()
        audience = build_audience(
            feature_store(settings),
            settings,
            ModelSet.load(settings),
            campaign,
            users,
            start,
            source="offline",
        )
        whole = plan_within_caps(store, settings, campaign, audience, start, seed=3).items
        columns = ["user_id", "decision", "reason", "variant_id", "send_at"]
        assert len(stored) == 1500
        pd.testing.assert_frame_equal(
            stored[columns].sort_values("user_id").reset_index(drop=True),
            whole[columns]
            .astype({"send_at": stored["send_at"].dtype})
            .sort_values("user_id")
            .reset_index(drop=True),
            check_dtype=False,
        )

        # A campaign with an audience: the job plans its members only, and the others get no item.
        rule = 'lifecycle_stage = "active" and did purchase in last 14 days'
        members = set(select(settings, compile_for(settings, rule), start).frame["user_id"])
        assert 0 < len(members) < 1500
        chosen = campaign.model_copy(update={"campaign_id": "for-an-audience", "audience": rule})
        assert client.post("/v1/campaigns", json=chosen.model_dump(mode="json"), headers=headers).is_success
        job = client.post(
            "/v1/campaigns/for-an-audience/plan-jobs", json={"now": start.isoformat()}, headers=headers
        ).json()
        assert job["users"] == len(members), job
        while job["state"] == "running" and time.monotonic() < deadline + 300:
            time.sleep(0.5)
            job = client.get(f"/v1/plan-jobs/{job['job_id']}", headers=headers).json()
        assert job["state"] == "done" and job["users_planned"] == len(members), job
        planned = {i.user_id for i in store.list_items("for-an-audience", limit=10_000)}
        assert planned == members
