"""Campaigns: create or replace, read back, and a triggered campaign's status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import pyarrow.parquet as pq
from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, Request, status

from features.audiences import compile_for, preview
from features.event_store import EventStore
from pushplan.approvals import Approval, approval_reasons
from pushplan.audience_rules import RuleError
from pushplan.db.campaigns import CampaignFrozen, CampaignTaken
from pushplan.domain import Campaign
from pushplan.settings import Settings
from serving.approvals import notify_approvers
from serving.deps import (
    BODY_RESPONSES,
    CampaignRole,
    PlanStoreDep,
    Problem,
    ReaderRole,
    audit_note,
    owned,
    unprocessable,
)
from serving.triggers import TriggerStatus, trigger_status

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "The campaign's dispatch has started (its spec can no longer be replaced), or "
        "its id is taken by another team's campaign.",
    },
}
PRIORITY: dict[int | str, dict[str, Any]] = {
    403: {
        "model": Problem,
        "description": "The key's role may not do this, or the priority is above its team's ceiling.",
    },
}
FROZEN = _CONFLICT | unprocessable(
    "The campaign is invalid, or its audience names an unknown field or value."
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Campaign,
    responses=BODY_RESPONSES | FROZEN | PRIORITY,
)
def create_campaign(
    campaign: Campaign,
    request: Request,
    background: BackgroundTasks,
    store: PlanStoreDep,
    caller: CampaignRole,
) -> Campaign:
    """Create a campaign in the key's team, or replace one with the same `campaign_id` until its
    dispatch starts (then only the same spec again is accepted: a retry); its variants join the
    catalogue the features read tags from, so its sends and clicks feed the tag affinities. Titles
    and bodies must fit every channel the campaign names. A sensitive campaign (flagged, on sms or
    email, or a large audience) is saved as a `draft` that an approver must approve before it may
    dispatch (GET …/approval says why); its approvers are notified."""
    settings = store.settings
    audit_note(request, target=campaign.campaign_id)
    ceiling = settings.priority_ceiling_of(caller.team)
    if campaign.priority > ceiling and not caller.is_admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"priority {campaign.priority} is above team {caller.team!r}'s ceiling of {ceiling}",
        )
    if campaign.audience is not None:
        try:
            compile_for(settings, campaign.audience)
        except RuleError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"audience: {exc}") from None
    reasons = approval_reasons(campaign, settings, _audience_size(settings, campaign))
    team = caller.team
    if caller.is_admin:  # an admin may replace any team's campaign, which stays that team's
        existing = store.campaign_meta(campaign.campaign_id)
        team = existing.team if existing is not None else team
    try:
        meta = store.save_campaign(campaign, team=team, author=caller.actor().actor, approval_reasons=reasons)
    except (CampaignFrozen, CampaignTaken) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    EventStore(settings).store_variants([campaign])
    if meta.spec_changed and meta.approval is Approval.draft:
        audit_note(request, approval="draft", reasons=reasons)
        background.add_task(notify_approvers, settings, meta, campaign.name)
    return campaign


def _audience_size(settings: Settings, campaign: Campaign) -> int | None:
    """How many users the campaign's audience selects now, when a size rule asks (None: unknown)."""
    if settings.approval_audience_above is None:
        return None
    if not settings.users_path.exists():
        return None
    if campaign.audience is None:  # everyone
        return int(pq.read_metadata(settings.users_path).num_rows)
    return int(preview(settings, campaign.audience, datetime.now(UTC), sample=0)["count"])


@router.get(
    "/{campaign_id}",
    response_model=Campaign,
    responses={404: {"model": Problem, "description": "No campaign with this campaign_id."}},
)
def get_campaign(
    campaign_id: Annotated[str, Path(examples=["black-friday"])], store: PlanStoreDep, caller: ReaderRole
) -> Campaign:
    return owned(store, caller, campaign_id).campaign


@router.get(
    "/{campaign_id}/trigger",
    response_model=TriggerStatus,
    responses={404: {"model": Problem, "description": "No campaign with this id, or it has no trigger."}},
)
def get_trigger_status(
    campaign_id: Annotated[str, Path(examples=["coupon-reminder"])], store: PlanStoreDep, caller: ReaderRole
) -> TriggerStatus:
    """A triggered campaign's state (waiting, live, paused, budget_spent, ended), its firings by
    outcome and its budget (docs/triggers.md)."""
    campaign = owned(store, caller, campaign_id).campaign
    if campaign.trigger is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no triggered campaign {campaign_id!r}")
    return trigger_status(store, campaign)
