"""Governance fixtures: a populated chain, and the administrator's power to disable protections."""

from __future__ import annotations

import pytest


@pytest.fixture
def chain(db_url: str):  # type: ignore[no-untyped-def]
    """Twelve committed audit events, one transaction each."""
    from convergence.governance import Subject, append
    from convergence.platform.db import session_scope
    from tests.people import detached

    for i in range(1, 13):
        with session_scope() as s:
            append(session=s, principal=detached(f"user{i % 3}"), action="test.event", subject=Subject("thing", str(i)),
                   payload={"i": i, "note": "café ✓", "nested": {"b": [1, 2.5], "a": None}})
    return 12


@pytest.fixture
def unprotect(backend: str, raw_sql):  # type: ignore[no-untyped-def]
    """Disable the append-only triggers, as a database administrator turned attacker could."""

    def run(*tables: str) -> None:
        for table in tables or ("audit_events",):
            if backend == "postgres":
                raw_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            else:
                raw_sql(f"DROP TRIGGER {table}_no_update", f"DROP TRIGGER {table}_no_delete")

    return run


def verify_now():  # type: ignore[no-untyped-def]
    from convergence.governance import verify
    from convergence.platform.db import session_scope

    with session_scope(write=False) as s:
        return verify(session=s)


@pytest.fixture
def adopted(db_url: str) -> str:
    """The seeded people and grants recorded in the ledger, so a full ``verify_ledger`` starts clean."""
    from tests.people import record_seeded

    record_seeded()
    return db_url
