"""API keys for admins: list, create, revoke and rotate (the same as `pushplan keys …`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from pushplan.db.api_keys import StoredKey, find_key, list_keys, revoke_key
from pushplan.db.schema import DEFAULT_TEAM
from pushplan.domain import Instant
from serving.deps import BODY_RESPONSES, AdminRole, PlanStoreDep, Problem, audit_note, unprocessable
from serving.keys import Role, create_key, key_id_of, rotate_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])

KeyId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", examples=["3f2a9c1b0d4e5f60"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No key with this id (or, to rotate, not a usable one)."}
}


class KeyInfo(BaseModel):
    """A key as the service keeps it: never its secret."""

    key_id: str
    role: Role
    team: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute: uses are recorded once a minute.")
    revoked_at: datetime | None
    rotated_at: datetime | None
    usable: bool


class NewKey(BaseModel):
    key: str = Field(description="The key to present in X-API-Key. Shown once: only its hash is kept.")
    info: KeyInfo


class KeyRequest(BaseModel):
    role: Role
    team: str = Field(default=DEFAULT_TEAM, min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=200, description="Who holds it, in words.")
    expires_at: Instant | None = Field(default=None, description="After this instant the key gets 401.")

    model_config = {"extra": "forbid"}


def key_info(key: StoredKey) -> KeyInfo:
    return KeyInfo(**key.shown(datetime.now(UTC)))


@router.get("", response_model=list[KeyInfo])
def get_keys(
    store: PlanStoreDep,
    _: AdminRole,
    team: Annotated[str | None, Query(max_length=64, description="Only this team's keys.")] = None,
) -> list[KeyInfo]:
    """Every key (or one team's), oldest first, with its expiry, last use and revocation."""
    return [key_info(key) for key in list_keys(store, team=team)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NewKey,
    responses=BODY_RESPONSES | unprocessable("Not a key request, a bad team name or a past expiry."),
)
def post_key(body: KeyRequest, request: Request, store: PlanStoreDep, _: AdminRole) -> NewKey:
    """Create a key for a team."""
    try:  # create_key refuses a bad team name or a past expiry
        presented = create_key(store, body.role, team=body.team, name=body.name, expires_at=body.expires_at)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    key_id = key_id_of(presented)
    assert key_id is not None  # create_key made it
    audit_note(request, target=key_id, role=body.role.value, team=body.team)
    stored = find_key(store, key_id)
    assert stored is not None  # just added
    return NewKey(key=presented, info=key_info(stored))


@router.post("/{key_id}/revoke", response_model=KeyInfo, responses=NOT_FOUND)
def post_revoke(key_id: KeyId, store: PlanStoreDep, _: AdminRole) -> KeyInfo:
    """Revoke a key: its next request, in any process, gets 401. Revoking twice is harmless."""
    revoked = revoke_key(store, key_id, datetime.now(UTC))
    if revoked is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no key {key_id!r}")
    return key_info(revoked)


@router.post("/{key_id}/rotate", response_model=NewKey, responses=NOT_FOUND)
def post_rotate(key_id: KeyId, store: PlanStoreDep, _: AdminRole) -> NewKey:
    """A new secret for the key (same id, role and team, so its audit trail goes on); the old secret
    gets 401 at once."""
    presented = rotate_key(store, key_id, datetime.now(UTC))
    stored = find_key(store, key_id)
    if presented is None or stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no usable key {key_id!r}")
    return NewKey(key=presented, info=key_info(stored))
