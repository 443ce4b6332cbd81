"""model_versions: the role ``compiled``, for an onnxruntime graph registered as a child of the eager network
it was compiled from (its INT8 graph keeps the role ``quantized``)

Downgrading refuses while a compiled version exists: its row would break the older constraint.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

OLD = "role IN ('teacher', 'student', 'quantized')"
NEW = "role IN ('teacher', 'student', 'quantized', 'compiled')"


def _role_check(condition: str) -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_model_versions_role'), type_='check')
        batch_op.create_check_constraint(op.f('ck_model_versions_role'), condition)


def upgrade() -> None:
    _role_check(NEW)


def downgrade() -> None:
    compiled = op.get_bind().execute(sa.text("SELECT count(*) FROM model_versions WHERE role = 'compiled'")).scalar()
    if compiled:
        from convergence.platform.errors import PolicyViolation

        raise PolicyViolation(f"{compiled} compiled model version(s) exist; revision 0010 has no such role",
                              hint="keep this revision, or retire and remove them first")
    _role_check(OLD)
