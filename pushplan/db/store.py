"""The plan store: one handle on the application's database (SQLite locally, PostgreSQL in
production) with the repositories of campaigns and plan items; sessions begin a transaction each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from pushplan.db.campaigns import CampaignRepository
from pushplan.db.engine import database_url, engine_for
from pushplan.db.plan_items import PlanItemRepository
from pushplan.settings import Settings


class PlanStore(CampaignRepository, PlanItemRepository):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = engine_for(database_url(settings))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session
