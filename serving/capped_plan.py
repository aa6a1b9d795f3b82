"""A campaign's plan for its users, weighed against the plan store under the frequency caps: the one
path `POST /v1/plans`, `pushplan plan` and plan-job partitions share (the planner is pure; this is
where the features, the models and the store come in)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from features.audiences import compile_for, select
from features.store import Source, feature_store
from pushplan.caps import FrequencyCap
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign, PlannedByTrigger
from pushplan.settings import Settings
from pushplan.windows import QuietHours
from serving.audience import build_audience
from serving.planner import Arbitration, Audience, arbitrate_caps, plan, user_ids_of
from serving.scoring import ModelSet


def plan_users(
    store: PlanStore,
    settings: Settings,
    models: ModelSet,
    campaign: Campaign,
    user_ids: list[str],
    now: datetime,
    *,
    seed: int = 0,
    source: Source = "online",
    save: bool = True,
    members_only: bool = False,
) -> Arbitration:
    """Read the users' features (one read, `source` online or offline as of `now`), score them, plan
    them within the caps and, with `save`, store the items and mark the sends they displaced.

    Listed users outside the campaign's audience are skipped `not_in_audience`, unless the caller
    says they were selected by it (`members_only`: a plan job's partitions)."""
    if campaign.trigger is not None:
        raise PlannedByTrigger(campaign.campaign_id)
    audience = build_audience(
        feature_store(settings), settings, models, campaign, user_ids, now, source=source
    )
    if campaign.audience is not None and not members_only:
        rule = compile_for(settings, campaign.audience)
        chosen = select(settings, rule, now, user_ids).frame["user_id"]
        audience.members = pd.Series(user_ids, dtype=object).isin(chosen).to_numpy()
    arbitrated = plan_within_caps(store, settings, campaign, audience, now, seed=seed)
    if save:
        store.save_items(arbitrated.items, arbitrated.displaced)
    return arbitrated


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
    user_ids = user_ids_of(audience).tolist()
    cap = FrequencyCap.of(settings, campaign)
    kept = store.sends_kept(campaign.campaign_id, user_ids) if cap.campaign_total is not None else 0
    quiet = QuietHours.of(settings)
    minutes = settings.slot_minutes
    return arbitrate_caps(
        campaign,
        plan(campaign, audience, now, seed=seed, quiet=quiet, slot_minutes=minutes),
        audience,
        now,
        cap,
        store.held_sends(campaign, user_ids),
        quiet=quiet,
        dispatched=kept,
        slot_minutes=minutes,
    )
