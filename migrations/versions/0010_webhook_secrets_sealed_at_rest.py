"""webhooks: secrets stored before sealing are sealed at rest (AES-256-GCM) with the sealing key

Rows written before sealing hold their secret as given. Each is sealed here with the key ``cvg`` seals with
(``CVG_SECRET_KEY``; without it, the key file under CVG_HOME, made now if there is none, so run this where the
API and the deliverer find the same key: the chart gives the migration Job the same Secret). Each change is
recorded by ``system:migration`` with the row's state (``webhook.secret_resealed``), so the ledger still
rebuilds the table; a fresh database has nothing to seal and its chain stays empty. The column becomes text: a
sealed secret is longer than the 200 characters a legacy one could have. Downgrading opens them again,
recorded the same way (a secret no key here opens is left sealed).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 05:00:00
"""
from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _rewrite(reason: str, rewrite: Callable[[str], str | None], todo: sa.ColumnElement[bool]) -> None:
    from convergence.governance._webhooks import rewrite_secrets
    from convergence.migrations._system import migration_principal

    # Appending takes the chain head in this migration's transaction (SQLite: it already holds the write lock).
    bind = op.get_bind().execution_options(sqlite_begin="IMMEDIATE")
    secret = sa.column('secret', sa.String)
    if not bind.execute(sa.select(sa.func.count()).select_from(sa.table('webhook_subscriptions', secret))
                        .where(todo)).scalar():
        return
    session = Session(bind=bind)
    rewrite_secrets(session=session, principal=migration_principal(bind), reason=reason, rewrite=rewrite)
    session.close()


def _opened(stored: str) -> str | None:
    from convergence.governance._secrets import is_sealed, unseal
    from convergence.platform.errors import IntegrityError

    try:
        return unseal(stored) if is_sealed(stored) else None
    except IntegrityError:
        return None  # no key here opens it: leave it sealed rather than lose it


def _sealed(stored: str) -> str | None:
    from convergence.governance._secrets import is_sealed, seal

    return None if is_sealed(stored) else seal(stored)


def upgrade() -> None:
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.alter_column('secret', existing_type=sa.String(length=200), type_=sa.Text(), existing_nullable=False)
    _rewrite("sealed at rest (migration 0010)", _sealed, ~sa.column('secret').startswith('enc:v1:'))


def downgrade() -> None:
    _rewrite("opened again by the downgrade of migration 0010", _opened, sa.column('secret').startswith('enc:v1:'))
    with op.batch_alter_table('webhook_subscriptions', schema=None) as batch_op:
        batch_op.alter_column('secret', existing_type=sa.Text(), type_=sa.String(length=200), existing_nullable=False)
