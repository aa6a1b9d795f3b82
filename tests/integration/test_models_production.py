"""The production profile end to end for a model: Feast on Redis, MLflow on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.store import online_features
from pushplan.settings import Profile, Settings
from tests.features_setup import built_store
from tests.services import REDIS_URL, scratch_database
from training.inference import load_champion, predict
from training.pipeline import train
from training.specs import SEND_HOUR
from training.tracking import CHAMPION, configure, list_models, tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A database of its own for MLflow (registry names are global), dropped afterwards."""
    with scratch_database("pushplan_test") as database_url:
        yield Settings(
            profile=Profile.production,
            data_dir=tmp_path_factory.mktemp("production-models"),
            redis_url=REDIS_URL,
            database_url=database_url,
            feast_project=f"test_{uuid.uuid4().hex[:10]}",
        )


def test_train_registers_in_postgresql_and_serves_from_redis_features(
    production: Settings, sim_dir: Path
) -> None:
    store = built_store(production, sim_dir)
    try:
        assert tracking_uri(production).startswith("postgresql+psycopg://")
        result = train(SEND_HOUR, production, eval_days=7)
        assert result.promoted and result.version == 1

        client = configure(production)
        assert str(client.get_model_version_by_alias(SEND_HOUR.registered_name, CHAMPION).version) == "1"
        listed = {m.name: m for m in list_models(client, {SEND_HOUR.registered_name: SEND_HOUR.metric})}
        assert listed[SEND_HOUR.registered_name].champion_metric == pytest.approx(result.value)

        # The champion, loaded back from the registry, scores features read online from Redis.
        model = load_champion(SEND_HOUR, production)
        users = ["u0000001", "u0000002", "nobody-yet"]
        rows = online_features(store, production, SEND_HOUR.feature_service, users).assign(is_weekend=0.0)
        proba = predict(SEND_HOUR, model, rows)
        assert proba.shape == (3, 24)
        assert proba.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    finally:
        store.teardown()
