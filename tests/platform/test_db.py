"""Engine and sessions: SQLite pragmas, unreachable databases, schema not at head."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.platform.db import get_engine, session_scope
from convergence.platform.errors import SchemaOutdated, Unavailable
from convergence.platform.settings import get_settings


def test_engine_is_configured_for_its_database(db_url: str, backend: str) -> None:
    """SQLite: WAL, foreign keys, busy timeout. PostgreSQL: a pre-pinged pool of the configured size."""
    engine = get_engine()
    if backend == "postgres":
        assert engine.pool.size() == get_settings().pool_size and engine.pool._pre_ping  # type: ignore[attr-defined]
        return
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == get_settings().sqlite_busy_timeout_ms


def test_foreign_keys_are_enforced(db_url: str) -> None:
    from sqlalchemy.exc import IntegrityError as SAIntegrityError

    from convergence.governance import Approval
    from convergence.platform.db import utcnow

    with pytest.raises(SAIntegrityError), session_scope() as s:
        s.add(Approval(model_version_id=987654, decision="approved", actor="a", reason="r", created_at=utcnow()))
        s.flush()


def test_unreachable_database_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CVG_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    with pytest.raises(Unavailable, match="unavailable: .*127.0.0.1"), session_scope():
        pass
    get_settings.cache_clear()


def test_database_not_at_head_is_refused(empty_db_url: str) -> None:
    with pytest.raises(SchemaOutdated, match="cvg db upgrade"), session_scope():
        pass
