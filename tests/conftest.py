"""Fixtures shared by every test: a fresh, migrated governance database per test on SQLite and,
where a server is reachable (always in CI), on PostgreSQL.

Each backend is migrated once per session into a template; every test then gets a cheap copy
(a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL), so tests never share state.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_SERVER_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _pg_server_url() -> str:
    return os.environ.get("CVG_TEST_POSTGRES_URL", PG_SERVER_DEFAULT)


def _pg_reachable(url: str) -> bool:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=2):
            return True
    except OSError:
        return False


def _pg_admin(sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(_pg_server_url())
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database or "postgres", autocommit=True) as conn:
        conn.execute(sql)


def _pg_url(dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(_pg_server_url()).set(database=dbname).render_as_string(hide_password=False)


def _reset_process_state() -> None:
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    dispose_engines()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convergence.platform import migrate
    from tests.people import seed

    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(url=f"sqlite:///{path}")
    seed(f"sqlite:///{path}")
    _reset_process_state()
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    from convergence.platform import migrate

    if not _pg_reachable(_pg_server_url()):
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {_pg_server_url()} and CI requires it")
        pytest.skip("no PostgreSQL server reachable (set CVG_TEST_POSTGRES_URL)")
    name = f"cvg_tmpl_{uuid.uuid4().hex[:10]}"
    _pg_admin(f"CREATE DATABASE {name}")
    migrate.upgrade(url=_pg_url(name))
    from tests.people import seed

    seed(_pg_url(name))
    _reset_process_state()
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _make_sqlite(template: Path, dest: Path) -> str:
    shutil.copyfile(template, dest)
    return f"sqlite:///{dest}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              *, migrated: bool) -> Iterator[str]:
    """Point CVG_DATABASE_URL and CVG_HOME at a database of our own; drop it afterwards."""
    dbname = None
    if backend == "sqlite":
        if migrated:
            url = _make_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "cvg.db")
        else:
            url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        template = request.getfixturevalue("pg_template")  # skips/fails like the others when no server
        dbname = f"cvg_t_{uuid.uuid4().hex[:12]}"
        _pg_admin(f"CREATE DATABASE {dbname} TEMPLATE {template}" if migrated else f"CREATE DATABASE {dbname}")
        url = _pg_url(dbname)
    monkeypatch.setenv("CVG_DATABASE_URL", url)
    monkeypatch.setenv("CVG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CVG_ACTOR", raising=False)
    _reset_process_state()
    yield url
    _reset_process_state()
    if dbname:
        _pg_admin(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database for this test; CVG_DATABASE_URL and CVG_HOME point at it."""
    yield from _database(backend, request, tmp_path, monkeypatch, migrated=True)


@pytest.fixture
def empty_db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty (unmigrated) database on the same backends, for migration tests."""
    yield from _database(backend, request, tmp_path, monkeypatch, migrated=False)


@pytest.fixture
def raw_sql(db_url: str):  # type: ignore[no-untyped-def]
    """Run SQL as a database administrator would, bypassing convergence (for tampering tests)."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url, hide_parameters=True)

    def run(*statements: str) -> None:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    yield run
    engine.dispose()


@pytest.fixture(autouse=True)
def _loopback_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test receivers listen on loopback, which the network policy refuses by default; the policy's own tests
    remove this."""
    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small safe trading artifact standing in for a model (synthetic tensor, unique header)."""
    from tests.artifacts import synthetic_artifact

    return synthetic_artifact(tmp_path / "model.safetensors")


@pytest.fixture
def language_model_file(tmp_path: Path) -> Path:
    from tests.artifacts import synthetic_artifact

    return synthetic_artifact(tmp_path / "lm.safetensors", family="language")


@pytest.fixture
def evidence_file(tmp_path: Path) -> Path:
    path = tmp_path / "evidence.md"
    path.write_text("# validation\nbacktest reviewed\n")
    return path


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real OpenID Provider: npm oidc-provider on loopback (installed under tests/oidc by .ci/bootstrap)."""
    from convergence.serving import free_port
    from tests.platform.api.oidc_provider import OpenIDProvider, node_available

    if not node_available():
        message = "node and tests/oidc/node_modules are needed for the OpenID Provider (run .ci/bootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    provider = OpenIDProvider(free_port(), tmp_path_factory.mktemp("oidc")).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, for Playwright's ``executable_path`` (Playwright cannot download its own browser here)."""
    import shutil

    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/bootstrap installs Debian's package")
        pytest.skip("Debian's chromium is not installed here (.ci/bootstrap installs it)")
    return path


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
