"""API keys: `pp_<id>_<secret>`, shown once; only a SHA-256 of the secret is stored. A key has a
role and belongs to a team; it acts on its team's campaigns only (admins on all).

A plain SHA-256 is enough here (not a password hash): the secret is 32 random bytes, so there is
nothing to brute-force, and a fast hash keeps every authenticated request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from pushplan.db.api_keys import StoredKey, add_key, find_key, replace_secret, touch_key
from pushplan.db.audit import Actor
from pushplan.db.schema import DEFAULT_TEAM
from pushplan.db.store import PlanStore

TEAM = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class Role(StrEnum):
    campaign = "campaign"  # create, plan and dispatch its team's campaigns
    events = "events"  # post events and channel feedback only: what an app backend gets
    operator = "operator"  # read its team's campaigns, plans and reports
    approver = "approver"  # an operator who approves or rejects its team's sensitive campaigns
    admin = "admin"  # everything, every team; keys and the audit trail


@dataclass(frozen=True)
class Caller:
    """The key behind a request."""

    key_id: str
    role: Role
    team: str

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin

    def actor(self, source: str | None = None) -> Actor:
        return Actor(f"key:{self.key_id}", role=self.role.value, team=self.team, source=source)

    def may_see(self, team: str) -> bool:
        return self.is_admin or team == self.team


def team_problem(team: str) -> str | None:
    if TEAM.fullmatch(team):
        return None
    return f"{team[:40]!r} is not a team name: 1 to 64 of a-z 0-9 _ -, starting with a letter or digit"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    store: PlanStore,
    role: Role,
    *,
    team: str = DEFAULT_TEAM,
    name: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> str:
    """A new key, as the holder presents it (printed once; only its hash is kept)."""
    problem = team_problem(team)
    if problem is not None:
        raise ValueError(problem)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    created = now or datetime.now(UTC)
    if expires_at is not None and expires_at <= created:
        raise ValueError(f"the expiry {expires_at.isoformat()} is not in the future")
    add_key(
        store, key_id, _digest(secret), role.value, team=team, name=name, expires_at=expires_at, now=created
    )
    return f"pp_{key_id}_{secret}"


def rotate_key(store: PlanStore, key_id: str, now: datetime) -> str | None:
    """A new secret for the key (same id, role and team; the old secret stops working at once), or
    None when there is no usable key with this id."""
    secret = secrets.token_urlsafe(32)
    return None if replace_secret(store, key_id, _digest(secret), now) is None else f"pp_{key_id}_{secret}"


def key_id_of(presented: str) -> str | None:
    parts = presented.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "pp" else None


def authenticate(store: PlanStore, presented: str, now: datetime) -> Caller | None:
    """The caller a presented key stands for, or None when it is unknown, malformed, revoked or
    expired. Read through the store's cache, which reads the key again as soon as any process
    changed a key (pushplan.db.changes): a revocation holds at the next request everywhere."""
    key_id = key_id_of(presented)
    if key_id is None or len(key_id) > 16:
        return None
    stored: StoredKey | None = store.cached_keys.get(key_id, lambda: find_key(store, key_id))
    secret = presented.split("_", 2)[2]
    if stored is None or not hmac.compare_digest(stored.secret_hash, _digest(secret)):
        return None
    if not stored.usable_at(now):
        return None
    touch_key(store, stored, now)
    return Caller(stored.key_id, Role(stored.role), stored.team)
