"""The production profile's online store: materialize into the real Redis and read back what SQLite holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from feast import FeatureStore

from features.store import feature_store, materialize, online_features, snapshot_span
from pushplan.settings import Profile, Settings
from tests.features_setup import built_store
from tests.services import DATABASE_URL, REDIS_URL, require_services

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def redis_store(
    tmp_path_factory: pytest.TempPathFactory, sim_dir: Path
) -> Iterator[tuple[Settings, FeatureStore]]:
    require_services()
    # A project name of its own keeps this run's keys apart from anything else in the shared Redis.
    settings = Settings(
        profile=Profile.production,
        data_dir=tmp_path_factory.mktemp("redis-features"),
        redis_url=REDIS_URL,
        database_url=DATABASE_URL,
        feast_project=f"test_{uuid.uuid4().hex[:10]}",
    )
    store = built_store(settings, sim_dir)
    yield settings, store
    store.teardown()


def test_materialized_features_are_in_redis_and_match_sqlite(
    redis_store: tuple[Settings, FeatureStore], sim_dir: Path, tmp_path: Path
) -> None:
    settings, store = redis_store
    assert store.config.online_store.type == "redis"
    client = redis.Redis.from_url(REDIS_URL)
    keys = client.keys(f"*{settings.feast_project}*".encode())
    assert len(keys) >= 1400  # one hash per user (1,500 minus a few cold-start users without a row yet)

    local_settings = Settings(data_dir=tmp_path / "local")
    local = built_store(local_settings, sim_dir)
    users = [*pd.read_parquet(sim_dir / "users.parquet")["user_id"].iloc[:60].tolist(), "never-seen"]
    from_redis = online_features(store, settings, "send_hour_v2", users)
    from_sqlite = online_features(local, local_settings, "send_hour_v2", users)
    for column in from_redis.columns:
        a, b = from_redis[column].tolist(), from_sqlite[column].tolist()
        if isinstance(a[0], list | np.ndarray):
            assert np.allclose(np.stack(a), np.stack(b)), column
        elif pd.api.types.is_numeric_dtype(from_redis[column]):
            assert np.allclose(
                from_redis[column].astype(float), from_sqlite[column].astype(float), equal_nan=True
            )
        else:
            assert a == b, column


def test_a_second_materialize_is_a_no_op(redis_store: tuple[Settings, FeatureStore]) -> None:
    settings, _ = redis_store
    _, last = snapshot_span(settings)
    start, end = materialize(feature_store(settings), settings)
    assert start == end >= last
