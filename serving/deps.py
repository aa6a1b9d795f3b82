"""Request dependencies as Annotated aliases: the stores, the models, and the caller's role.

The key is declared as an OpenAPI security scheme (`ApiKey`, header `X-API-Key`), so the schema says
which operations need one, and the docs page can send it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from pushplan.db.campaigns import CampaignMeta
from pushplan.db.store import PlanStore
from serving.keys import Caller, Role
from serving.scoring import ModelSet


def _state(request: Request) -> Any:
    return request.app.state


# The dependencies that only read the app's or the request's state are `async def`: FastAPI runs a
# plain `def` dependency in its thread pool, a thread hop per dependency per request for nothing.


async def plan_store(request: Request) -> PlanStore:
    return _state(request).plan_store


async def model_set(request: Request) -> ModelSet:
    return _state(request).models


PlanStoreDep = Annotated[PlanStore, Depends(plan_store)]
ModelsDep = Annotated[ModelSet, Depends(model_set)]

# auto_error=False: `require` answers a missing key itself, with the same 401 and message as a bad one.
API_KEY = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="`pushplan keys create --role campaign|events|operator|approver|admin --team T` prints one.",
    auto_error=False,
)


class Problem(BaseModel):
    """An error the service answers itself (not a validation error): what went wrong, in words."""

    detail: str


# FastAPI answers 400 (not 422) to a body it cannot decode at all, such as bytes that are not UTF-8.
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body could not be read as JSON."},
}


def unprocessable(description: str) -> dict[int | str, dict[str, Any]]:
    """A 422 that is either FastAPI's usual one (a body that is not the model) or the service's own
    Problem (a body that is the model but says something the service refuses: a bad row, a bad rule).
    Both schemas are in the components: HTTPValidationError from every route with a body, Problem
    from the auth responses."""
    either = {
        "anyOf": [
            {"$ref": "#/components/schemas/HTTPValidationError"},
            {"$ref": "#/components/schemas/Problem"},
        ]
    }
    return {422: {"description": description, "content": {"application/json": {"schema": either}}}}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No X-API-Key, or an unknown, revoked or expired one."},
    403: {"model": Problem, "description": "The key's role may not do this."},
    413: {"model": Problem, "description": "The request body is over 8 MiB."},
    429: {
        "model": Problem,
        "description": "The key's rate limit is reached; Retry-After says in how many seconds to retry.",
    },
}


def require(*roles: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting callers whose key has one of `roles` (admin always): 403 otherwise.

    The key itself was checked by serving.guard before the body was read (401 there); the
    `Security` parameter only declares the scheme in the OpenAPI schema."""

    async def check(request: Request, x_api_key: Annotated[str | None, Security(API_KEY)]) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:  # not behind the guard: nothing vouches for the key
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header")
        if not caller.is_admin and caller.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"a {caller.role} key cannot do this")
        return caller

    return check


def owned(store: PlanStore, caller: Caller, campaign_id: str) -> CampaignMeta:
    """The campaign's record if the caller's team owns it (admins: any); 404 otherwise, the same as
    for a campaign that does not exist, so one team cannot learn another's ids. Read through the
    store's cache: a change made by any process is seen at the next request (pushplan.db.changes)."""
    meta = store.cached_campaigns.get(campaign_id, lambda: store.campaign_meta(campaign_id))
    if meta is None or not caller.may_see(meta.team):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    return meta


def audit_note(request: Request, *, target: str | None = None, **detail: Any) -> None:
    """What serving.guard's audit row of this call should say beyond its route and outcome."""
    if target is not None:
        request.state.audit_target = target
    if detail:
        request.state.audit_detail = {**(getattr(request.state, "audit_detail", None) or {}), **detail}


def not_audited(request: Request) -> None:
    """This call changes nothing (a dry run, a preview): no audit row."""
    request.state.audit_skip = True


CampaignRole = Annotated[Caller, Depends(require(Role.campaign))]
EventsRole = Annotated[Caller, Depends(require(Role.events))]
ReaderRole = Annotated[Caller, Depends(require(Role.campaign, Role.operator, Role.approver))]
OperatorRole = Annotated[Caller, Depends(require(Role.operator, Role.approver))]
ApproverRole = Annotated[Caller, Depends(require(Role.approver))]
AdminRole = Annotated[Caller, Depends(require())]
