"""partial indexes for the due-scan: due sends, and leases of queued items

Revision ID: 0004
Revises: 0003

The due-scan asks twice a few seconds for `planned` sends due by now and `queued` items whose lease
lapsed. Without these it walks the send_at index past every item already sent, and the state index
past every queued one (the benchmark's profile: most of a scan's time).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DUE = "state = 'planned' AND decision = 'send'"
QUEUED = "state = 'queued'"


def upgrade() -> None:
    op.create_index(
        "ix_plan_items_due",
        "plan_items",
        ["send_at", "plan_id"],
        postgresql_where=sa.text(DUE),
        sqlite_where=sa.text(DUE),
    )
    op.create_index(
        "ix_plan_items_queued_lease",
        "plan_items",
        ["lease_until"],
        postgresql_where=sa.text(QUEUED),
        sqlite_where=sa.text(QUEUED),
    )


def downgrade() -> None:
    op.drop_index("ix_plan_items_queued_lease", "plan_items")
    op.drop_index("ix_plan_items_due", "plan_items")
