"""People for tests: principals of a test OIDC issuer, with roles, in the database the test points at.

Every name in ``ROLES`` is seeded into the migrated template databases (``seed``), as rows a database
administrator would insert (no audit events, so chains start empty), so ``person("alice")`` only reads and
can be called anywhere, even inside another session. ``person("quinn", "registrant", "validator")`` with
roles of its own is created on first use: call it before opening a write session (SQLite has one writer).
Tests of the grant workflow itself go through ``identity.request_grant``.
"""

from __future__ import annotations

from convergence.governance import Principal
from convergence.governance._principal import name_key

ISSUER = "https://idp.test"

ROLES: dict[str, tuple[str, ...]] = {
    "bob": ("registrant",), "quant": ("registrant",), "nlp": ("registrant",), "quinn": ("registrant",),
    "nina": ("registrant",), "ci": ("registrant",), "pipelines": ("registrant",), "q": ("registrant",),
    "kfp": ("registrant",), "kubeflow": ("registrant",), "runner": ("registrant",),
    "carol": ("validator",), "val": ("validator",), "victor": ("validator",),
    "alice": ("approver",), "boss": ("approver",), "anna": ("approver",),
    "ops": ("operator",), "monitor": ("operator",), "mon": ("operator",),
    "risk": ("risk",), "risk2": ("risk",), "risk3": ("risk",), "fin": ("finance",), "cfo": ("finance",),
    "auditor": ("auditor",), "ada": ("admin",), "sam": ("admin",), "max": ("admin",),
    # one person holding every role of the model lifecycle: separation of duties, not roles, must stop them
    "solo": ("registrant", "validator", "approver", "operator"),
    "retrainer": ("operator", "registrant"),  # drift checks that start a retraining run
}

_made: dict[tuple[str, str, tuple[str, ...]], Principal] = {}


def person(name: str, *roles: str, kind: str = "human") -> Principal:
    """The principal ``name`` (created with ``roles``, or its default roles) in the current test database."""
    from convergence.governance import identity
    from convergence.governance._models import RoleGrant
    from convergence.platform.db import session_scope, utcnow
    from convergence.platform.settings import get_settings

    wanted = tuple(roles) if roles else ROLES.get(name, ())
    key = (get_settings().resolved_database_url, name, wanted)
    if key in _made:
        return _made[key]
    auth = identity.AuthContext("oidc", credential="test-token", request_id="test")
    with session_scope(write=False) as s:
        row = identity.find_principal(session=s, issuer=ISSUER, subject=name)
        if row is not None and set(wanted) <= identity.active_roles(session=s, principal_id=row.id):
            _made[key] = identity.to_principal(row, auth=auth, session=s)
            return _made[key]
    with session_scope() as s:
        row = identity.resolve_ref(session=s, ref=name) if _exists(s, name) else identity.ensure_principal(
            session=s, issuer=ISSUER, subject=name, name=name, kind=kind, auth=auth)
        held = identity.active_roles(session=s, principal_id=row.id)
        for role in wanted:
            if role not in held:
                s.add(RoleGrant(principal_id=row.id, role=role, status="active", reason="test seed",
                                requested_by_id=row.id, requested_at=utcnow(), decided_by_id=row.id,
                                decided_at=utcnow()))
        s.flush()
        principal = identity.to_principal(row, auth=auth, session=s)
    _made[key] = principal
    return principal


def detached(name: str = "tester", principal_id: int = 1) -> Principal:
    """A principal object for ledger mechanics that never touch the principals table."""
    return Principal(id=principal_id, name=name, kind="human", issuer=ISSUER, subject=name)


def _exists(session: object, name: str) -> bool:
    from sqlalchemy import select

    from convergence.governance._models import PrincipalRow

    return session.execute(select(PrincipalRow.id).where(  # type: ignore[attr-defined]
        PrincipalRow.name_key == name_key(name))).first() is not None


def seed(url: str) -> None:
    """Insert every ``ROLES`` person and their active grants into the database at ``url``."""
    import datetime as dt

    from sqlalchemy import create_engine, insert, select

    from convergence.governance._models import PrincipalRow, RoleGrant

    now = dt.datetime.now(dt.timezone.utc)
    engine = create_engine(url, hide_parameters=True)
    with engine.begin() as conn:
        for name, roles in ROLES.items():
            conn.execute(insert(PrincipalRow).values(issuer=ISSUER, subject=name, name=name,
                                                     name_key=name_key(name), kind="human", created_at=now))
            pid = conn.execute(select(PrincipalRow.id).where(PrincipalRow.subject == name,
                                                              PrincipalRow.issuer == ISSUER)).scalar_one()
            for role in roles:
                conn.execute(insert(RoleGrant).values(principal_id=pid, role=role, status="active", reason="test seed",
                                                      requested_by_id=pid, requested_at=now, decided_by_id=pid,
                                                      decided_at=now))
    engine.dispose()


def api_key(account: str, *roles: str) -> str:
    """A service account with ``roles`` (seeded like the people above) and a fresh API key for it, created by
    an admin of its own (whoever creates a key holds it: accounts keyed by one admin are one person) and
    approved by sam."""
    import datetime as dt

    from convergence.governance import identity
    from convergence.governance._models import RoleGrant
    from convergence.platform.db import session_scope

    admin, second = person(f"{account}-keeper", "admin"), person("sam")
    with session_scope() as s:
        row = identity.create_service_account(session=s, principal=admin, name=account)
        now = dt.datetime.now(dt.timezone.utc)
        for role in roles:
            s.add(RoleGrant(principal_id=row.id, role=role, status="active", reason="test seed",
                            requested_by_id=admin.id, requested_at=now, decided_by_id=admin.id, decided_at=now))
        key_row, key = identity.create_api_key(session=s, principal=admin, account=account)
        identity.approve_api_key(session=s, principal=second, key_id=key_row.key_id)
    return key


def record_seeded() -> int:
    """Record the seeded people, grants and keys in the ledger (as migration 0009 adopts an older database's
    rows), for tests that end in a full `audit verify`, which reconciles the tables with the ledger."""
    from convergence.governance import identity
    from convergence.governance._replay import adopt
    from convergence.platform.db import session_scope

    with session_scope() as s:
        return adopt(session=s, principal=identity.system_principal(session=s, name="test-seed"), reason="test seed")
