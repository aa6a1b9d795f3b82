"""Processes that start together (uvicorn's workers, service replicas, a worker beside the API) all
migrate the plan store at start-up: they take turns, on both profiles, and every one of them starts."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from pushplan.db.engine import VERSION_TABLE, database_url, migrate
from pushplan.settings import Profile, Settings
from tests.services import REDIS_URL, scratch_database

pytestmark = pytest.mark.integration
PROCESSES = 4


def _migrate(values: dict[str, str], ready: multiprocessing.synchronize.Barrier) -> None:
    settings = Settings(**values)  # type: ignore[arg-type]
    ready.wait()  # all at once
    migrate(settings)


@contextmanager
def _settings(profile: Profile, tmp_path: Path) -> Iterator[dict[str, str]]:
    if profile is Profile.local:
        yield {"data_dir": str(tmp_path / "data")}
        return
    with scratch_database("pushplan_migrate") as url:
        yield {
            "profile": "production",
            "data_dir": str(tmp_path / "data"),
            "redis_url": REDIS_URL,
            "database_url": url,
        }


@pytest.mark.parametrize("profile", [Profile.local, Profile.production])
def test_processes_starting_together_migrate_one_at_a_time(profile: Profile, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with _settings(profile, tmp_path) as values:
        ready = context.Barrier(PROCESSES)
        processes = [context.Process(target=_migrate, args=(values, ready)) for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [p.exitcode for p in processes] == [0] * PROCESSES
        engine = sa.create_engine(database_url(Settings(**values)))  # type: ignore[arg-type]
        with engine.connect() as connection:
            versions = connection.execute(sa.text(f"select version_num from {VERSION_TABLE}")).all()
        engine.dispose()
    assert len(versions) == 1 and versions[0][0] == "0010"
