"""pipeline runs: heartbeat for stale-run detection; gates_failed and stopped statuses

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD = "status IN ('running', 'succeeded', 'failed')"
_NEW = "status IN ('running', 'succeeded', 'failed', 'gates_failed', 'stopped')"


def upgrade() -> None:
    # batch mode: SQLite cannot alter a CHECK constraint in place, so the table is rebuilt there.
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(op.f("ck_pipeline_runs_status"), type_="check")
        batch_op.create_check_constraint("status", _NEW)


def downgrade() -> None:
    op.execute("UPDATE pipeline_runs SET status = 'failed' WHERE status IN ('gates_failed', 'stopped')")
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_pipeline_runs_status"), type_="check")
        batch_op.create_check_constraint("status", _OLD)
        batch_op.drop_column("heartbeat_at")
