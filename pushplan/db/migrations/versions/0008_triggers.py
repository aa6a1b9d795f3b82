"""triggered campaigns: items per firing, each with its own window, and the trigger inbox

Revision ID: 0008
Revises: 0007

A triggered campaign plans one item per firing (a user's event that its trigger listens to), so a
user may hold several items of one campaign: the key of an item becomes (campaign, user, firing),
where a scheduled campaign's items have the firing ''. `fired_at` is the firing event's instant and
`window_end` the end of the item's own send window (NULL: the campaign's window). Campaigns note
the event names their trigger listens to, and the inbox keeps those events until the firing task
has processed them (and for the longest delay after, for `unless`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plan_items") as table:
        table.add_column(sa.Column("firing_id", sa.String(200), nullable=False, server_default=""))
        table.add_column(sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("window_end", sa.DateTime(timezone=True), nullable=True))
        table.drop_constraint("uq_plan_items_campaign_user", type_="unique")
        table.create_unique_constraint(
            "uq_plan_items_campaign_user_firing", ["campaign_id", "user_id", "firing_id"]
        )
    with op.batch_alter_table("campaigns") as table:
        table.add_column(sa.Column("trigger_events", sa.String(1000), nullable=True))
    op.create_table(
        "trigger_inbox",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.String(200), nullable=True),
        sa.Column("properties", sa.Text, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim", sa.String(36), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_trigger_inbox_pending",
        "trigger_inbox",
        ["timestamp"],
        postgresql_where=sa.text("processed_at IS NULL"),
        sqlite_where=sa.text("processed_at IS NULL"),
    )
    op.create_index("ix_trigger_inbox_user", "trigger_inbox", ["user_id", "event_type", "timestamp"])


def downgrade() -> None:
    op.drop_table("trigger_inbox")
    with op.batch_alter_table("campaigns") as table:
        table.drop_column("trigger_events")
    with op.batch_alter_table("plan_items") as table:
        table.drop_constraint("uq_plan_items_campaign_user_firing", type_="unique")
        table.create_unique_constraint("uq_plan_items_campaign_user", ["campaign_id", "user_id"])
        table.drop_column("window_end")
        table.drop_column("fired_at")
        table.drop_column("firing_id")
