"""`pushplan check` against the real Redis and PostgreSQL of the production profile."""

from __future__ import annotations

import socket

import pytest

from pushplan.reachability import check_services
from pushplan.settings import Settings
from tests.services import DATABASE_URL, REDIS_URL, require_services

pytestmark = pytest.mark.integration


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Settings:
    require_services()
    monkeypatch.setenv("PUSHPLAN_PROFILE", "production")
    monkeypatch.setenv("PUSHPLAN_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("PUSHPLAN_DATABASE_URL", DATABASE_URL)
    return Settings()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_production_services_answer(production: Settings) -> None:
    statuses = {s.name: s for s in check_services(production)}
    assert set(statuses) == {"data dir", "redis", "postgresql"}
    assert all(s.ok for s in statuses.values()), statuses
    assert statuses["redis"].detail.startswith("Redis ")
    assert statuses["postgresql"].detail.startswith("PostgreSQL ")


def test_a_down_service_is_reported_with_its_target_and_no_password(production: Settings) -> None:
    port = _free_port()
    broken = production.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "database_url": f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{port}/test",
        }
    )
    statuses = {s.name: s for s in check_services(broken, timeout_s=1)}
    assert not statuses["redis"].ok and not statuses["postgresql"].ok
    assert f":{port}" in statuses["postgresql"].target
    assert "s3cret" not in statuses["postgresql"].target + statuses["postgresql"].detail
    assert "refused" in statuses["redis"].detail.lower()
    assert statuses["data dir"].ok
