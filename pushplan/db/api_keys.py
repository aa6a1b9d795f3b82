"""API keys in the database: an id, the SHA-256 of the secret, the role and team, and its lifecycle
(expiry, last use, revocation, rotation). The secret itself is never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from pushplan.db.schema import ApiKeyRow, utc
from pushplan.db.store import PlanStore

# Last use is written at most this often per key: a timestamp, not a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    secret_hash: str
    role: str
    team: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def shown(self, now: datetime) -> dict[str, Any]:
        """The key as `pushplan keys list` and GET /v1/keys show it: everything but its secret's hash."""
        fields = {name: value for name, value in vars(self).items() if name != "secret_hash"}
        return fields | {"usable": self.usable_at(now)}


def _stored(row: ApiKeyRow) -> StoredKey:
    return StoredKey(
        key_id=row.key_id,
        secret_hash=row.secret_hash,
        role=row.role,
        team=row.team,
        name=row.name,
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        last_used_at=utc(row.last_used_at),
        # Keys revoked before migration 0010 have the flag without the time.
        revoked_at=utc(row.revoked_at) or (utc(row.created_at) if row.revoked else None),
        rotated_at=utc(row.rotated_at),
    )


def add_key(
    store: PlanStore,
    key_id: str,
    secret_hash: str,
    role: str,
    *,
    team: str,
    now: datetime,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> None:
    with store.session() as session:
        session.add(
            ApiKeyRow(
                key_id=key_id,
                secret_hash=secret_hash,
                role=role,
                team=team,
                name=name,
                created_at=now,
                expires_at=expires_at,
                revoked=False,
            )
        )


def find_key(store: PlanStore, key_id: str) -> StoredKey | None:
    with store.session() as session:
        row = session.get(ApiKeyRow, key_id)
        return None if row is None else _stored(row)


def list_keys(store: PlanStore, *, team: str | None = None) -> list[StoredKey]:
    query = sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
    if team is not None:
        query = query.where(ApiKeyRow.team == team)
    with store.session() as session:
        return [_stored(row) for row in session.scalars(query)]


def touch_key(store: PlanStore, key: StoredKey, now: datetime) -> None:
    """Record a use, unless one was recorded within LAST_USED_RESOLUTION."""
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    with store.session() as session:
        session.execute(sa.update(ApiKeyRow).where(ApiKeyRow.key_id == key.key_id).values(last_used_at=now))


def revoke_key(store: PlanStore, key_id: str, now: datetime) -> StoredKey | None:
    """Revoke the key (at once: every request reads it); the stored key, None if there is none."""
    with store.session() as session:
        row = session.get(ApiKeyRow, key_id, with_for_update=True)
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked, row.revoked_at = True, now
        return _stored(row)


def replace_secret(store: PlanStore, key_id: str, secret_hash: str, now: datetime) -> StoredKey | None:
    """Give a usable key a new secret (the old one stops working at once); None if it is not usable."""
    with store.session() as session:
        row = session.get(ApiKeyRow, key_id, with_for_update=True)
        if row is None or not _stored(row).usable_at(now):
            return None
        row.secret_hash, row.rotated_at = secret_hash, now
        return _stored(row)
