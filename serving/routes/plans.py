"""Plans: a synchronous plan for listed users, and the stored items of a campaign."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from pushplan.db.plan_items import plan_records
from pushplan.db.store import PlanStore
from pushplan.domain import IDENTIFIER, Decision, Instant, PlanItem, PlannedByTrigger, Reason
from pushplan.redact import scrub
from serving.capped_plan import plan_users
from serving.deps import CampaignRole, ModelsDep, PlanStoreDep, ReaderRole, not_audited, owned
from serving.keys import Caller
from serving.scoring import ModelSet

router = APIRouter(tags=["plans"])
MAX_USERS = 10_000


class PlanRequest(BaseModel):
    campaign_id: str = Field(min_length=1, max_length=200, json_schema_extra={"pattern": IDENTIFIER.pattern})
    user_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_USERS
    )
    dry_run: bool = Field(default=False, strict=True, description="Plan and return the items, store nothing.")
    now: Instant | None = Field(default=None, description="Plan as of this instant (default: now).")
    seed: int = Field(default=0, ge=0, strict=True, description="Exploration seed; same seed, same plan.")

    model_config = {
        "json_schema_extra": {
            "examples": [{"campaign_id": "black-friday", "user_ids": ["u0000042"], "dry_run": True}]
        }
    }


class PlanResponse(BaseModel):
    campaign_id: str
    items: list[PlanItem]
    counts: dict[str, int]
    model_versions: dict[str, str]
    displaced: list[str] = Field(
        default_factory=list,
        description="Other campaigns' planned items this plan's higher-value sends displaced under the "
        "frequency caps; stored as skip / capped unless dry_run.",
    )


class ItemsPage(BaseModel):
    items: list[PlanItem]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last.")


# Plans of up to this many users run on the event loop itself; larger ones in the thread pool.
# A one-user plan is a few milliseconds of CPU under the GIL: handing it to a thread cost more than
# it saved, and threads of planning contended for the GIL (measured on 2 cores: 80 → 103 plans/s
# with one worker, 141 → 191 with two; docs/benchmarks.md). A 10,000-user plan takes seconds, and
# must not hold every other request of its worker (health checks included) for that long.
INLINE_USERS = 100


@router.post("/v1/plans", response_model=PlanResponse)
async def create_plan(
    body: PlanRequest, request: Request, store: PlanStoreDep, models: ModelsDep, caller: CampaignRole
) -> Response:
    """Plan the listed users (up to 10,000): which variant, when, on which channel, or why not."""
    if len(body.user_ids) <= INLINE_USERS:
        return _plan(body, request, store, models, caller)
    return await run_in_threadpool(_plan, body, request, store, models, caller)


def _plan(
    body: PlanRequest, request: Request, store: PlanStore, models: ModelSet, caller: Caller
) -> Response:
    campaign = owned(store, caller, body.campaign_id).campaign
    if body.dry_run:
        not_audited(request)
    models.refresh_if_stale()
    settings = request.app.state.settings
    now = body.now or datetime.now(UTC)
    user_ids = list(dict.fromkeys(body.user_ids))
    try:
        arbitrated = plan_users(store, settings, models, campaign, user_ids, now, seed=body.seed, save=False)
    except PlannedByTrigger as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    records = plan_records(arbitrated.items)  # validated here once: stored and answered as they are
    if not body.dry_run:
        store.save_items(records, arbitrated.displaced)
    answer = PlanResponse.model_construct(
        campaign_id=campaign.campaign_id,
        items=records,
        counts=dict(Counter(item.decision.value for item in records)),
        model_versions=dict(models.versions),
        displaced=arbitrated.displaced,
    )
    # Answered as it is: returned as a model, FastAPI would validate every item again for the
    # response_model (which stays, for the API's schema).
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/v1/campaigns/{campaign_id}/plan-items", response_model=ItemsPage)
def list_plan_items(
    campaign_id: str,
    store: PlanStoreDep,
    caller: ReaderRole,
    decision: Decision | None = None,
    reason: Reason | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: str | None = None,
) -> ItemsPage:
    """The campaign's stored items in plan_id order, a page at a time."""
    owned(store, caller, campaign_id)
    items = store.list_items(
        campaign_id,
        decision=decision.value if decision else None,
        reason=reason.value if reason else None,
        limit=limit,
        after=after,
    )
    # Channel errors are scrubbed when dispatch stores them; scrubbed again for rows stored before.
    shown = [item.model_copy(update={"detail": scrub(item.detail)}) for item in items]
    return ItemsPage(items=shown, next_after=items[-1].plan_id if len(items) == limit else None)
