"""Audiences for the planner: the offline read gives the same Audience as the online one, and the
serving path's array scorers give the same numbers as the logged pipelines."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore
from sklearn.pipeline import Pipeline

from features.feature_repo.transforms import request_context_features
from features.store import online_features, read_columns, read_stored, service_columns, snapshot_span
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.audience import audience_refs, build_audience
from serving.planner import Audience
from serving.scoring import HEURISTIC, ModelSet, Scorer, variant_rows
from tests.features_setup import built_store
from training.evaluation import with_variant
from training.frames import FeatureFrame
from training.habits import COMPONENTS, HourBlend, Population
from training.inference import predict
from training.pipeline import input_columns
from training.specs import SEND_HOUR, VARIANT

pytestmark = pytest.mark.slow

VARIANTS = [
    {"variant_id": "a", "title": "Save 30% today only", "tags": ["discount", "urgency"]},
    {"variant_id": "b", "title": "Any news for you?", "tags": ["question", "news"]},
    {"variant_id": "c", "title": "Picked for you", "tags": ["personal"]},
    {"variant_id": "d", "title": "Last chance: 2 left", "tags": []},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> tuple[Settings, FeatureStore]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("audience"))
    return settings, built_store(settings, sim_dir)


@pytest.fixture(scope="module")
def users(sim_dir: Path) -> list[str]:
    truth = pd.read_parquet(sim_dir / "truth" / "users.parquet")
    cold = truth.loc[truth["cold_start"], "user_id"].head(3).tolist()
    return [*truth.loc[~truth["cold_start"], "user_id"].head(250), *cold, "never-seen", "u0000001"]


def _campaign(start: Any) -> Campaign:
    return Campaign.model_validate(
        {
            "campaign_id": "audience-test",
            "name": "test",
            "channels": ["push"],
            "variants": VARIANTS,
            "window": {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
            "holdout_fraction": 0.1,
        }
    )


def _request(at: Any, hour: int) -> dict[str, Any]:
    """The variant service's request context: a 12-hour window from `at`, the hour being scored."""
    window = {"window_start": at, "window_end": at + timedelta(hours=12)}
    return {"request_time": at, "candidate_local_hour": hour, **window, "variant_tags": ""}


def _fit(spec: Any, store: FeatureStore, rows: pd.DataFrame, labels: np.ndarray) -> Any:
    """A small pipeline shaped like the logged ones (FeatureFrame → LGBMClassifier)."""
    frame = FeatureFrame(columns=input_columns(spec, store)).fit(rows)
    classifier = lgb.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1)
    classifier.fit(frame.transform(rows), labels)
    return Pipeline([("features", frame), ("lgbm", classifier)])


@pytest.fixture(scope="module")
def models(built: tuple[Settings, FeatureStore], users: list[str]) -> ModelSet:
    settings, store = built
    _, last = snapshot_span(settings)
    rng = np.random.default_rng(0)
    hours = online_features(store, settings, SEND_HOUR.feature_service, users).assign(is_weekend=0.0)
    hour_model = _fit(SEND_HOUR, store, hours, rng.integers(0, 24, len(hours)))
    request = _request(last, 19)
    variant = online_features(store, settings, VARIANT.feature_service, users, request)
    examples = pd.concat([with_variant(variant, v["title"], v["tags"]) for v in VARIANTS], ignore_index=True)
    variant_model = _fit(VARIANT, store, examples, (rng.random(len(examples)) < 0.3).astype(int))
    return ModelSet(
        settings,
        models={SEND_HOUR.name: hour_model, VARIANT.name: variant_model},
        versions={"click": HEURISTIC, SEND_HOUR.name: "1", VARIANT.name: "1"},
    )


def assert_same_audience(online: Audience, offline: Audience) -> None:
    assert list(online.users) == list(offline.users)
    for name in online.users:
        np.testing.assert_array_equal(online.users[name], offline.users[name])
    np.testing.assert_array_equal(online.hour_scores, offline.hour_scores)
    np.testing.assert_array_equal(online.variant_scores, offline.variant_scores)
    assert online.model_versions == offline.model_versions


