"""campaigns and plan items

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "plan_items",
        sa.Column("plan_id", sa.String(36), primary_key=True),
        sa.Column("campaign_id", sa.String(200), sa.ForeignKey("campaigns.campaign_id"), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("decision", sa.String(10), nullable=False),
        sa.Column("reason", sa.String(20)),
        sa.Column("channel", sa.String(20)),
        sa.Column("variant_id", sa.String(200)),
        sa.Column("send_at", sa.DateTime(timezone=True)),
        sa.Column("local_send_at", sa.String(40)),
        sa.Column("p_click", sa.Float),
        sa.Column("expected_uplift", sa.Float),
        sa.Column("propensity", sa.Float),
        sa.Column("model_versions", sa.JSON, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("campaign_id", "user_id", name="uq_plan_items_campaign_user"),
    )
    op.create_index("ix_plan_items_campaign_id", "plan_items", ["campaign_id"])
    op.create_index("ix_plan_items_user_id", "plan_items", ["user_id"])
    op.create_index("ix_plan_items_send_at", "plan_items", ["send_at"])
    op.create_index("ix_plan_items_state", "plan_items", ["state"])


def downgrade() -> None:
    op.drop_table("plan_items")
    op.drop_table("campaigns")
