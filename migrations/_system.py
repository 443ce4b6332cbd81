"""The system principal migrations act as (``system:migration``), read and created through Core so a
migration works at its own revision; what it appends to the ledger is filed under this name."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from convergence.governance._principal import Principal


def migration_principal(bind: sa.Connection) -> Principal:
    """``system:migration``, created (and its creation audited) the first time a migration needs it."""
    from convergence.governance._ledger import Subject, append
    from convergence.governance._principal import SYSTEM_ISSUER, AuthContext, Principal, check_display_name

    principals = sa.table('principals', sa.column('id', sa.Integer), sa.column('issuer', sa.String),
                          sa.column('subject', sa.String), sa.column('name', sa.String),
                          sa.column('name_key', sa.String), sa.column('kind', sa.String),
                          sa.column('created_at', sa.DateTime(timezone=True)))
    name, key = check_display_name("system:migration")
    found = bind.execute(sa.select(principals.c.id).where(principals.c.issuer == SYSTEM_ISSUER,
                                                          principals.c.subject == "migration")).scalar()
    principal_id = found
    if found is None:
        bind.execute(principals.insert().values(issuer=SYSTEM_ISSUER, subject="migration", name=name, name_key=key,
                                                kind="system", created_at=dt.datetime.now(dt.timezone.utc)))
        principal_id = bind.execute(sa.select(principals.c.id).where(principals.c.name_key == key)).scalar_one()
    principal = Principal(id=principal_id, name=name, kind="system", issuer=SYSTEM_ISSUER, subject="migration",
                          auth=AuthContext("system"))
    if found is None:
        append(session=Session(bind=bind), principal=principal, action="principal.created",
               subject=Subject("principal", str(principal_id)),
               payload={"issuer": SYSTEM_ISSUER, "subject": "migration", "name": name, "kind": "system"})
    return principal
