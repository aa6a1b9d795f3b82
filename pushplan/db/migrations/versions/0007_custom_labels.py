"""custom labels: operators' named audience rules, every version kept

Revision ID: 0007
Revises: 0006

A label is defined by a rule (pushplan.audience_rules) and recomputed with the feature tables. Each
change is a new version with its author; the newest version of a name is the one in force, and a
version whose rule is NULL removes the label. Nothing is updated or deleted, so what a label meant
on any day can be read back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("labels")
