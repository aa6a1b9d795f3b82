"""The plan store: campaigns and plan items in SQL (SQLite locally, PostgreSQL in production).

The schema is owned by Alembic migrations (`dispatch/migrations`), applied by `migrate(settings)`;
the ORM classes below mirror the latest migration. Re-planning is idempotent: an item is keyed by
(campaign, user), and a new plan replaces only items not yet handed to dispatch (`planned`, or
`suppressed` skips and holdouts), never one queued, sent, failed or cancelled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, cast

import pandas as pd
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from pydantic import ValidationError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from pushplan.caps import HELD_COLUMNS, item_value
from pushplan.domain import Campaign, Decision, ItemState, PlanItem, Reason
from pushplan.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
# In production the plan store shares its PostgreSQL database with MLflow, which keeps its own
# Alembic history in the default `alembic_version` table; ours must not collide with it.
VERSION_TABLE = "pushplan_alembic_version"
# States a new plan may overwrite: not yet handed to dispatch. Queued, sent, failed and cancelled
# items are dispatch's record of what happened and are never rewritten by planning.
REPLANNABLE = {ItemState.planned.value, ItemState.suppressed.value}
# States whose sends count against a user's caps: still to go, on their way, or gone.
HOLDING = (
    ItemState.planned.value,
    ItemState.queued.value,
    ItemState.sent.value,
    ItemState.unknown.value,  # maybe delivered: it counts, like a send
)
# A plan in a window needs the holdings a week either side of it: the widest cap is 7 days.
HOLDING_MARGIN = timedelta(days=7)
# Past this many users, held sends are read by time range and filtered here, not by an IN list.
USER_FILTER_LIMIT = 10_000


class Base(DeclarativeBase):
    pass


class CampaignRow(Base):
    __tablename__ = "campaigns"

    campaign_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(500))
    status: Mapped[str] = mapped_column(sa.String(20), default="active")
    dispatch_state: Mapped[str] = mapped_column(sa.String(12), default="idle")  # DispatchState
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class PlanItemRow(Base):
    __tablename__ = "plan_items"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "user_id", name="uq_plan_items_campaign_user"),
        # The due-scan's two questions (migration 0004): due sends, and lapsed leases.
        sa.Index(
            "ix_plan_items_due",
            "send_at",
            "plan_id",
            postgresql_where=sa.text("state = 'planned' AND decision = 'send'"),
            sqlite_where=sa.text("state = 'planned' AND decision = 'send'"),
        ),
        sa.Index(
            "ix_plan_items_queued_lease",
            "lease_until",
            postgresql_where=sa.text("state = 'queued'"),
            sqlite_where=sa.text("state = 'queued'"),
        ),
    )

    plan_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(sa.ForeignKey("campaigns.campaign_id"), index=True)
    user_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    decision: Mapped[str] = mapped_column(sa.String(10))
    reason: Mapped[str | None] = mapped_column(sa.String(20))
    channel: Mapped[str | None] = mapped_column(sa.String(20))
    variant_id: Mapped[str | None] = mapped_column(sa.String(200))
    send_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    local_send_at: Mapped[str | None] = mapped_column(sa.String(40))
    p_click: Mapped[float | None] = mapped_column(sa.Float)
    expected_uplift: Mapped[float | None] = mapped_column(sa.Float)
    propensity: Mapped[float | None] = mapped_column(sa.Float)
    model_variant_id: Mapped[str | None] = mapped_column(sa.String(200))
    model_send_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    model_versions: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(12), index=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[str | None] = mapped_column(sa.String(500))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    fallback_step: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Dispatch's fencing token: the due-scan writes a new one each time it hands the item to a task,
    # and only the task holding the current one may record what happened (dispatch.sending).
    claim: Mapped[str | None] = mapped_column(sa.String(36))
    lease_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    opened_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class CapLedgerRow(Base):
    """The `local` profile's frequency-cap ledger: one row per reserved send (dispatch.ledger)."""

    __tablename__ = "cap_ledger"

    send_id: Mapped[str] = mapped_column(sa.String(48), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    campaign_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    channel: Mapped[str] = mapped_column(sa.String(20))
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    # reserved (its call may be under way), sent or unknown: the call's outcome, durable before the
    # next call starts (migration 0006; rows from before it are sends already made).
    status: Mapped[str] = mapped_column(sa.String(8), default="reserved")


class SuppressionRow(Base):
    """The `local` profile's suppression list: a user's latest opt-out or opt-in per channel ("*": all),
    checked in the same transaction as the caps (dispatch.ledger)."""

    __tablename__ = "suppressions"

    user_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    opted_out: Mapped[bool] = mapped_column(sa.Boolean)


class DispatchEventRow(Base):
    """Events dispatch owes the event store, written in the same transaction as the send's record
    (an outbox), and flushed to the event store by a periodic task: none is lost if a worker dies."""

    __tablename__ = "dispatch_events"

    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(200))
    event_type: Mapped[str] = mapped_column(sa.String(20))
    timestamp: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    campaign_id: Mapped[str | None] = mapped_column(sa.String(200))
    variant_id: Mapped[str | None] = mapped_column(sa.String(200))
    channel: Mapped[str | None] = mapped_column(sa.String(20))
    propensity: Mapped[float | None] = mapped_column(sa.Float)
    flushed: Mapped[bool] = mapped_column(sa.Boolean, default=False, index=True)


