"""Principals for benchmarks: people of a bench issuer with the roles the measured steps need (seeded the
way a database administrator would; benchmarks measure the work, not the grant workflow)."""

from __future__ import annotations

from typing import Any

ISSUER = "urn:convergence:bench"


def principal(name: str, *roles: str) -> Any:
    """The principal ``name`` in the configured database, created with ``roles`` on first use."""
    from convergence.governance import identity
    from convergence.governance._models import RoleGrant
    from convergence.platform.db import session_scope, utcnow

    auth = identity.AuthContext("oidc", request_id="bench")
    with session_scope() as s:
        row = identity.ensure_principal(session=s, issuer=ISSUER, subject=name, name=name, kind="human", auth=auth)
        held = identity.active_roles(session=s, principal_id=row.id)
        for role in set(roles) - held:
            s.add(RoleGrant(principal_id=row.id, role=role, status="active", reason="bench", requested_by_id=row.id,
                            requested_at=utcnow(), decided_by_id=row.id, decided_at=utcnow()))
        s.flush()
        return identity.to_principal(row, auth=auth, session=s)
