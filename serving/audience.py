"""From a campaign and a list of users to the planner's Audience: features read in bulk, models on arrays."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.store import PROFILE_REFS, Source, profile_frame, read_stored, service_features, stored_refs
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
    stored = read_stored(store, user_ids, audience_refs(store, services), source=source, at=now)
    users = profile_frame(settings, user_ids, stored)
    window_start = max(pd.Timestamp(campaign.window.start), pd.Timestamp(now))
    hour_features = service_features(store, settings, services[SEND_HOUR.name], user_ids, stored)
    hour_features["is_weekend"] = is_weekend(window_start, users["timezone"])
    hour_scores = models.hour_scores(hour_features)
    request = pd.DataFrame(
        {
            "request_time": pd.Timestamp(now),
            "candidate_local_hour": smooth_hours(hour_scores).argmax(axis=1),
            "window_start": pd.Timestamp(campaign.window.start),
            "window_end": pd.Timestamp(campaign.window.end),
            "variant_tags": "",
        },
        index=range(len(user_ids)),
    )
    variant_features = service_features(store, settings, services[VARIANT.name], user_ids, stored, request)
    variant_scores = models.variant_scores(
        variant_features,
        [(v.title, list(v.tags)) for v in campaign.variants],
        [v.variant_id for v in campaign.variants],
        user_ids,
        campaign.campaign_id,
    )
    return Audience(users, hour_scores, variant_scores, dict(models.versions))


def is_weekend(moment: pd.Timestamp, zones: pd.Series) -> np.ndarray:
    """1.0 where `moment` falls on a Saturday or Sunday in the user's zone, else 0.0 (once per zone)."""
    by_zone = {zone: float(moment.tz_convert(zone).dayofweek >= 5) for zone in pd.unique(zones)}
    return zones.map(by_zone).to_numpy(dtype=float)
