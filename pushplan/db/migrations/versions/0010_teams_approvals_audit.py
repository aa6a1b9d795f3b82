"""teams, key lifecycle, approvals and the audit trail

Revision ID: 0010
Revises: 0009

Keys and campaigns belong to a team (existing ones to `default`); a key may expire, and records
when it was last used and revoked. A campaign records which key created it and its approval state
(`not_needed`, `draft`, `approved`, `rejected`) with the approver's word. `audit_log` is appended to
by every state-changing call and never updated: in PostgreSQL a trigger refuses UPDATE and DELETE.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APPEND_ONLY = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("team", sa.String(64), nullable=False, server_default="default"))
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("team", sa.String(64), nullable=False, server_default="default"))
        batch.add_column(sa.Column("created_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("approval", sa.String(12), nullable=False, server_default="not_needed"))
        batch.add_column(sa.Column("approval_reasons", sa.JSON, nullable=True))
        batch.add_column(sa.Column("decided_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("decision_comment", sa.Text, nullable=True))
    op.create_index("ix_campaigns_team", "campaigns", ["team"])
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("role", sa.String(20), nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.String(300), nullable=True),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_target", "audit_log", ["target"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    op.drop_table("audit_log")
    op.drop_index("ix_campaigns_team", "campaigns")
    with op.batch_alter_table("campaigns") as batch:
        for column in ("decision_comment", "decided_at", "decided_by", "approval_reasons", "approval"):
            batch.drop_column(column)
        batch.drop_column("created_by")
        batch.drop_column("team")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("rotated_at", "revoked_at", "last_used_at", "expires_at", "name", "team"):
            batch.drop_column(column)
