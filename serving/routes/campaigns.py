"""Campaigns: create or replace, read back, and a triggered campaign's status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status

from features.audiences import compile_for
from features.event_store import EventStore
from pushplan.audience_rules import RuleError
from pushplan.db.campaigns import CampaignFrozen
from pushplan.domain import Campaign
from serving.deps import BODY_RESPONSES, CampaignRole, PlanStoreDep, Problem, ReaderRole, unprocessable
from serving.triggers import TriggerStatus, trigger_status

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "The campaign's dispatch has started: its spec can no longer be replaced.",
    },
}
FROZEN = _CONFLICT | unprocessable(
    "The campaign is invalid, or its audience names an unknown field or value."
)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=Campaign, responses=BODY_RESPONSES | FROZEN
)
def create_campaign(campaign: Campaign, store: PlanStoreDep, _: CampaignRole) -> Campaign:
    """Create a campaign, or replace one with the same `campaign_id` until its dispatch starts (then
    only the same spec again is accepted: a retry); its variants join the catalogue the features
    read tags from, so its sends and clicks feed the tag affinities. Titles and bodies must fit
    every channel the campaign names."""
    if campaign.audience is not None:
        try:
            compile_for(store.settings, campaign.audience)
        except RuleError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"audience: {exc}") from None
    try:
        store.save_campaign(campaign)
    except CampaignFrozen as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    EventStore(store.settings).store_variants([campaign])
    return campaign


@router.get(
    "/{campaign_id}",
    response_model=Campaign,
    responses={404: {"model": Problem, "description": "No campaign with this campaign_id."}},
)
def get_campaign(
    campaign_id: Annotated[str, Path(examples=["black-friday"])], store: PlanStoreDep, _: ReaderRole
) -> Campaign:
    campaign = store.get_campaign(campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    return campaign


@router.get(
    "/{campaign_id}/trigger",
    response_model=TriggerStatus,
    responses={404: {"model": Problem, "description": "No campaign with this id, or it has no trigger."}},
)
def get_trigger_status(
    campaign_id: Annotated[str, Path(examples=["coupon-reminder"])], store: PlanStoreDep, _: ReaderRole
) -> TriggerStatus:
    """A triggered campaign's state (waiting, live, paused, budget_spent, ended), its firings by
    outcome and its budget (docs/triggers.md)."""
    campaign = store.get_campaign(campaign_id)
    if campaign is None or campaign.trigger is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no triggered campaign {campaign_id!r}")
    return trigger_status(store, campaign)
