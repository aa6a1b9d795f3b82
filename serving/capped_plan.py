"""A campaign's plan for an audience, weighed against the plan store under the frequency caps: the one
path `POST /v1/plans` and `pushplan plan` share (the planner is pure; this is where the store comes in)."""

from __future__ import annotations

from datetime import datetime

from dispatch.plan_store import PlanStore
from pushplan.caps import FrequencyCap
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.planner import Arbitration, Audience, QuietHours, arbitrate_caps, plan


def plan_within_caps(
    store: PlanStore,
    settings: Settings,
    campaign: Campaign,
    audience: Audience,
    now: datetime,
    *,
    seed: int = 0,
) -> Arbitration:
    """Plan the audience, then keep it within caps given other campaigns' held sends; stores nothing."""
    user_ids = audience.users["user_id"].astype(str).tolist()
    cap = FrequencyCap.of(settings, campaign)
    kept = store.sends_kept(campaign.campaign_id, user_ids) if cap.campaign_total is not None else 0
    quiet = QuietHours(settings.quiet_start_hour, settings.quiet_end_hour)
    return arbitrate_caps(
        campaign,
        plan(campaign, audience, now, seed=seed, quiet=quiet),
        audience,
        now,
        cap,
        store.held_sends(campaign, user_ids),
        quiet=quiet,
        dispatched=kept,
    )
