"""The plan store: one handle on the application's database (SQLite locally, PostgreSQL in
production) with the repositories of campaigns and plan items; sessions begin a transaction each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from pushplan.db.campaigns import CampaignRepository
from pushplan.db.changes import API_KEYS, CAMPAIGNS, Cached, Stamps, watch
from pushplan.db.engine import database_url, engine_for
from pushplan.db.plan_items import PlanItemRepository
from pushplan.settings import Settings


class PlanStore(CampaignRepository, PlanItemRepository):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = engine_for(database_url(settings))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Keys and campaigns as the service reads them per request, cached under change stamps.
        self.stamps = Stamps(settings)
        watch(self._sessions, self.stamps)
        self.cached_keys: Cached[Any] = Cached(self.stamps, API_KEYS)
        self.cached_campaigns: Cached[Any] = Cached(self.stamps, CAMPAIGNS)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session
