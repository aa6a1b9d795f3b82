"""the event store's index of event ids, and the imports that wrote them

Revision ID: 0009
Revises: 0008

Imports used to read every stored event id to de-duplicate, which slows intake as the store grows.
`event_index` keys every stored id (with the import that stored it); `event_imports` holds each
import from its claim of new ids until its part files are in place, so one that died in between can
be finished or undone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_index",
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("import_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_event_index_import_id", "event_index", ["import_id"])
    op.create_table(
        "event_imports",
        sa.Column("import_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event_imports")
    op.drop_table("event_index")
