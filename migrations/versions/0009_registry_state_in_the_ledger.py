"""ledger: registry state bound to the chain; approvals and stage history append-only; existing rows adopted

From this revision every change of a row that gates behaviour records the row's state in its audit event, and
`reconcile` compares the tables with the ledger's replay. Rows written before it have no such record: each is
adopted here by one ``ledger.state_adopted`` event, appended by the system principal ``system:migration`` (a
fresh database has none to adopt, and its chain stays empty). Adopted events stay when downgrading: the
ledger is append-only.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 16:00:00
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from convergence.migrations._append_only import protect, unprotect

if TYPE_CHECKING:
    from convergence.governance._principal import Principal

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

HISTORY = ('approvals', 'stage_transitions')
REASON = "recorded when the ledger became the record of registry state (migration 0009)"


def _migration_principal(bind: sa.Connection) -> Principal:
    """The system principal that adopts the rows, created (and audited) as ``system_principal`` would."""
    from convergence.governance._ledger import Subject, append
    from convergence.governance._principal import SYSTEM_ISSUER, AuthContext, Principal, check_display_name

    principals = sa.table('principals', sa.column('id', sa.Integer), sa.column('issuer', sa.String),
                          sa.column('subject', sa.String), sa.column('name', sa.String),
                          sa.column('name_key', sa.String), sa.column('kind', sa.String),
                          sa.column('created_at', sa.DateTime(timezone=True)))
    name, key = check_display_name("system:migration")
    found = bind.execute(sa.select(principals.c.id).where(principals.c.issuer == SYSTEM_ISSUER,
                                                          principals.c.subject == "migration")).scalar()
    if found is None:
        bind.execute(principals.insert().values(issuer=SYSTEM_ISSUER, subject="migration", name=name, name_key=key,
                                                kind="system", created_at=dt.datetime.now(dt.timezone.utc)))
        found = bind.execute(sa.select(principals.c.id).where(principals.c.name_key == key)).scalar_one()
    principal = Principal(id=found, name=name, kind="system", issuer=SYSTEM_ISSUER, subject="migration",
                          auth=AuthContext("system"))
    append(session=Session(bind=bind), principal=principal, action="principal.created",
           subject=Subject("principal", str(found)),
           payload={"issuer": SYSTEM_ISSUER, "subject": "migration", "name": name, "kind": "system"})
    return principal


def _adopt() -> None:
    from convergence.governance._replay import adopt, unrecorded

    # Appending takes the chain head in this migration's transaction (SQLite: it already holds the write lock).
    bind = op.get_bind().execution_options(sqlite_begin="IMMEDIATE")
    session = Session(bind=bind)
    if unrecorded(session=session):
        adopt(session=session, principal=_migration_principal(bind), reason=REASON)
    session.close()


def upgrade() -> None:
    for table in HISTORY:
        protect(table)
    _adopt()


def downgrade() -> None:
    for table in HISTORY:
        unprotect(table)
