"""each send's outcome in the cap ledger, and the suppression list

Revision ID: 0006
Revises: 0005

The send step settles every channel call in the ledger before it makes the next one (reserved, then
sent or unknown), so a worker that dies mid-chunk leaves at most its call under way in doubt. Rows
from before this are sends already made: they become `sent`. The suppression list holds each user's
latest opt-out or opt-in per channel ("*" for all), which the ledger checks at the send instant.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cap_ledger") as table:
        table.add_column(sa.Column("status", sa.String(8), nullable=False, server_default="sent"))
    op.create_table(
        "suppressions",
        sa.Column("user_id", sa.String(200), primary_key=True),
        sa.Column("channel", sa.String(20), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opted_out", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    with op.batch_alter_table("cap_ledger") as table:
        table.drop_column("status")