@pytest.mark.parametrize("with_models", [False, True], ids=["heuristics", "models"])
def test_offline_read_gives_the_online_audience(
    built: tuple[Settings, FeatureStore], users: list[str], models: ModelSet, with_models: bool
) -> None:
    settings, store = built
    _, last = snapshot_span(settings)
    now = last + timedelta(hours=3)
    campaign = _campaign(now)
    chosen = models if with_models else ModelSet(settings, versions=dict.fromkeys(models.versions, HEURISTIC))
    online = build_audience(store, settings, chosen, campaign, users, now)
    offline = build_audience(store, settings, chosen, campaign, users, now, source="offline")
    assert len(online.users["user_id"]) == len(users) and online.variant_scores.shape == (len(users), 4)
    assert_same_audience(online, offline)
    # The users who have stored features really have them, read both ways.
    stored = read_stored(store, users[:5], audience_refs(store), source="offline", at=now)
    assert stored["timezone"].notna().all()


def test_offline_read_before_any_snapshot_is_all_cold_start(
    built: tuple[Settings, FeatureStore], users: list[str]
) -> None:
    settings, store = built
    first, _ = snapshot_span(settings)
    stored = read_stored(
        store, users[:10], audience_refs(store), source="offline", at=first - timedelta(days=1)
    )
    assert len(stored) == 10 and stored.isna().all(axis=None)


def test_array_scorers_give_the_pipelines_numbers(
    built: tuple[Settings, FeatureStore], users: list[str], models: ModelSet
) -> None:
    settings, store = built
    _, last = snapshot_span(settings)
    hours = online_features(store, settings, SEND_HOUR.feature_service, users).assign(is_weekend=1.0)
    hour_model = models.models[SEND_HOUR.name]
    assert Scorer.of(hour_model) is not None
    np.testing.assert_array_equal(models.hour_scores(hours), predict(SEND_HOUR, hour_model, hours))
    np.testing.assert_array_equal(
        models.hour_scores(hours.head(1)), predict(SEND_HOUR, hour_model, hours.head(1))
    )
    # The send-hour blend: the trees by their array form, then the habits mixed in, as `predict` does.
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.ones(len(COMPONENTS)), size=4)
    blend = HourBlend(hour_model, Population.fit(rng.integers(0, 24, 500), rng.random(500) < 0.3), weights)
    blended = ModelSet(settings, models={SEND_HOUR.name: blend}, versions={SEND_HOUR.name: "2"})
    np.testing.assert_allclose(
        blended.hour_scores(hours), predict(SEND_HOUR, blend, hours), rtol=0, atol=1e-12
    )

    request = pd.DataFrame(
        {
            "request_time": last,
            "candidate_local_hour": np.arange(len(users)) % 24,
            "window_start": last,
            "window_end": last + timedelta(hours=12),
            "variant_tags": "",
        }
    )
    rows = online_features(store, settings, VARIANT.feature_service, users, request)
    variants = [(v["title"], list(v["tags"])) for v in VARIANTS]
    expected = np.column_stack(
        [predict(VARIANT, models.models[VARIANT.name], with_variant(rows, t, tags)) for t, tags in variants]
    )
    np.testing.assert_array_equal(models.variant_scores(rows, variants), expected)
    for title, tags in variants:
        pd.testing.assert_frame_equal(variant_rows(rows, title, tags), with_variant(rows, title, tags))


