"""Governance fixtures: a populated chain (disabling the protections is tests/conftest.py's `unprotect`)."""

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
