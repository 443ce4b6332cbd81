"""Database engine and sessions: SQLite embedded by default, PostgreSQL in production.

SQLite runs in WAL mode with foreign keys on and a busy timeout, and writing sessions open with
``BEGIN IMMEDIATE`` so that concurrent processes queue for the write lock instead of failing when a
read transaction upgrades. PostgreSQL uses a pre-pinged pool. Driver errors that mean "the database
is not there" become ``Unavailable`` with one line of explanation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convergence.platform.errors import SchemaOutdated, Unavailable
from convergence.platform.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

__all__ = [
    "MIGRATIONS_DIR",
    "dispose_engines",
    "get_engine",
    "head_revision",
    "is_postgres",
    "redact_url",
    "session_scope",
    "utcnow",
]

# platform/ → repository root (editable) or site-packages/convergence (wheel): migrations sit beside it.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported as it was given, minus nothing secret-looking
        return url.split("@")[-1]


def is_postgres(url_or_engine: Any) -> bool:
    url = str(getattr(url_or_engine, "url", url_or_engine))
    return url.startswith("postgres")


_engines: dict[str, Any] = {}
_schema_checked: set[str] = set()


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (cached); ``url`` defaults to the settings'."""
    settings = get_settings()
    url = url or settings.resolved_database_url
    if url not in _engines:
        _engines[url] = _create_engine(url)
    return _engines[url]


def _create_engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    settings = get_settings()
    try:
        parsed = make_url(url)
    except Exception as exc:
        from convergence.platform.errors import InvalidInput

        raise InvalidInput(f"CVG_DATABASE_URL is not a database URL: {url!r}") from exc

    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000})
        busy_ms = settings.sqlite_busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=settings.pool_size, max_overflow=10)
    return engine


def dispose_engines() -> None:
    """Forget cached engines (after a fork, or when tests switch databases)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _schema_checked.clear()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _check_schema(engine: Engine) -> None:
    key = str(engine.url)
    if key in _schema_checked or not get_settings().check_schema:
        return
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = "an empty database" if current is None else f"revision {current}"
        raise SchemaOutdated(
            f"the database {redact_url(key)} is at {where}, this version of convergence needs {head}",
            hint="run `cvg db upgrade`",
        )
    _schema_checked.add(key)


@contextlib.contextmanager
def translate_db_errors(url: str) -> Iterator[None]:
    """Turn 'database not there' driver errors into one-line ``Unavailable``."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"database {redact_url(url)} is unavailable: {detail}",
                          hint="check CVG_DATABASE_URL and that the server is running") from exc


@contextlib.contextmanager
def session_scope(*, write: bool = True, url: str | None = None, check_schema: bool = True) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any exception.

    ``write=True`` takes SQLite's write lock at BEGIN so that read-then-write never races another
    process; read-only work (verify, queries, exports) passes ``write=False`` and blocks no one.
    """
    from sqlalchemy.orm import Session

    engine = get_engine(url)
    with translate_db_errors(str(engine.url)):
        if check_schema:
            _check_schema(engine)
        bind = engine.execution_options(sqlite_begin="IMMEDIATE") if write else engine
        session = Session(bind=bind, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
