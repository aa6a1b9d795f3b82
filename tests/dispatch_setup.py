"""Plan items for dispatch tests, made without models: campaigns, users in several zones, due sends."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from pushplan.db.store import PlanStore
from pushplan.domain import Campaign
from serving.planner import plan_ids


def campaign(
    campaign_id: str, start: datetime, *, days: int = 2, priority: int = 0, **extra: object
) -> Campaign:
    return Campaign.model_validate(
        {
            "campaign_id": campaign_id,
            "name": campaign_id,
            "channels": extra.pop("channels", ["sandbox"]),
            "variants": [{"variant_id": "a", "title": f"{campaign_id}: hello", "body": "b"}],
            "window": {"start": start.isoformat(), "end": (start + timedelta(days=days)).isoformat()},
            "priority": priority,
            **extra,
        }
    )


def send_items(
    campaign: Campaign, user_ids: list[str], send_at: list[datetime], zones: list[str] | None = None
) -> pd.DataFrame:
    """One planned send per user at the given aware instants, in the given zones (default UTC)."""
    zones = zones or ["UTC"] * len(user_ids)
    at = pd.DatetimeIndex(send_at).tz_convert("UTC")
    return pd.DataFrame(
        {
            "plan_id": plan_ids(campaign.campaign_id, pd.Series(user_ids).to_numpy()),
            "campaign_id": campaign.campaign_id,
            "user_id": user_ids,
            "decision": "send",
            "reason": None,
            "channel": campaign.channels[0].value,
            "variant_id": campaign.variants[0].variant_id,
            "send_at": at,
            "local_send_at": [t.tz_convert(z).isoformat() for t, z in zip(at, zones, strict=True)],
            "p_click": 0.05,
            "propensity": 0.9,
            "state": "planned",
            "timezone": zones,
        }
    )


def store_campaign(store: PlanStore, campaign: Campaign, items: pd.DataFrame) -> None:
    store.save_campaign(campaign)
    store.save_items(items)
