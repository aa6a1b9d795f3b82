"""Fixtures shared by the HTTP service's tests (test_api.py and test_api_schema.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pushplan.db.engine import migrate
from pushplan.db.store import PlanStore
from pushplan.settings import Settings
from serving.app import create_app
from serving.keys import Role, create_key
from tests.features_setup import built_store


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, sim_dir: Path
) -> Iterator[tuple[TestClient, dict[Role, str], Settings]]:
    """A running app over a small feature store, with one API key per role."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("api"))
    built_store(settings, sim_dir)
    migrate(settings)
    keys = {role: create_key(PlanStore(settings), role) for role in Role}
    with TestClient(create_app(settings)) as client:
        yield client, keys, settings
