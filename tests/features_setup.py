"""Builds a feature store over the shared simulated population, for the feature-store tests."""

from __future__ import annotations

from pathlib import Path

from feast import FeatureStore

from features.event_store import EventStore
from features.store import apply, feature_store, materialize, write_defaults
from features.tables import build_feature_tables
from pushplan.settings import Settings


def built_store(settings: Settings, sim_dir: Path) -> FeatureStore:
    """Import the simulation, build the tables, apply the repo and materialize it online."""
    events = EventStore(settings)
    for name in ("users.parquet", "events.parquet", "campaigns.json"):
        events.import_file(sim_dir / name)
    build_feature_tables(settings)
    write_defaults(settings)
    store = feature_store(settings)
    apply(store, settings)
    materialize(store, settings)
    return store
