"""The application's database schema (SQLAlchemy ORM): campaigns, plan items, the local profile's send
ledger and suppression list, dispatch's event outbox, plan jobs, API keys, custom labels and the
trigger inbox, and the event store's index of event ids.

The schema is owned by the Alembic migrations beside it (`pushplan/db/migrations`), applied by
`pushplan.db.engine.migrate`; these classes mirror the latest migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The team of keys and campaigns made without one (and of everything made before teams existed).
DEFAULT_TEAM = "default"


@overload
def utc(moment: datetime) -> datetime: ...
@overload
def utc(moment: None) -> None: ...
def utc(moment: datetime | None) -> datetime | None:
    """A stored instant as an aware UTC datetime: SQLite hands back naive ones for timezone-aware
    columns (they were written in UTC); PostgreSQL's are aware already."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


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
    # A triggered campaign's event names (its `on` and `unless`), space-separated: what the inbox keeps.
    trigger_events: Mapped[str | None] = mapped_column(sa.String(1000))
    # Who owns it and who made it (migration 0010): a key acts only on its team's campaigns.
    team: Mapped[str] = mapped_column(sa.String(64), default=DEFAULT_TEAM, index=True)
    created_by: Mapped[str | None] = mapped_column(sa.String(200))
    # not_needed, draft (waits for an approver), approved or rejected (pushplan.approvals).
    approval: Mapped[str] = mapped_column(sa.String(12), default="not_needed")
    approval_reasons: Mapped[list[str] | None] = mapped_column(sa.JSON)
    decided_by: Mapped[str | None] = mapped_column(sa.String(200))
    decided_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    decision_comment: Mapped[str | None] = mapped_column(sa.Text)


class PlanItemRow(Base):
    __tablename__ = "plan_items"
    __table_args__ = (
        # A scheduled campaign's items have the firing "": one per user. A triggered campaign's have
        # the firing event's id: one per firing (migration 0008).
        sa.UniqueConstraint("campaign_id", "user_id", "firing_id", name="uq_plan_items_campaign_user_firing"),
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
    firing_id: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    fired_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # The end of the item's own send window (a firing's); NULL: the campaign's window.
    window_end: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


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
    """A whole-audience plan, partitioned into Celery tasks (serving.plan_jobs)."""

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
    team: Mapped[str] = mapped_column(sa.String(64), default=DEFAULT_TEAM)
    name: Mapped[str | None] = mapped_column(sa.String(200))  # who holds it, in words
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    rotated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class AuditRow(Base):
    """One state-changing call (migration 0010): who, what, when, from where, and how it ended.
    Appended, never updated (PostgreSQL refuses UPDATE and DELETE on the table)."""

    __tablename__ = "audit_log"

    audit_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(sa.String(200))  # key:<id>, or cli:<os user>
    team: Mapped[str | None] = mapped_column(sa.String(64))
    role: Mapped[str | None] = mapped_column(sa.String(20))
    action: Mapped[str] = mapped_column(sa.String(100))  # "POST /v1/campaigns/{campaign_id}/dispatch"
    target: Mapped[str | None] = mapped_column(sa.String(300), index=True)
    source: Mapped[str | None] = mapped_column(sa.String(200))  # client address, or "cli"
    outcome: Mapped[str] = mapped_column(sa.String(40))  # HTTP status, or ok / refused: …
    detail: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class LabelRow(Base):
    """One version of an operator's custom label (migration 0007): the newest version is in force."""

    __tablename__ = "labels"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    rule: Mapped[str | None] = mapped_column(sa.Text)  # None: removed
    author: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class TriggerInboxRow(Base):
    """Events a live trigger listens to, kept for the firing task (migration 0008): written by
    `POST /v1/events`, imports and dispatch's outbox flush, idempotently on event_id; claimed by a
    task under a lease like plan items are, and kept after processing for `unless` look-ups."""

    __tablename__ = "trigger_inbox"
    __table_args__ = (
        sa.Index(
            "ix_trigger_inbox_pending",
            "timestamp",
            postgresql_where=sa.text("processed_at IS NULL"),
            sqlite_where=sa.text("processed_at IS NULL"),
        ),
        sa.Index("ix_trigger_inbox_user", "user_id", "event_type", "timestamp"),
    )

    event_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(200))
    event_type: Mapped[str] = mapped_column(sa.String(64))
    timestamp: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    campaign_id: Mapped[str | None] = mapped_column(sa.String(200))
    properties: Mapped[str | None] = mapped_column(sa.Text)
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    claim: Mapped[str | None] = mapped_column(sa.String(36))
    lease_until: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class EventIndexRow(Base):
    """Every event id the event store holds (migration 0009), so an import de-duplicates with one keyed
    INSERT instead of reading every stored id; `import_id` names the import that stored it."""

    __tablename__ = "event_index"

    event_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    import_id: Mapped[str] = mapped_column(sa.String(32), index=True)


class EventImportRow(Base):
    """An import between its claim of new ids and its part files being in place (migration 0009), so
    one that died in between is finished or undone by the next import; deleted when it commits. The
    row `store:<uuid>` marks an index built for the event store of that id (events/_store_id)."""

    __tablename__ = "event_imports"

    import_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
