"""From a campaign and a list of users to the planner's Audience: features read in bulk, models on arrays."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.store import online_features, profiles
from pushplan.clock import smooth_hours
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.models import ModelSet
from serving.planner import Audience


def build_audience(
    store: FeatureStore,
    settings: Settings,
    models: ModelSet,
    campaign: Campaign,
    user_ids: list[str],
    now: datetime,
) -> Audience:
    """Profiles, hour scores and variant scores for every user, each read and scored in one batch.

    The variant model is asked about each variant at the hour the user would get it (the best of
    their hour scores), because its features include engagement at the candidate hour.
    """
    users = profiles(store, settings, user_ids)
    window_start = max(pd.Timestamp(campaign.window.start), pd.Timestamp(now))
    hour_features = online_features(store, settings, "send_hour_v1", user_ids)
    weekend = [window_start.tz_convert(zone).dayofweek >= 5 for zone in users["timezone"]]
    hour_features["is_weekend"] = np.asarray(weekend, dtype=float)
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
    variant_features = online_features(store, settings, "variant_v1", user_ids, request)
    variant_scores = models.variant_scores(
        variant_features, [(v.title, list(v.tags)) for v in campaign.variants]
    )
    return Audience(users, hour_scores, variant_scores, dict(models.versions))
