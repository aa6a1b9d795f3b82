"""Request dependencies as Annotated aliases: the stores, the models, and the caller's role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, status

from dispatch.plan_store import PlanStore
from serving.keys import Role, role_of
from serving.models import ModelSet


def _state(request: Request) -> Any:
    return request.app.state


def plan_store(request: Request) -> PlanStore:
    return _state(request).plan_store


def model_set(request: Request) -> ModelSet:
    return _state(request).models


PlanStoreDep = Annotated[PlanStore, Depends(plan_store)]
ModelsDep = Annotated[ModelSet, Depends(model_set)]


def require(*roles: Role) -> Callable[..., Role]:
    """A dependency admitting callers whose key has one of `roles` (admin always): 401 / 403 otherwise."""

    def check(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Role:
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
