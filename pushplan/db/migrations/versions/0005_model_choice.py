"""the models' own choice on plan items: the variant and slot they ranked first, before exploration

Revision ID: 0005
Revises: 0004

Doubly robust off-policy estimates of "always the models' choice" need it on every item, also
where exploration or a cap deferral changed what the item carries. Items planned before this
have none (null), as do items skipped before they were timed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plan_items") as table:
        table.add_column(sa.Column("model_variant_id", sa.String(200)))
        table.add_column(sa.Column("model_send_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("plan_items") as table:
        table.drop_column("model_send_at")
        table.drop_column("model_variant_id")
