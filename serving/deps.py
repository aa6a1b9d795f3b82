"""Request dependencies as Annotated aliases: the stores, the models, and the caller's role.

The key is declared as an OpenAPI security scheme (`ApiKey`, header `X-API-Key`), so the schema says
which operations need one, and the docs page can send it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from pushplan.db.store import PlanStore
from serving.keys import Role, role_of
from serving.scoring import ModelSet


def _state(request: Request) -> Any:
    return request.app.state


def plan_store(request: Request) -> PlanStore:
    return _state(request).plan_store


def model_set(request: Request) -> ModelSet:
    return _state(request).models


PlanStoreDep = Annotated[PlanStore, Depends(plan_store)]
ModelsDep = Annotated[ModelSet, Depends(model_set)]

# auto_error=False: `require` answers a missing key itself, with the same 401 and message as a bad one.
API_KEY = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="`pushplan keys create --role campaign|operator|admin` prints one.",
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
    401: {"model": Problem, "description": "No X-API-Key, or an unknown or revoked one."},
    403: {"model": Problem, "description": "The key's role may not do this."},
}


def require(*roles: Role) -> Callable[..., Role]:
    """A dependency admitting callers whose key has one of `roles` (admin always): 401 / 403 otherwise."""

    def check(request: Request, x_api_key: Annotated[str | None, Security(API_KEY)]) -> Role:
        if not x_api_key:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header")
        role = role_of(plan_store(request), x_api_key)
        if role is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key")
        if role is not Role.admin and role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"a {role} key cannot do this")
        return role

    return check


CampaignRole = Annotated[Role, Depends(require(Role.campaign))]
ReaderRole = Annotated[Role, Depends(require(Role.campaign, Role.operator))]
OperatorRole = Annotated[Role, Depends(require(Role.operator))]
