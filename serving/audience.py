"""From a campaign and a list of users to the planner's Audience: features read in bulk, models on arrays."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.columns import instants, texts
from features.store import PROFILE_REFS, Source, profile_columns, read_columns, service_columns, stored_refs
from pushplan.clock import smooth_hours
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.planner import Audience
from serving.scoring import ModelSet
from training.specs import SEND_HOUR, SPECS, VARIANT

# Each model's own spec's service, where no champion says otherwise.
DEFAULT_SERVICES = {name: spec.feature_service for name, spec in SPECS.items()}


def audience_refs(store: FeatureStore, services: Mapping[str, str] = DEFAULT_SERVICES) -> list[str]:
    """Every stored feature a plan reads: the profile's, and those of the send-hour and variant models'
    feature services (`ModelSet.services`: each champion's own)."""
    refs = [
        *PROFILE_REFS,
        *stored_refs(store, services[SEND_HOUR.name]),
        *stored_refs(store, services[VARIANT.name]),
    ]
    return list(dict.fromkeys(refs))


def build_audience(
    store: FeatureStore,
    settings: Settings,
    models: ModelSet,
    campaign: Campaign,
    user_ids: list[str],
    now: datetime,
    *,
    source: Source = "online",
) -> Audience:
    """Profiles, hour scores and variant scores for every user, from ONE feature read, scored in batch.

    `source="online"` reads Feast's online store (a request's users); `source="offline"` reads
    Feast's offline store as of `now` (the latest daily snapshot at or before it): the way to plan a
    whole audience without an online read per user, and without materializing it first. Both give
    the same Audience for the same stored snapshot (pushes between builds reach the online store only).

    The variant model is asked about each variant at the hour the user would get it (the best of
    their hour scores), because its features include engagement at the candidate hour.
    """
    services = models.services
    stored = read_columns(store, user_ids, audience_refs(store, services), source=source, at=now)
    profiles = profile_columns(settings, user_ids, stored)
    n = len(user_ids)
    window_start = max(pd.Timestamp(campaign.window.start), pd.Timestamp(now))
    hour_features = service_columns(store, settings, services[SEND_HOUR.name], user_ids, stored)
    hour_features["is_weekend"] = is_weekend(window_start, profiles["timezone"])
    hour_scores = models.hour_scores(hour_features)
    request = {
        "request_time": instants(now, n),
        "candidate_local_hour": smooth_hours(hour_scores).argmax(axis=1).astype(np.float64),
        "window_start": instants(campaign.window.start, n),
        "window_end": instants(campaign.window.end, n),
        "variant_tags": texts([""] * n),
    }
    variant_features = service_columns(store, settings, services[VARIANT.name], user_ids, stored, request)
    variant_scores = models.variant_scores(
        variant_features,
        [(v.title, list(v.tags)) for v in campaign.variants],
        [v.variant_id for v in campaign.variants],
        user_ids,
        campaign.campaign_id,
    )
    return Audience(profiles, hour_scores, variant_scores, dict(models.versions))


def is_weekend(moment: pd.Timestamp, zones: np.ndarray) -> np.ndarray:
    """1.0 where `moment` falls on a Saturday or Sunday in the user's zone, else 0.0 (once per zone)."""
    by_zone = {zone: float(moment.tz_convert(zone).dayofweek >= 5) for zone in set(zones)}
    return np.array([by_zone[zone] for zone in zones], dtype=np.float64)
