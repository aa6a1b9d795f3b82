"""dispatch: send state on plan items, campaign control, the SQL cap ledger, the event outbox, plan jobs

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table(
        "plan_items"
    ) as table:  # batch: SQLite cannot add columns with defaults otherwise
        table.add_column(sa.Column("timezone", sa.String(64)))
        table.add_column(sa.Column("detail", sa.String(500)))
        table.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("fallback_step", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("claim", sa.String(36)))
        table.add_column(sa.Column("lease_until", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("sent_at", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("opened_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("campaigns") as table:
        table.add_column(sa.Column("dispatch_state", sa.String(12), nullable=False, server_default="idle"))
    op.create_table(
        "cap_ledger",
        sa.Column("send_id", sa.String(48), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False, index=True),
        sa.Column("campaign_id", sa.String(200), nullable=False, index=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dispatch_events",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(20), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.String(200)),
        sa.Column("variant_id", sa.String(200)),
        sa.Column("channel", sa.String(20)),
        sa.Column("propensity", sa.Float),
        sa.Column("flushed", sa.Boolean, nullable=False, server_default=sa.false(), index=True),
    )
    op.create_table(
        "plan_jobs",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("campaign_id", sa.String(200), sa.ForeignKey("campaigns.campaign_id"), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("partitions_done", sa.Integer, nullable=False),
        sa.Column("users", sa.Integer, nullable=False),
        sa.Column("users_planned", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("error", sa.String(2000)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_plan_items_lease_until", "plan_items", ["lease_until"])


def downgrade() -> None:
    op.drop_index("ix_plan_items_lease_until", "plan_items")
    op.drop_table("plan_jobs")
    op.drop_table("dispatch_events")
    op.drop_table("cap_ledger")
    with op.batch_alter_table("campaigns") as table:
        table.drop_column("dispatch_state")
    with op.batch_alter_table("plan_items") as table:
        for column in (
            "opened_at",
            "sent_at",
            "lease_until",
            "claim",
            "fallback_step",
            "attempts",
            "detail",
            "timezone",
        ):
            table.drop_column(column)
