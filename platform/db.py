"""Database engine and sessions: SQLite embedded by default, PostgreSQL in production.

SQLite runs in WAL mode with foreign keys on and a busy timeout, and writing sessions open with
``BEGIN IMMEDIATE`` so that concurrent processes queue for the write lock instead of failing when a
read transaction upgrades. PostgreSQL uses a pre-pinged pool. Driver errors that mean "the database
is not there" become ``Unavailable`` with one line of explanation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convergence.platform.errors import ConvergenceError, IntegrityError, InvalidInput, SchemaOutdated, Unavailable
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


_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` as it may be printed: the password in ``user:pass@`` and secret-looking query values
    (``?password=``, ``sslpassword``, …) are ``***``. Read as text, never parsed, so a URL that does not
    parse is masked too; text that is no URL at all is not shown."""
    scheme, sep, rest = str(url).partition("://")
    if not sep or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return "(not a database URL)"
    at = rest.rfind("@")  # a password may hold '@', '/' or '?': the userinfo ends at the last '@'
    if at >= 0 and ":" in rest[:at]:
        rest = rest[:rest.index(":")] + ":***" + rest[at:]
    base, qmark, query = rest.partition("?")
    if qmark:
        query = "&".join(_redact_param(part) for part in query.split("&"))
    return f"{scheme}://{base}{qmark}{query}"


def _redact_param(part: str) -> str:
    from urllib.parse import unquote_plus

    key, eq, _ = part.partition("=")  # libpq's options=-c password=… hides one in a value
    return f"{key}=***" if eq and _SECRET_KEY.search(unquote_plus(part)) else part


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` (as written and decoded), to scrub from a driver's message."""
    from urllib.parse import unquote_plus

    scheme, sep, rest = str(url).partition("://")
    found: list[str] = []
    at = rest.rfind("@")
    if sep and at >= 0 and ":" in rest[:at]:
        found.append(rest[rest.index(":") + 1:at])
    for part in rest.partition("?")[2].split("&"):
        key, eq, value = part.partition("=")
        if eq and value and _SECRET_KEY.search(unquote_plus(part)):
            found.append(value)
    whole = {v for s in found if s for v in (s, unquote_plus(s))}
    # a driver may split 'pa@ss' at its '@' and name a "host" 'ss@…': each piece is masked too
    pieces = {p for v in whole for p in re.split(r"[@:/?&=%\s]", v) if len(p) >= 3}
    return sorted(whole | pieces, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` replaced by ``***`` (a driver may quote what it was given)."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


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
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(url, parsed.database)
        return _server_engine(url)
    except (ValueError, TypeError, sa_exc.ArgumentError):  # the driver's name or an option that does not parse
        raise InvalidInput(f"CVG_DATABASE_URL is not a database URL ({redact_url(url)}): use "
                           "dialect+driver://user:password@host/database or sqlite:///PATH") from None
    except ImportError as exc:
        raise Unavailable(f"the database driver for {redact_url(url)} is not installed ({exc.name})") from None


def _server_engine(url: str) -> Engine:
    from sqlalchemy import create_engine

    settings = get_settings()
    # hide_parameters: a statement's values (a secret among them) never reach an error message or a log
    return create_engine(url, pool_pre_ping=True, pool_size=settings.pool_size, max_overflow=10,
                         hide_parameters=True)


def _sqlite_engine(url: str, database: str | None) -> Engine:
    from sqlalchemy import create_engine, event

    settings = get_settings()
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
                           hide_parameters=True)
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


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist yet (connecting would create it), else None."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported where the engine is made
        return None
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return database if database and database != ":memory:" and not Path(database).exists() else None


def _check_schema(engine: Engine) -> None:
    key = str(engine.url)
    if key in _schema_checked or not get_settings().check_schema:
        return
    if (missing := missing_sqlite_file(key)) is not None:  # connecting would create it, empty
        raise SchemaOutdated(f"there is no database at {missing}: nothing was created",
                             hint="run `cvg db upgrade` to create one there, `cvg demo` to fill one with the whole "
                                  "story, or point CVG_HOME (or CVG_DATABASE_URL) at yours")
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
    """Turn 'database not there' driver errors into one-line ``Unavailable``, and a value the database
    cannot store (too long, NUL, out of range) into ``InvalidInput``: never the statement or its values."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except sa_exc.DataError as exc:
        raise database_error(exc, url) from None
    except sa_exc.DBAPIError as exc:
        # no statement: connecting failed (a refused connection, an unknown option in the URL)
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) or exc.statement is None:
            raise Unavailable(f"database {redact_url(url)} is unavailable: {_detail(exc, url)}",
                              hint="check CVG_DATABASE_URL and that the server is running") from None
        raise


def database_error(exc: Exception, url: str | None = None) -> ConvergenceError:
    """One line for a driver error that reached an edge (the CLI, the API): its kind and the first line of
    the driver's message, without the SQL, the parameters or a quoted value."""
    from sqlalchemy import exc as sa_exc

    detail = _detail(exc, url or "")
    if isinstance(exc, sa_exc.DataError):  # 'invalid input syntax for type integer: "…"' quotes the value
        return InvalidInput(f"the database refused a value: {detail.split(': ' + chr(34))[0]}",
                            hint="shorten or correct the value")
    if isinstance(exc, sa_exc.IntegrityError):
        return IntegrityError(f"the database refused the change: {detail}")
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return Unavailable(f"the database is unavailable: {detail}")
    return Unavailable(f"the database could not complete the request: {detail}")


def _detail(exc: Exception, url: str) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0].strip() if lines and not lines[0].startswith("[SQL") else ""
    return scrub(first or type(orig).__name__, url)


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
