"""API keys in the database: only an id, the SHA-256 of the secret, the role and whether revoked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pushplan.db.schema import ApiKeyRow
from pushplan.db.store import PlanStore


@dataclass(frozen=True)
class StoredKey:
    secret_hash: str
    role: str
    revoked: bool


def add_key(store: PlanStore, key_id: str, secret_hash: str, role: str) -> None:
    with store.session() as session:
        session.add(
            ApiKeyRow(
                key_id=key_id, secret_hash=secret_hash, role=role, created_at=datetime.now(UTC), revoked=False
            )
        )


def find_key(store: PlanStore, key_id: str) -> StoredKey | None:
    with store.session() as session:
        row = session.get(ApiKeyRow, key_id)
        return None if row is None else StoredKey(row.secret_hash, row.role, row.revoked)