class PlanJobRow(Base):
    """A whole-audience plan, partitioned into Celery tasks (dispatch.plan_jobs)."""

    __tablename__ = "plan_jobs"

    job_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(sa.ForeignKey("campaigns.campaign_id"))
    state: Mapped[str] = mapped_column(sa.String(12))
    partitions: Mapped[int] = mapped_column(sa.Integer)
    partitions_done: Mapped[int] = mapped_column(sa.Integer)
    users: Mapped[int] = mapped_column(sa.Integer)
    users_planned: Mapped[int] = mapped_column(sa.Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.String(2000))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    role: Mapped[str] = mapped_column(sa.String(20))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(sa.Boolean)


def database_url(settings: Settings) -> str:
    return settings.sql_url("plans.db")


def migrate(settings: Settings) -> None:
    """Bring the plan store's schema to the latest Alembic revision."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url(settings).replace("%", "%%"))
    _adopt_shared_version_table(config, database_url(settings))
    command.upgrade(config, "head")


def _adopt_shared_version_table(config: Config, url: str) -> None:
    """Stores made before VERSION_TABLE kept their revision in Alembic's default table: carry it
    over once, so upgrading pushplan never tries to create the tables they already have."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        if "alembic_version" not in tables or "plan_items" not in tables:
            return
        with engine.connect() as connection:
            if VERSION_TABLE in tables and connection.scalar(
                sa.text(f"select count(*) from {VERSION_TABLE}")
            ):
                return
            revisions = connection.execute(sa.text("select version_num from alembic_version")).scalars().all()
    finally:
        engine.dispose()
    scripts = ScriptDirectory.from_config(config)
    for revision in revisions:  # MLflow's revisions may share the table; only ours are known here
        try:
            if scripts.get_revision(revision) is not None:
                command.stamp(config, revision)
                return
        except CommandError:
            continue


def _engine(url: str) -> sa.Engine:
    """An engine for the store; on SQLite, one on which several processes (API, workers, beat) can write.

    pysqlite opens transactions lazily and as DEFERRED, so two writers that both read first deadlock
    on the upgrade to a write lock; SQLAlchemy's documented recipe is to take the driver's hands off
    and begin each transaction IMMEDIATE, which waits (up to `timeout`) for the other writer instead.
    WAL lets readers go on while one writes.
    """
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("pragma journal_mode=wal")
        dbapi_connection.execute("pragma synchronous=normal")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("begin immediate")

    return engine


class CampaignFrozen(ValueError):
    """A new spec for a campaign whose dispatch has started: its items were planned and sent under
    the old one, so replacing it would make later sends and the experiment's record disagree."""


class PlanStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = _engine(database_url(settings))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def save_campaign(self, campaign: Campaign) -> None:
        """Create the campaign, or replace its spec while its dispatch has not started.

        Once started (dispatch_state not `idle`), only the same spec again is accepted, as a
        harmless retry; any other raises CampaignFrozen.
        """
        now = datetime.now(UTC)
        with self.session() as session:
            # FOR UPDATE: dispatch.control starts a campaign under the same row lock, so the state
            # read here holds until this commits; no spec lands after a start it did not see.
            row = session.get(CampaignRow, campaign.campaign_id, with_for_update=True)
            spec = campaign.model_dump(mode="json")
            if row is not None and row.dispatch_state != "idle" and not _same_spec(row.spec, campaign):
                raise CampaignFrozen(
                    f"campaign {campaign.campaign_id!r} is {row.dispatch_state}: its spec is frozen "
                    "once dispatch has started; create a new campaign"
                )
            if row is None:
                session.add(
                    CampaignRow(
                        campaign_id=campaign.campaign_id,
                        name=campaign.name,
                        spec=spec,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                row.name, row.spec, row.updated_at = campaign.name, spec, now

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        with self.session() as session:
            row = session.get(CampaignRow, campaign_id)
            return Campaign.stored(row.spec) if row else None

    def save_items(self, items: pd.DataFrame, displaced: list[str] | None = None) -> int:
        """Insert new items, replace REPLANNABLE ones of the same (campaign, user); returns rows written.

        `displaced` are other campaigns' items a higher-value send took the place of: in the same
        transaction they become `skip` / `capped`, if they are still only planned.
        """
        if items.empty and not displaced:
            return 0
        records = [PlanItem.model_validate(missing_to_none(r)).model_dump() for r in items.to_dict("records")]
        now = datetime.now(UTC)
        written = 0
        with self.session() as session:
            if displaced:
                session.execute(
                    sa.update(PlanItemRow)
                    .where(PlanItemRow.plan_id.in_(displaced), PlanItemRow.state == ItemState.planned.value)
                    .values(
                        decision=Decision.skip.value,
                        reason=Reason.capped.value,
                        state=ItemState.suppressed.value,
                        updated_at=now,
                    )
                )
            if not records:
                return 0
            existing = self._existing_items(session, records)
            replacements = []
            for record in records:
                values = {k: _column_value(v) for k, v in record.items()}
                found = existing.get((values["campaign_id"], values["user_id"]))
                if found is None:
                    session.add(PlanItemRow(**values, updated_at=now))
                    written += 1
                elif found[1] in REPLANNABLE:
                    del values["plan_id"]  # the stored item keeps its id
                    replacements.append({**values, "updated_at": now, "replaced_id": found[0]})
            if replacements:
                # The state read above may be stale by now: a due-scan can queue the item in between
                # (PostgreSQL lets it; SQLite's write lock does not). The predicate in the UPDATE is
                # what keeps a queued item dispatch's, and rowcount what was really replaced.
                result = cast(sa.CursorResult[Any], session.execute(_REPLACE_PLANNED, replacements))
                written += result.rowcount
        return written

    def _existing_items(
        self, session: Session, records: list[dict[str, Any]]
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """(campaign, user) → (plan_id, state) of the stored items `records` would replace; a step
        of its own so that a test can run a due-scan between this read and the writes after it."""
        rows = session.execute(
            sa.select(
                PlanItemRow.campaign_id, PlanItemRow.user_id, PlanItemRow.plan_id, PlanItemRow.state
            ).where(
                PlanItemRow.campaign_id.in_({r["campaign_id"] for r in records}),
                PlanItemRow.user_id.in_([r["user_id"] for r in records]),
            )
        )
        return {(campaign_id, user_id): (plan_id, state) for campaign_id, user_id, plan_id, state in rows}

    def list_items(
        self,
        campaign_id: str,
        *,
        decision: str | None = None,
        reason: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[PlanItem]:
        """Items of a campaign in plan_id order, `limit` at a time after the cursor `after`."""
        query = sa.select(PlanItemRow).where(PlanItemRow.campaign_id == campaign_id)
        if decision:
            query = query.where(PlanItemRow.decision == decision)
        if reason:
            query = query.where(PlanItemRow.reason == reason)
        if after:
            query = query.where(PlanItemRow.plan_id > after)
        with self.session() as session:
            rows = session.scalars(query.order_by(PlanItemRow.plan_id).limit(limit)).all()
            return [PlanItem.model_validate(_from_row(row)) for row in rows]

    def held_sends(self, campaign: Campaign, user_ids: list[str] | None = None) -> pd.DataFrame:
        """Other campaigns' sends that count against caps near `campaign`'s window (HELD_COLUMNS).

        `priority` and `value` say what each is worth (serving.planner.item_value); `movable` is
        whether planning may still displace it (only `planned` items: queued ones are dispatch's).
        """
        query = (
            sa.select(
                PlanItemRow.plan_id,
                PlanItemRow.campaign_id,
                PlanItemRow.user_id,
                PlanItemRow.channel,
                PlanItemRow.send_at,
                PlanItemRow.p_click,
                PlanItemRow.state,
            )
            .where(
                PlanItemRow.campaign_id != campaign.campaign_id,
                PlanItemRow.decision == Decision.send.value,
                PlanItemRow.state.in_(HOLDING),
                PlanItemRow.send_at >= campaign.window.start - HOLDING_MARGIN,
                PlanItemRow.send_at < campaign.window.end + HOLDING_MARGIN,
            )
            .order_by(PlanItemRow.plan_id)
        )
        small = user_ids is not None and len(user_ids) <= USER_FILTER_LIMIT
        if small:
            query = query.where(PlanItemRow.user_id.in_(user_ids or []))
        with self.session() as session:
            rows = session.execute(query).all()
            if not rows:  # the common case on a hot path: nothing held, no frame work
                return pd.DataFrame(columns=list(HELD_COLUMNS))
            held = pd.DataFrame(rows, columns=[*HELD_COLUMNS[:5], "p_click", "state"])
            others = {
                row.campaign_id: Campaign.stored(row.spec)
                for row in session.scalars(
                    sa.select(CampaignRow).where(CampaignRow.campaign_id.in_(set(held["campaign_id"])))
                )
            }
        if user_ids is not None and not small:
            held = held[held["user_id"].isin(set(user_ids))]
        held["send_at"] = pd.to_datetime(held["send_at"], utc=True)  # SQLite keeps no zone; we store UTC
        held["priority"] = [others[c].priority for c in held["campaign_id"]]
        held["value"] = [
            float(item_value(others[c], p)) for c, p in zip(held["campaign_id"], held["p_click"], strict=True)
        ]
        held["movable"] = held["state"] == ItemState.planned.value
        return held[list(HELD_COLUMNS)].reset_index(drop=True)

    def sends_kept(self, campaign_id: str, user_ids: list[str]) -> int:
        """The campaign's sends a new plan for `user_ids` leaves standing: those of other users, and
        those already queued or sent (never rewritten). They count toward its `campaign_total`."""
        with self.session() as session:
            rows = session.execute(
                sa.select(PlanItemRow.user_id, PlanItemRow.state).where(
                    PlanItemRow.campaign_id == campaign_id,
                    PlanItemRow.decision == Decision.send.value,
                    PlanItemRow.state.in_(HOLDING),
                )
            ).all()
        listed = set(user_ids)
        return sum(1 for user, state in rows if user not in listed or state not in REPLANNABLE)

    def counts(self, campaign_id: str) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(
                sa.select(PlanItemRow.decision, sa.func.count())
                .where(PlanItemRow.campaign_id == campaign_id)
                .group_by(PlanItemRow.decision)
            ).all()
        return {decision: int(count) for decision, count in rows}


# Replaces one re-planned item by id, if it is still REPLANNABLE; run once per item (executemany).
# One comparison per state rather than IN: an IN list is an expanding parameter, which executemany
# refuses.
_PLAN_ITEMS = cast(sa.Table, PlanItemRow.__table__)
_REPLACE_PLANNED = sa.update(_PLAN_ITEMS).where(
    _PLAN_ITEMS.c.plan_id == sa.bindparam("replaced_id"),
    sa.or_(*(_PLAN_ITEMS.c.state == state for state in sorted(REPLANNABLE))),
)


def _same_spec(stored: dict[str, Any], campaign: Campaign) -> bool:
    try:
        return Campaign.model_validate(stored) == campaign
    except ValidationError:  # stored before a rule it breaks: not the same as one that keeps it
        return False


def _column_value(value: Any) -> Any:
    """Enums as their values, pandas timestamps as plain datetimes: what every SQL driver takes."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def missing_to_none(record: dict[str, Any]) -> dict[str, Any]:
    """Missing values from a frame (NaN, NaT) become None for the contract."""
    return {k: (None if not isinstance(v, dict | list) and pd.isna(v) else v) for k, v in record.items()}


def _from_row(row: PlanItemRow) -> dict[str, Any]:
    values = {column.name: getattr(row, column.name) for column in PlanItemRow.__table__.columns}
    for internal in ("updated_at", "claim", "lease_until", "opened_at"):
        values.pop(internal)
    for instant in ("send_at", "model_send_at", "sent_at"):
        if values[instant] is not None and values[instant].tzinfo is None:
            values[instant] = values[instant].replace(tzinfo=UTC)  # SQLite keeps no zone; we store UTC
    return values
