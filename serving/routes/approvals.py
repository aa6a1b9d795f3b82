"""Approvals: a sensitive campaign's state, and an approver's yes or no with a comment."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from pushplan.approvals import Approval, ApprovalRefused
from pushplan.db.campaigns import CampaignMeta
from serving.deps import BODY_RESPONSES, ApproverRole, PlanStoreDep, Problem, ReaderRole, audit_note, owned

router = APIRouter(prefix="/v1/campaigns", tags=["approvals"])

CampaignId = Annotated[str, Path(examples=["black-friday"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No campaign with this id."}
}
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "Nothing waits for a decision, or the approver's key wrote the campaign.",
    }
}


class ApprovalStatus(BaseModel):
    campaign_id: str
    team: str
    approval: Approval = Field(
        description="not_needed, draft (waits for an approver; dispatch answers 409), approved or rejected."
    )
    reasons: list[str] = Field(description="Why it needs approval: flagged, its channels, its audience size.")
    written_by: str | None = Field(
        description="The actor that wrote the current spec (key:<id> or cli:<user>)."
    )
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None


class Decision(BaseModel):
    comment: str = Field(min_length=1, max_length=2_000, description="Why: kept in the audit trail.")

    model_config = {"extra": "forbid"}


def approval_status(meta: CampaignMeta) -> ApprovalStatus:
    return ApprovalStatus(
        campaign_id=meta.campaign_id,
        team=meta.team,
        approval=meta.approval,
        reasons=meta.approval_reasons,
        written_by=meta.created_by,
        decided_by=meta.decided_by,
        decided_at=meta.decided_at,
        comment=meta.decision_comment,
    )


@router.get("/{campaign_id}/approval", response_model=ApprovalStatus, responses=NOT_FOUND)
def get_approval(campaign_id: CampaignId, store: PlanStoreDep, caller: ReaderRole) -> ApprovalStatus:
    """Whether the campaign needs an approver's yes before it may dispatch, why, and who decided."""
    return approval_status(owned(store, caller, campaign_id))


def _decide(approve: bool) -> Any:
    def decide(
        campaign_id: CampaignId, body: Decision, request: Request, store: PlanStoreDep, caller: ApproverRole
    ) -> ApprovalStatus:
        owned(store, caller, campaign_id)
        audit_note(request, comment=body.comment)
        try:
            meta = store.decide_approval(
                campaign_id,
                approve=approve,
                by=caller.actor().actor,
                comment=body.comment,
                now=datetime.now(UTC),
            )
        except ApprovalRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        assert meta is not None  # owned() found it, and campaigns are never deleted
        return approval_status(meta)

    decide.__name__ = "approve_campaign" if approve else "reject_campaign"
    return decide


for _approve, _path, _doc in (
    (True, "approve", "Approve a draft: it may dispatch. The key that wrote the campaign cannot."),
    (False, "reject", "Reject a draft, saying why: it cannot dispatch until changed (a new draft)."),
):
    router.add_api_route(
        f"/{{campaign_id}}/{_path}",
        _decide(_approve),
        methods=["POST"],
        response_model=ApprovalStatus,
        responses=BODY_RESPONSES | NOT_FOUND | REFUSED,
        summary=_doc.split(":")[0],
        description=_doc,
    )
