"""The plan store's contract, run against SQLite (local) and the real PostgreSQL (production)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from dispatch.control import control
from dispatch.sending import scan_due
from pushplan.db.campaigns import CampaignFrozen
from pushplan.db.engine import migrate
from pushplan.db.schema import PlanItemRow
from pushplan.db.store import PlanStore
from pushplan.domain import Campaign
from pushplan.settings import Profile, Settings
from serving.planner import Audience, plan
from tests.dispatch_setup import campaign, send_items, store_campaign
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
        from pushplan.db.schema import PlanItemRow

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

    from pushplan.db.engine import VERSION_TABLE
    from pushplan.db.schema import Base

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


def test_held_sends_feed_the_caps_and_displaced_items_become_capped(store: PlanStore) -> None:
    from pushplan.caps import HELD_COLUMNS
    from pushplan.db.schema import PlanItemRow

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

    from pushplan.db.engine import VERSION_TABLE

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


def test_a_started_campaigns_spec_is_frozen_but_the_same_spec_may_be_sent_again(store: PlanStore) -> None:
    store.save_campaign(CAMPAIGN)
    store.save_campaign(CAMPAIGN.model_copy(update={"name": "Autumn sale"}))  # idle: still replaceable
    control(store, "autumn", "dispatch")
    started = store.get_campaign("autumn")
    assert started is not None and started.name == "Autumn sale"
    store.save_campaign(started)  # a campaign system's retry of the same spec is harmless
    one_variant = started.model_copy(update={"variants": started.variants[:1]})
    with pytest.raises(CampaignFrozen, match="'autumn' is running: its spec is frozen once dispatch"):
        store.save_campaign(one_variant)
    control(store, "autumn", "pause")
    with pytest.raises(CampaignFrozen, match="'autumn' is paused"):
        store.save_campaign(started.model_copy(update={"name": "Autumn"}))
    assert store.get_campaign("autumn") == started


RACE_START = datetime(2026, 11, 20, 9, tzinfo=UTC)


def _rows(store: PlanStore, campaign_id: str) -> dict[str, PlanItemRow]:
    with store.session() as session:
        query = sa.select(PlanItemRow).where(PlanItemRow.campaign_id == campaign_id)
        return {row.plan_id: row for row in session.scalars(query)}


def _just_before_the_insert(store: PlanStore, then: Any) -> None:
    """Run `then` once, on other connections, right before this store's next INSERT into plan_items
    reaches the database (inside the save's transaction, after anything it did before)."""
    done: list[bool] = []

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not done and statement.lstrip().upper().startswith("INSERT INTO PLAN_ITEMS"):
            done.append(True)
            then()

    event.listen(store.engine, "before_cursor_execute", hook)


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_a_due_scan_just_before_a_replans_insert_keeps_its_items(store: PlanStore) -> None:
    """A due-scan queues items while a re-plan of the same users is being saved: the re-plan's one
    statement sees they are queued now, and leaves them alone (and does not count them)."""
    race = campaign("race", RACE_START)
    users = [f"u{i}" for i in range(10)]
    first = [RACE_START + timedelta(hours=0 if i < 4 else 5) for i in range(10)]  # 4 due at the scan
    store_campaign(store, race, send_items(race, users, first))
    control(store, "race", "dispatch")
    chunks = []
    other = PlanStore(store.settings)  # the scan's own connections, as a worker's would be
    _just_before_the_insert(
        store, lambda: chunks.extend(scan_due(other, other.settings, as_of=RACE_START + timedelta(hours=1)))
    )
    later = RACE_START + timedelta(hours=9)
    written = store.save_items(send_items(race, users, [later] * 10).assign(p_click=0.5))

    claims = {plan_id: chunk.claim for chunk in chunks for plan_id in chunk.plan_ids}
    assert len(claims) == 4
    assert written == 6  # the queued ones were not replaced, and are not counted
    for plan_id, row in _rows(store, "race").items():
        if plan_id in claims:
            assert (row.state, row.claim, row.p_click) == ("queued", claims[plan_id], 0.05)
            assert row.send_at == RACE_START
        else:
            assert (row.state, row.claim, row.p_click) == ("planned", None, 0.5)
            assert row.send_at == later
    other.engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_concurrent_replans_and_due_scans_never_take_back_a_queued_item(store: PlanStore) -> None:
    """A re-plan loop and a due-scan loop on one campaign at once, for 1.5 s: each item the scan
    queued stays queued under the scan's claim, and no planned item carries a claim. Nothing sends
    and no lease lapses, so an item the scan queued twice was taken back by a re-plan in between."""
    churn = campaign("churn", RACE_START)
    users = [f"u{i:03d}" for i in range(400)]
    minutes = 400  # the sends spread over this many minutes, which the scan's clock walks through

    def spread(seed: int) -> pd.DataFrame:
        at = np.random.default_rng(seed).integers(0, minutes, len(users))
        return send_items(churn, users, [RACE_START + timedelta(minutes=int(m)) for m in at])

    store_campaign(store, churn, spread(0))
    control(store, "churn", "dispatch")
    duration, began = 1.5, time.monotonic()
    claims: dict[str, str] = {}
    queued_twice: list[str] = []
    replans: list[int] = []
    errors: list[BaseException] = []

    def scans() -> None:
        while (elapsed := time.monotonic() - began) < duration:
            as_of = RACE_START + timedelta(minutes=minutes * elapsed / duration)
            for chunk in scan_due(store, store.settings, as_of=as_of):
                queued_twice.extend(plan_id for plan_id in chunk.plan_ids if plan_id in claims)
                claims.update(dict.fromkeys(chunk.plan_ids, chunk.claim))

    def replan() -> None:
        seed = 1
        while time.monotonic() - began < duration:
            replans.append(store.save_items(spread(seed).assign(p_click=seed / 1000)))
            seed += 1

    def guarded(loop: Any) -> Any:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:  # surfaced below: a thread's exception is otherwise only printed
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(loop)) for loop in (scans, replan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    # Both loops ran side by side: re-plans replaced fewer items as the scan queued more of them.
    assert len(replans) >= 3 and len(set(replans)) > 1 and claims

    assert queued_twice == []
    rows = _rows(store, "churn")
    assert {plan_id for plan_id, row in rows.items() if row.state == "queued"} == set(claims)
    assert all(rows[plan_id].claim == claim for plan_id, claim in claims.items())
    assert not [row.plan_id for row in rows.values() if row.state == "planned" and row.claim is not None]


@pytest.mark.parametrize(
    "store", ["postgresql"], indirect=True
)  # SQLite's sessions take the write lock first
def test_two_plans_of_the_same_new_user_at_once_both_save(store: PlanStore) -> None:
    """Two service processes plan the same new user at once: the other one's item is committed just
    before this one's INSERT. This one replaces it, as a later plan would: one item, the last plan's,
    and no unique-key error."""
    twice = campaign("twice", RACE_START)
    store.save_campaign(twice)
    other = PlanStore(store.settings)
    saved = []
    _just_before_the_insert(
        store,
        lambda: saved.append(other.save_items(send_items(twice, ["u1"], [RACE_START + timedelta(hours=2)]))),
    )
    mine = send_items(twice, ["u1"], [RACE_START + timedelta(hours=5)]).assign(p_click=0.5)
    assert store.save_items(mine) == 1
    assert saved == [1]  # the other process did save first
    (row,) = _rows(store, "twice").values()
    assert (row.send_at, row.p_click) == (RACE_START + timedelta(hours=5), 0.5)
    other.engine.dispose()