def test_serving_columns_score_as_the_mlflow_models_predict_proba(
    built: tuple[Settings, FeatureStore], users: list[str], models: ModelSet, tmp_path: Path
) -> None:
    """What a plan scores (one online read as Columns, cold start filled, request features as
    arrays, the array scorer) against the models saved and loaded by MLflow, whose `predict_proba`
    reads the same users' features as a pandas frame: equal to 1e-6, one user or many."""
    import mlflow

    settings, store = built
    _, last = snapshot_span(settings)
    loaded = {}
    for name in (SEND_HOUR.name, VARIANT.name):
        mlflow.sklearn.save_model(  # as training.pipeline logs them
            models.models[name],
            tmp_path / name,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        )
        loaded[name] = mlflow.sklearn.load_model(str(tmp_path / name))
    served = ModelSet(settings, models=loaded, versions={SEND_HOUR.name: "1", VARIANT.name: "1"})
    request = _request(last, 20)
    variants = [(v["title"], list(v["tags"])) for v in VARIANTS]
    for sample in (users[:1], users[-6:], users):  # one user, the cold-start ones, all
        stored = read_columns(store, sample, audience_refs(store))
        hours = service_columns(store, settings, SEND_HOUR.feature_service, sample, stored)
        hours["is_weekend"] = np.ones(len(sample))
        frame = online_features(store, settings, SEND_HOUR.feature_service, sample).assign(is_weekend=1.0)
        expected = np.zeros((len(sample), 24))
        expected[:, loaded[SEND_HOUR.name].classes_] = loaded[SEND_HOUR.name].predict_proba(frame)
        np.testing.assert_allclose(served.hour_scores(hours), expected, rtol=0, atol=1e-6)

        rows = service_columns(store, settings, VARIANT.feature_service, sample, stored, request)
        frame = online_features(store, settings, VARIANT.feature_service, sample, request)
        expected = np.column_stack(
            [loaded[VARIANT.name].predict_proba(with_variant(frame, t, tags))[:, 1] for t, tags in variants]
        )
        np.testing.assert_allclose(served.variant_scores(rows, variants), expected, rtol=0, atol=1e-6)


def _reference_at_hour(vectors: pd.Series, hours: np.ndarray, offset: int = 0) -> np.ndarray:
    """The per-row definition the vectorised transform must keep."""
    out = np.full(len(vectors), np.nan)
    for row, (vector, hour) in enumerate(zip(vectors, hours, strict=True)):
        if vector is not None and len(vector) == 24 and not np.isnan(hour):
            out[row] = float(vector[(int(hour) + offset) % 24])
    return out


def _reference_rank(vectors: pd.Series, hours: np.ndarray) -> np.ndarray:
    out = np.full(len(vectors), np.nan)
    for row, (vector, hour) in enumerate(zip(vectors, hours, strict=True)):
        if vector is not None and len(vector) == 24 and not np.isnan(hour):
            values = np.asarray(vector, dtype=float)
            out[row] = float((values > values[int(hour) % 24]).sum())
    return out


def test_request_features_match_their_per_row_definition() -> None:
    rng = np.random.default_rng(3)
    n = 60
    vectors = [
        None if i % 7 == 0 else list(rng.random(23)) if i % 11 == 0 else rng.random(24).astype(np.float32)
        for i in range(n)
    ]
    frame = pd.DataFrame(
        {
            "activity_by_hour": pd.Series(vectors, dtype=object),
            "push_engagement_by_hour": pd.Series(vectors[::-1], dtype=object),
            "candidate_local_hour": rng.choice([0.0, 7.0, 23.0, np.nan, -1.0, 30.0], n),
            "request_time": pd.Timestamp("2026-10-01T00:00:00Z"),
            "last_push_epoch_s": np.nan,
            "last_click_epoch_s": np.nan,
            "window_start": pd.Timestamp("2026-10-01T00:00:00Z"),
            "window_end": pd.Timestamp("2026-10-02T00:00:00Z"),
            "variant_tags": "discount",
            **{f"affinity_{tag}": rng.random(n) for tag in ("discount", "urgency", "news", "personal")},
            **{f"affinity_{tag}": rng.random(n) for tag in ("question", "emoji", "social", "reminder")},
        }
    )
    out = request_context_features(frame)
    hours = frame["candidate_local_hour"].to_numpy()
    activity, push = frame["activity_by_hour"], frame["push_engagement_by_hour"]
    np.testing.assert_array_equal(out["engagement_at_hour"], _reference_at_hour(activity, hours))
    near = sum(_reference_at_hour(activity, hours, k) for k in (0, -1, 1))
    np.testing.assert_array_equal(out["engagement_near_hour"], near)
    np.testing.assert_array_equal(out["push_engagement_at_hour"], _reference_at_hour(push, hours))
    np.testing.assert_array_equal(out["hour_rank"], _reference_rank(activity, hours))
