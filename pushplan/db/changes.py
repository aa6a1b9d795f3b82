"""Change stamps of API keys and campaigns, shared by every process of a deployment: what lets the
service keep a key's role and a campaign in memory for a few seconds and still see a revocation or
an edit at once, in every process.

Every PlanStore session that wrote a campaign or an API key writes a new stamp for it after its
commit (SQLAlchemy session events, so no write path can forget). A `Cached` read keeps the row with
the stamp it was read under, and reads it again when the stamp moved or after `CACHE_SECONDS`.

The stamp lives where all processes see it and it costs far less than the query it saves: a Redis
key in the production profile (one GET, about 0.1 ms, against 1–2 ms for a PostgreSQL round trip
with its session), and a small file in the local profile's data dir. Written by hand because no
library pairs an in-process cache with cross-process invalidation over both; if Redis or the file
cannot be reached, the stamp reads as "changed" (no cache) rather than as "unchanged".
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from pushplan.db.schema import ApiKeyRow, CampaignRow
from pushplan.settings import Profile, Settings

API_KEYS, CAMPAIGNS = "api_keys", "campaigns"
WATCHED = {ApiKeyRow: API_KEYS, CampaignRow: CAMPAIGNS}
# The longest a cached row is used without reading it again, whatever the stamps say (a write made
# outside PlanStore sessions, by hand in SQL, is seen within this).
CACHE_SECONDS = 5.0
_CHANGED = "pushplan_changed"  # the session.info key collecting what a transaction wrote

T = TypeVar("T")


class Stamps:
    """The current stamp of each kind (API_KEYS, CAMPAIGNS); `bump` gives a kind a new one."""

    def __init__(self, settings: Settings) -> None:
        self._redis: Any = None
        self._dir: Path | None = None
        if settings.profile is Profile.production and settings.redis_url:
            import redis

            self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=1.0)
            self._prefix = f"pushplan:{settings.feast_project}:changed:"
        else:
            self._dir = settings.data_dir / "changes"

    def read(self, kind: str) -> str | None:
        """The kind's stamp; None when it cannot be read (treat as changed)."""
        try:
            if self._redis is not None:
                value = self._redis.get(self._prefix + kind)
                return "" if value is None else value.decode()
            assert self._dir is not None
            path = self._dir / kind
            return path.read_text() if path.exists() else ""
        except Exception:  # unreachable store: no cache this time, never a stale answer
            return None

    def bump(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            with contextlib.suppress(Exception):  # the write is committed; CACHE_SECONDS bounds the rest
                if self._redis is not None:
                    self._redis.incr(self._prefix + kind)
                    continue
                assert self._dir is not None
                self._dir.mkdir(parents=True, exist_ok=True)
                scratch = self._dir / f".{kind}.{uuid.uuid4().hex}"
                scratch.write_text(uuid.uuid4().hex)
                os.replace(scratch, self._dir / kind)  # readers see the old stamp or the new, whole


def watch(sessions: sessionmaker[Session], stamps: Stamps) -> None:
    """Bump the stamps of what each committed transaction of `sessions` wrote."""

    def flushed(session: Session, _context: Any) -> None:
        for instance in (*session.new, *session.dirty, *session.deleted):
            kind = WATCHED.get(type(instance))
            if kind is not None:
                session.info.setdefault(_CHANGED, set()).add(kind)

    def executed(state: ORMExecuteState) -> None:
        if state.is_update or state.is_delete or state.is_insert:
            for mapper in state.all_mappers:
                kind = WATCHED.get(mapper.class_)
                if kind is not None:
                    state.session.info.setdefault(_CHANGED, set()).add(kind)

    def committed(session: Session) -> None:
        changed = session.info.pop(_CHANGED, None)
        if changed:
            stamps.bump(sorted(changed))

    def rolled_back(session: Session) -> None:
        session.info.pop(_CHANGED, None)

    event.listen(sessions, "after_flush", flushed)
    event.listen(sessions, "do_orm_execute", executed)
    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)


class Cached(Generic[T]):
    """Rows of one kind by key, each read again when the kind's stamp moved or after CACHE_SECONDS."""

    def __init__(self, stamps: Stamps, kind: str, seconds: float = CACHE_SECONDS) -> None:
        self.stamps, self.kind, self.seconds = stamps, kind, seconds
        self._entries: dict[str, tuple[str, float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, read: Callable[[], T]) -> T:
        stamp = self.stamps.read(self.kind)
        now = time.monotonic()
        entry = self._entries.get(key)
        if stamp is not None and entry is not None and entry[0] == stamp and now - entry[1] < self.seconds:
            return entry[2]
        value = read()
        if stamp is not None:
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()  # bounded: many ids probed must not grow memory
                self._entries[key] = (stamp, now, value)
        return value


MAX_ENTRIES = 10_000
