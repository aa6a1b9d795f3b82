"""Dispatch control: start, pause, resume and cancel a campaign's sends; whole-audience plan jobs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from dispatch.celery_app import enqueue
from dispatch.control import TransitionRefused, control, dispatch_state, item_states
from pushplan.domain import DispatchState, Instant, NoSuchCampaign
from serving.deps import BODY_RESPONSES, CampaignRole, PlanStoreDep, Problem, ReaderRole, owned
from serving.plan_jobs import create_job, get_job

router = APIRouter(tags=["dispatch"])

CampaignId = Annotated[str, Path(examples=["black-friday"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No campaign (or job) with this id."}
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "The campaign's state does not allow this."}
}


class Action(StrEnum):
    dispatch = "dispatch"
    pause = "pause"
    resume = "resume"
    cancel = "cancel"


class StateCount(BaseModel):
    decision: str
    state: str
    reason: str | None
    items: int


class DispatchStatus(BaseModel):
    campaign_id: str
    dispatch_state: DispatchState
    cancelled_items: int = Field(default=0, description="Items this request cancelled (cancel only).")
    items: list[StateCount] = Field(description="The campaign's items by decision, state and reason.")


def _status(store: PlanStoreDep, campaign_id: str, cancelled: int = 0) -> DispatchStatus:
    current = dispatch_state(store, campaign_id)
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    counts = item_states(store, campaign_id)
    return DispatchStatus(
        campaign_id=campaign_id,
        dispatch_state=current,
        cancelled_items=cancelled,
        items=[
            StateCount(decision=r.decision, state=r.state, reason=r.reason, items=int(r.items))
            for r in counts.itertuples()
        ],
    )


# Not GET /dispatch: Starlette answers a wrong method on a path with the first route's Allow only.
@router.get("/v1/campaigns/{campaign_id}/dispatch-status", response_model=DispatchStatus, responses=NOT_FOUND)
def get_dispatch(campaign_id: CampaignId, store: PlanStoreDep, caller: ReaderRole) -> DispatchStatus:
    """Whether the campaign is sending, and its items by state: sent, suppressed (why), failed, …"""
    owned(store, caller, campaign_id)
    return _status(store, campaign_id)


def _controller(action: Action) -> Callable[..., DispatchStatus]:
    def controlled(campaign_id: CampaignId, store: PlanStoreDep, caller: CampaignRole) -> DispatchStatus:
        owned(store, caller, campaign_id)
        try:
            cancelled = control(store, campaign_id, action.value)[1]
        except NoSuchCampaign as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except TransitionRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return _status(store, campaign_id, cancelled)

    controlled.__name__ = f"{action.value}_campaign"
    return controlled


CONTROL_DOCS = {
    Action.dispatch: "Start sending: planned items go out as they fall due (beat's due-scan). A draft "
    "or rejected campaign answers 409 with the reason (GET …/approval).",
    Action.pause: "Hold the campaign's sends; items not yet handed to a channel wait for resume.",
    Action.resume: "Go on sending after a pause.",
    Action.cancel: "Stop for good: items not yet handed to a channel become `cancelled`, never sent.",
}
# One route per action (not /{action}), so each is its own documented operation.
for _action, _doc in CONTROL_DOCS.items():
    router.add_api_route(
        f"/v1/campaigns/{{campaign_id}}/{_action.value}",
        _controller(_action),
        methods=["POST"],
        response_model=DispatchStatus,
        responses=NOT_FOUND | CONFLICT,
        summary=_doc.split(":")[0].rstrip("."),
        description=_doc + " Repeating an action is harmless; a cancelled campaign stays cancelled.",
    )


class PlanJobRequest(BaseModel):
    now: Instant | None = Field(default=None, description="Plan as of this instant (default: now).")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, strict=True)

    model_config = {"extra": "forbid"}


class PlanJob(BaseModel):
    job_id: str
    campaign_id: str
    state: str = Field(description="running, done or failed")
    partitions: int
    partitions_done: int
    users: int
    users_planned: int
    counts: dict[str, int] = Field(description="Items planned so far by decision.")
    error: str | None
    created_at: datetime
    updated_at: datetime


def _job(row: object) -> PlanJob:
    spec = getattr(row, "spec", {})
    fields = {name: getattr(row, name) for name in PlanJob.model_fields if name != "counts"}
    return PlanJob(**fields, counts=spec.get("counts", {}))


@router.post(
    "/v1/campaigns/{campaign_id}/plan-jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PlanJob,
    responses=BODY_RESPONSES | NOT_FOUND | CONFLICT,
)
def create_plan_job(
    campaign_id: CampaignId,
    body: PlanJobRequest,
    request: Request,
    store: PlanStoreDep,
    caller: CampaignRole,
) -> PlanJob:
    """Plan every known user of the campaign in the background, partitioned into Celery tasks;
    poll `GET /v1/plan-jobs/{job_id}` for progress."""
    campaign = owned(store, caller, campaign_id).campaign
    try:
        job = create_job(store, request.app.state.settings, campaign, now=body.now, seed=body.seed)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    for partition in range(job.partitions):
        enqueue(request.app.state.settings, "serving.tasks.plan_partition_task", job.job_id, partition)
    return _job(job)


@router.get("/v1/plan-jobs/{job_id}", response_model=PlanJob, responses=NOT_FOUND)
def read_plan_job(job_id: str, store: PlanStoreDep, caller: ReaderRole) -> PlanJob:
    job = get_job(store, job_id)
    meta = None if job is None else store.campaign_meta(job.campaign_id)
    if job is None or meta is None or not caller.may_see(meta.team):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plan job {job_id!r}")
    return _job(job)
