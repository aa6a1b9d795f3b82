"""The plan store's contract, run against SQLite (local) and the real PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from dispatch.plan_store import PlanStore, migrate
from pushplan.domain import Campaign
from pushplan.settings import Profile, Settings
from serving.planner import Audience, plan
from tests.services import REDIS_URL, scratch_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlanStore]:
    data_dir = tmp_path_factory.mktemp("plans")
    if request.param == "sqlite":
        settings = Settings(data_dir=data_dir)
        migrate(settings)
        yield PlanStore(settings)
        return
    request.applymarker(pytest.mark.integration)
    with scratch_database("pushplan_plans") as database_url:
        settings = Settings(
            profile=Profile.production, data_dir=data_dir, redis_url=REDIS_URL, database_url=database_url
        )
        migrate(settings)
        migrate(settings)  # applying the migrations again changes nothing
        plan_store = PlanStore(settings)
        yield plan_store
        plan_store.engine.dispose()


CAMPAIGN = Campaign.model_validate(
    {
        "campaign_id": "autumn",
        "name": "Autumn",
        "channels": ["push"],
        "variants": [{"variant_id": "a", "title": "A"}, {"variant_id": "b", "title": "B"}],
        "window": {"start": "2026-10-24T00:00:00Z", "end": "2026-10-26T00:00:00Z"},
        "holdout_fraction": 0.2,
    }
)


def items(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "timezone": rng.choice(["Europe/Berlin", "Asia/Tokyo"], n),
            "push_opt_in": rng.random(n) < 0.9,
        }
    )
    audience = Audience(users, rng.dirichlet(np.ones(24), n), rng.random((n, 2)) * 0.1, {"send-hour": "3"})
    return plan(CAMPAIGN, audience, datetime(2026, 10, 24, tzinfo=UTC), seed=seed)


def test_campaigns_round_trip(store: PlanStore) -> None:
    store.save_campaign(CAMPAIGN)
    assert store.get_campaign("autumn") == CAMPAIGN
    renamed = CAMPAIGN.model_copy(update={"name": "Autumn sale"})
    store.save_campaign(renamed)
    assert store.get_campaign("autumn") == renamed
    assert store.get_campaign("nope") is None


def test_items_round_trip_paginate_and_filter(store: PlanStore) -> None:
    store.save_campaign(CAMPAIGN)
    planned = items()
    assert store.save_items(planned) == len(planned)
    counts = store.counts("autumn")
    assert counts == planned["decision"].value_counts().to_dict()

    seen, cursor = [], None
    while True:
        page = store.list_items("autumn", limit=64, after=cursor)
        if not page:
            break
        seen += page
        cursor = page[-1].plan_id
    assert len(seen) == len(planned) and len({i.plan_id for i in seen}) == len(planned)
    first = next(i for i in seen if i.decision == "send")
    row = planned.set_index("plan_id").loc[first.plan_id]
    assert first.send_at == row["send_at"] and first.variant_id == row["variant_id"]
    assert first.model_versions == {"send-hour": "3"}
    # The models' own choice round-trips on every item, null where the planner never timed it.
    stored = {i.plan_id: (i.model_variant_id, i.model_send_at) for i in seen}
    choices = planned.set_index("plan_id")[["model_variant_id", "model_send_at"]]
    assert stored == {p: (v, None if pd.isna(at) else at) for p, v, at in choices.itertuples()}
    assert {at is None for _, at in stored.values()} == {True, False}
    assert any(
        i.model_send_at and (i.model_variant_id, i.model_send_at) != (i.variant_id, i.send_at) for i in seen
    )

    holdouts = store.list_items("autumn", decision="holdout", limit=1000)
    assert {i.reason for i in holdouts} == {"holdout"} and len(holdouts) == counts.get("holdout", 0)
    opted_out = store.list_items("autumn", reason="opted_out", limit=1000)
    assert all(i.decision == "skip" for i in opted_out)


def test_replanning_never_rewrites_an_item_dispatch_has(store: PlanStore) -> None:
    store.save_campaign(CAMPAIGN)
    store.save_items(items(seed=0))
    first_send = store.list_items("autumn", decision="send", limit=1)[0]
    with store.session() as session:
        from dispatch.plan_store import PlanItemRow

        session.get(PlanItemRow, first_send.plan_id).state = "sent"
    replanned = items(seed=5)  # other exploration draws: some items change
    written = store.save_items(replanned)
    assert written == len(replanned) - 1
    kept = next(i for i in store.list_items("autumn", limit=1000) if i.plan_id == first_send.plan_id)
    assert kept.state == "sent" and kept.send_at == first_send.send_at
    assert sum(store.counts("autumn").values()) == len(replanned)


def test_the_migrations_build_what_the_models_describe(store: PlanStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dispatch.plan_store import VERSION_TABLE, Base

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


def test_held_sends_feed_the_caps_and_displaced_items_become_capped(store: PlanStore) -> None:
    from dispatch.plan_store import PlanItemRow
    from pushplan.caps import HELD_COLUMNS

    store.save_campaign(CAMPAIGN)
    rival = CAMPAIGN.model_copy(update={"campaign_id": "rival", "priority": 2})
    store.save_campaign(rival)
    planned = items()
    store.save_items(planned)
    sends = planned[planned["decision"] == "send"]
    users = [f"u{i}" for i in range(200)]

    held = store.held_sends(rival, users)
    assert list(held.columns) == list(HELD_COLUMNS)
    assert sorted(held["plan_id"]) == sorted(sends["plan_id"])
    assert str(held["send_at"].dtype) == "datetime64[ns, UTC]"
    assert set(held["send_at"]) == set(sends["send_at"])
    assert held["movable"].all() and (held["priority"] == 0).all()
    assert held["value"].tolist() == pytest.approx(sends.set_index("plan_id").loc[held["plan_id"], "p_click"])
    assert store.held_sends(CAMPAIGN, users).empty  # a campaign does not hold against itself
    assert len(store.held_sends(rival, users[:10])) == int(sends["user_id"].isin(users[:10]).sum())

    queued, weak, *_ = held["plan_id"]
    with store.session() as session:
        session.get(PlanItemRow, queued).state = "queued"
    assert not store.held_sends(rival, users).set_index("plan_id").at[queued, "movable"]
    store.save_items(planned.iloc[:0], displaced=[queued, weak])
    after = {i.plan_id: i for i in store.list_items("autumn", limit=1000)}
    assert (after[weak].decision, after[weak].reason, after[weak].state) == ("skip", "capped", "suppressed")
    assert after[queued].state == "queued" and after[queued].decision == "send"  # dispatch owns it
    assert store.sends_kept("autumn", []) == len(sends) - 1
    assert store.sends_kept("autumn", users) == 1  # only the queued one survives a re-plan of everyone


def test_a_store_from_before_its_own_version_table_is_adopted_and_keeps_its_rows(store: PlanStore) -> None:
    """Earlier releases kept the plan store's revision in Alembic's default table (MLflow's too)."""
    import sqlalchemy as sa

    from dispatch.plan_store import VERSION_TABLE

    store.save_campaign(CAMPAIGN)
    with store.engine.begin() as connection:
        head = connection.scalar(sa.text(f"select version_num from {VERSION_TABLE}"))
        connection.execute(sa.text(f"drop table {VERSION_TABLE}"))
        connection.execute(sa.text("create table alembic_version (version_num varchar(32) primary key)"))
        connection.execute(
            sa.text("insert into alembic_version values ('0a1b2c3d4e5f'), (:head)"), {"head": head}
        )
    migrate(store.settings)
    assert store.get_campaign("autumn") == CAMPAIGN
    with store.engine.connect() as connection:
        assert connection.scalar(sa.text(f"select version_num from {VERSION_TABLE}")) == head
