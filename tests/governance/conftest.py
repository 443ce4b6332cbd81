"""Governance fixtures: a populated chain (disabling the protections is tests/conftest.py's `unprotect`)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def wide_production(db_url: str, model_file: Path, evidence_file: Path) -> int:
    """A promoted version whose SYNTHETIC profile watches the trading signature's shape: 208 logged float32
    values, the newest 26 (positions 182–207) and the output."""
    import numpy as np

    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from tests.people import person

    columns = [f"f{p}" for p in range(182, 208)] + ["output"]
    data = np.random.default_rng(1).normal(0, 1, (5000, len(columns)))
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name="wide", artifact=model_file,
                                family="trading", role="student")
        gov.save_profile(session=s, model_version_id=mv.id, data=data, columns=columns,
                         positions=[*range(182, 208), -1])
    with session_scope() as s:
        gov.validate(session=s, version_id=mv.id, principal=person("val"), evidence=evidence_file)
        gov.approve(session=s, version_id=mv.id, principal=person("boss"), reason="ok")
        gov.promote(session=s, version_id=mv.id, principal=person("ops"))
    return mv.id
