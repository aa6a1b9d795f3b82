"""Campaigns in the database: create, replace while dispatch has not started, read back; their team,
author and approval state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sqlalchemy.orm import Session

from pushplan.approvals import Approval, ApprovalRefused
from pushplan.db.schema import DEFAULT_TEAM, CampaignRow, utc
from pushplan.domain import Campaign, DispatchState


class CampaignFrozen(ValueError):
    """A new spec for a campaign whose dispatch has started: its items were planned and sent under
    the old one, so replacing it would make later sends and the experiment's record disagree."""


class CampaignTaken(ValueError):
    """The campaign id belongs to another team's campaign: ids are unique across teams."""


@dataclass(frozen=True)
class CampaignMeta:
    """A campaign's owner and approval record, beside its spec."""

    campaign_id: str
    team: str
    created_by: str | None  # who wrote the current spec (an actor, pushplan.db.audit.Actor)
    approval: Approval
    approval_reasons: list[str]
    decided_by: str | None
    decided_at: datetime | None
    decision_comment: str | None
    dispatch_state: DispatchState
    spec: dict[str, Any] = field(repr=False)
    spec_changed: bool = False  # set by save_campaign: this save wrote a new spec

    @cached_property
    def campaign(self) -> Campaign:
        """The spec as a Campaign (read with the row: no second look-up; parsed once per record)."""
        return Campaign.stored(self.spec)

    @classmethod
    def of(cls, row: CampaignRow, spec_changed: bool = False) -> CampaignMeta:
        return cls(
            campaign_id=row.campaign_id,
            team=row.team,
            created_by=row.created_by,
            approval=Approval(row.approval),
            approval_reasons=list(row.approval_reasons or []),
            decided_by=row.decided_by,
            decided_at=utc(row.decided_at),
            decision_comment=row.decision_comment,
            dispatch_state=DispatchState(row.dispatch_state),
            spec=row.spec,
            spec_changed=spec_changed,
        )


class CampaignRepository:
    """The campaigns half of `pushplan.db.store.PlanStore`."""

    session: Callable[[], AbstractContextManager[Session]]

    def save_campaign(
        self,
        campaign: Campaign,
        *,
        team: str = DEFAULT_TEAM,
        author: str | None = None,
        approval_reasons: Sequence[str] = (),
    ) -> CampaignMeta:
        """Create the campaign, or replace its spec while its dispatch has not started.

        Once started (dispatch_state not `idle`), only the same spec again is accepted, as a
        harmless retry; any other raises CampaignFrozen. A campaign of another team raises
        CampaignTaken. A new spec with approval reasons is a `draft` (an approved campaign goes
        back to draft); one without is `not_needed`; the same spec again keeps its approval.
        """
        now = datetime.now(UTC)
        with self.session() as session:
            # FOR UPDATE: dispatch.control starts a campaign under the same row lock, so the state
            # read here holds until this commits; no spec lands after a start it did not see.
            row = session.get(CampaignRow, campaign.campaign_id, with_for_update=True)
            if row is not None and row.team != team:
                raise CampaignTaken(
                    f"campaign id {campaign.campaign_id!r} is taken by another team: choose another"
                )
            spec = campaign.model_dump(mode="json")
            if row is not None and _same_spec(row.spec, campaign):
                return CampaignMeta.of(row)
            approval = Approval.draft if approval_reasons else Approval.not_needed
            decision = {
                "approval": approval.value,
                "approval_reasons": list(approval_reasons),
                "decided_by": None,
                "decided_at": None,
                "decision_comment": None,
                "created_by": author,
            }
            if row is not None and row.dispatch_state != DispatchState.idle.value:
                raise CampaignFrozen(
                    f"campaign {campaign.campaign_id!r} is {row.dispatch_state}: its spec is frozen "
                    "once dispatch has started; create a new campaign"
                )
            listens = " ".join(campaign.trigger.listens()) if campaign.trigger else None
            if row is None:
                row = CampaignRow(
                    campaign_id=campaign.campaign_id,
                    name=campaign.name,
                    spec=spec,
                    created_at=now,
                    updated_at=now,
                    trigger_events=listens,
                    team=team,
                    dispatch_state=DispatchState.idle.value,
                    **decision,
                )
                session.add(row)
            else:
                row.name, row.spec, row.updated_at, row.trigger_events = campaign.name, spec, now, listens
                for column, value in decision.items():
                    setattr(row, column, value)
            return CampaignMeta.of(row, spec_changed=True)

    def campaign_meta(self, campaign_id: str) -> CampaignMeta | None:
        with self.session() as session:
            row = session.get(CampaignRow, campaign_id)
            return CampaignMeta.of(row) if row else None

    def decide_approval(
        self, campaign_id: str, *, approve: bool, by: str, comment: str, now: datetime
    ) -> CampaignMeta | None:
        """Approve or reject a draft (None if there is no such campaign). Refused (ApprovalRefused)
        when nothing waits, or when `by` wrote the current spec: nobody approves their own send."""
        with self.session() as session:
            row = session.get(CampaignRow, campaign_id, with_for_update=True)
            if row is None:
                return None
            if row.approval != Approval.draft.value:
                raise ApprovalRefused(
                    f"campaign {campaign_id!r} is {row.approval}: nothing waits for a decision"
                )
            if row.created_by is not None and row.created_by == by:
                raise ApprovalRefused(f"{by} wrote campaign {campaign_id!r}: another approver must decide")
            row.approval = (Approval.approved if approve else Approval.rejected).value
            row.decided_by, row.decided_at, row.decision_comment = by, now, comment
            return CampaignMeta.of(row)

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        with self.session() as session:
            row = session.get(CampaignRow, campaign_id)
            return Campaign.stored(row.spec) if row else None


def _same_spec(stored: dict[str, Any], campaign: Campaign) -> bool:
    # Read as stored (Campaign.stored): one made before a text rule differs from any new one anyway.
    return Campaign.stored(stored) == campaign
