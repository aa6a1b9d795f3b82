"""The HTTP service on the production profile: features online in Redis, plans and keys in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Profile, Settings
from serving.app import create_app
from serving.keys import Role, create_key
from tests import api_security
from tests.api_audiences import audience_scenario
from tests.features_setup import built_store
from tests.services import REDIS_URL, scratch_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW = "2026-10-06T00:00:00Z"
CAMPAIGN = {
    "campaign_id": "prod",
    "name": "Production profile",
    "channels": ["push", "sms"],
    "variants": [
        {"variant_id": "a", "title": "Save 30% today", "tags": ["discount"]},
        {"variant_id": "b", "title": "What's new?", "tags": ["question", "news"]},
        {"variant_id": "c", "title": "Picked for you", "tags": ["personal"]},
        {"variant_id": "d", "title": "Don't miss out", "tags": ["urgency"]},
    ],
    "window": {"start": NOW, "end": "2026-10-07T00:00:00Z"},
    "holdout_fraction": 0.2,
}


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> Iterator[Settings]:
    """A PostgreSQL database and a Feast project of its own, removed afterwards."""
    with scratch_database("pushplan_api") as database_url:
        settings = Settings(
            profile=Profile.production,
            data_dir=tmp_path_factory.mktemp("api-production"),
            redis_url=REDIS_URL,
            database_url=database_url,
            feast_project=f"test_{uuid.uuid4().hex[:10]}",
        )
        store = built_store(settings, sim_dir)
        try:
            yield settings
        finally:
            store.teardown()


def test_plans_are_made_from_redis_features_and_stored_in_postgresql(production: Settings) -> None:
    migrate(production)
    key = create_key(PlanStore(production), Role.campaign)
    headers = {"X-API-Key": key}
    users = [f"u{i:07d}" for i in range(400)]
    with TestClient(create_app(production)) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] is True
        assert client.post("/v1/campaigns", json=CAMPAIGN, headers=headers).status_code == 201
        body = {"campaign_id": "prod", "user_ids": users, "now": NOW}
        planned = client.post("/v1/plans", json=body, headers=headers)
        assert planned.status_code == 200, planned.text
        result = planned.json()

    assert sum(result["counts"].values()) == len(users)
    sends = [i for i in result["items"] if i["decision"] == "send"]
    assert sends and {i["variant_id"] for i in sends} <= {"a", "b", "c", "d"}
    assert {i["channel"] for i in sends} <= {"push", "sms"}
    # Online profiles from Redis decide the channel: opted-out users are skipped with the reason.
    assert all(i["reason"] == "opted_out" for i in result["items"] if i["channel"] is None)

    with psycopg.connect(production.database_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        stored = dict(
            db.execute(
                "select decision, count(*) from plan_items where campaign_id = 'prod' group by 1"
            ).fetchall()
        )
        hashed = db.execute("select secret_hash from api_keys").fetchone()
    assert stored == result["counts"]
    assert hashed is not None and key.split("_", 2)[2] not in hashed[0]  # only the hash is stored


def test_audiences_preview_and_plans_on_the_production_profile(production: Settings) -> None:
    migrate(production)
    headers = {"X-API-Key": create_key(PlanStore(production), Role.campaign)}
    with TestClient(create_app(production)) as client:
        audience_scenario(client, headers, production, NOW)


def test_security_on_the_production_profile(production: Settings) -> None:
    """Routes × roles × teams, approvals, audit and keys on PostgreSQL (tests/api_security.py)."""
    migrate(production)
    with TestClient(create_app(production)) as client:
        api_security.every_route_for_every_role_and_team(client, production)
        api_security.cross_team_writes_are_refused(client, production)
        api_security.approvals_hold(client, production)
        api_security.audit_records_each_change(client, production)
        api_security.keys_live_and_die(client, production)
    # PostgreSQL itself refuses to change the audit trail.
    assert production.database_url is not None
    with psycopg.connect(production.database_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        assert db.execute("select count(*) from audit_log").fetchone()[0] > 0  # type: ignore[index]
        for statement in ("update audit_log set outcome = '200'", "delete from audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                db.execute(statement)
            db.rollback()


def test_the_body_limit_holds_for_chunked_uploads_on_the_production_profile(production: Settings) -> None:
    migrate(production)
    with api_security.live_server(production) as url:
        api_security.body_limit_holds(url, production)


def test_rate_limits_are_shared_by_every_service_process(production: Settings) -> None:
    """Two apps (two service processes' worth) count one key together, in Redis."""
    limited = production.model_copy(update={"api_rate_limit": "6/minute"})
    migrate(limited)
    key = {"X-API-Key": create_key(PlanStore(limited), Role.operator)}
    with TestClient(create_app(limited)) as first, TestClient(create_app(limited)) as second:
        answers = [
            (first if i % 2 else second).get("/v1/audiences/fields", headers=key).status_code
            for i in range(7)
        ]
    assert answers == [200] * 6 + [429]


def test_a_key_revoked_through_one_process_is_refused_by_another(production: Settings) -> None:
    migrate(production)
    store = PlanStore(production)
    admin = {"X-API-Key": create_key(store, Role.admin)}
    key = create_key(store, Role.operator)
    with TestClient(create_app(production)) as first, TestClient(create_app(production)) as second:
        assert second.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 200
        assert first.post(f"/v1/keys/{key.split('_')[1]}/revoke", headers=admin).status_code == 200
        assert second.get("/v1/audiences/fields", headers={"X-API-Key": key}).status_code == 401
