"""Keys and campaigns cached per process under change stamps: a change committed by any process is
seen at the next read of every other, on both profiles; a change made outside pushplan's sessions
is seen within the cache's lifetime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pushplan.db.api_keys import find_key, revoke_key
from pushplan.db.changes import API_KEYS, Cached
from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Profile, Settings
from serving.keys import Role, authenticate, create_key
from tests.dispatch_setup import campaign
from tests.services import REDIS_URL, scratch_database

START = datetime(2026, 11, 20, 9, tzinfo=UTC)


@pytest.fixture(params=["local", "production"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "local":
        yield Settings(data_dir=tmp_path)
        return
    with scratch_database("stamps") as url:
        yield Settings(
            profile=Profile.production,
            data_dir=tmp_path,
            redis_url=REDIS_URL,
            database_url=url,
            feast_project=f"stamps_{tmp_path.name[-8:]}",
        )


def _two_processes(settings: Settings) -> tuple[PlanStore, PlanStore]:
    """Two stores on the same database, stamps and data dir: what two service processes hold."""
    migrate(settings)
    return PlanStore(settings), PlanStore(settings)


def test_a_key_revoked_by_one_process_is_refused_by_the_other_at_its_next_request(settings: Settings) -> None:
    serving, admin = _two_processes(settings)
    presented = create_key(admin, Role.campaign)
    now = datetime.now(UTC)
    assert authenticate(serving, presented, now) is not None
    assert authenticate(serving, presented, now) is not None  # now from the cache
    key_id = presented.split("_", 2)[1]
    revoke_key(admin, key_id, now)
    assert authenticate(serving, presented, now) is None


def test_a_campaign_changed_by_one_process_is_read_anew_by_the_other(settings: Settings) -> None:
    serving, other = _two_processes(settings)
    other.save_campaign(campaign("c", START))

    def meta() -> object:
        return serving.cached_campaigns.get("c", lambda: serving.campaign_meta("c"))

    first = meta()
    assert meta() is first  # cached: the same record, no second read
    other.save_campaign(campaign("c", START).model_copy(update={"name": "renamed"}))
    assert meta() is not first
    assert meta().campaign.name == "renamed"  # type: ignore[attr-defined]


def test_a_change_outside_pushplan_is_seen_within_the_cache_lifetime(settings: Settings) -> None:
    serving, other = _two_processes(settings)
    key_id = create_key(other, Role.campaign).split("_", 2)[1]
    short = Cached(serving.stamps, API_KEYS, seconds=0.3)
    assert short.get(key_id, lambda: find_key(serving, key_id)).role == "campaign"  # type: ignore[union-attr]
    with other.engine.begin() as connection:  # by hand in SQL: no stamp moves
        connection.execute(sa.text("UPDATE api_keys SET role = 'operator' WHERE key_id = :k"), {"k": key_id})
    assert short.get(key_id, lambda: find_key(serving, key_id)).role == "campaign"  # type: ignore[union-attr]
    time.sleep(0.35)
    assert short.get(key_id, lambda: find_key(serving, key_id)).role == "operator"  # type: ignore[union-attr]
