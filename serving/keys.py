"""API keys: `pp_<id>_<secret>`, shown once; only a SHA-256 of the secret is stored.

A plain SHA-256 is enough here (not a password hash): the secret is 32 random bytes, so there is
nothing to brute-force, and a fast hash keeps every authenticated request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from pushplan.db.api_keys import add_key, find_key
from pushplan.db.store import PlanStore


class Role(StrEnum):
    campaign = "campaign"  # campaigns, plans, events
    operator = "operator"  # reports, read-only
    admin = "admin"  # everything


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: PlanStore, role: Role) -> str:
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    add_key(store, key_id, _digest(secret), role.value)
    return f"pp_{key_id}_{secret}"


def role_of(store: PlanStore, presented: str) -> Role | None:
    """The role of a presented key, or None when it is unknown, malformed or revoked."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "pp":
        return None
    stored = find_key(store, parts[1])
    if stored is None or stored.revoked or not hmac.compare_digest(stored.secret_hash, _digest(parts[2])):
        return None
    return Role(stored.role)
