"""API keys: `pp_<id>_<secret>`, shown once; only a SHA-256 of the secret is stored.

A plain SHA-256 is enough here (not a password hash): the secret is 32 random bytes, so there is
nothing to brute-force, and a fast hash keeps every authenticated request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from enum import StrEnum

from dispatch.plan_store import ApiKeyRow, PlanStore


class Role(StrEnum):
    campaign = "campaign"  # campaigns, plans, events
    operator = "operator"  # reports, read-only
    admin = "admin"  # everything


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: PlanStore, role: Role) -> str:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with store.session() as session:
        session.add(
            ApiKeyRow(
                key_id=key_id,
                secret_hash=_digest(secret),
                role=role.value,
                created_at=datetime.now(UTC),
                revoked=False,
            )
        )
    return f"pp_{key_id}_{secret}"


def role_of(store: PlanStore, presented: str) -> Role | None:
    """The role of a presented key, or None when it is unknown, malformed or revoked."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "pp":
        return None
    with store.session() as session:
        row = session.get(ApiKeyRow, parts[1])
        if row is None or row.revoked or not hmac.compare_digest(row.secret_hash, _digest(parts[2])):
            return None
        return Role(row.role)
