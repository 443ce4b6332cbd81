"""What every group of operations shares: who is acting, and sessions that check read permissions.

Writes are checked by the governance services themselves (roles, separation of duties); reads are
checked here, at the control plane's edge, with the same permission table (``identity.require``), so
internal readers (a serving replica loading its model) need no principal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from convergence.governance import Principal


def times(since: str | None, until: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """--since / --until as UTC instants (ISO 8601, 'now', or an age)."""
    from convergence.platform.timeparse import parse_time

    return (parse_time(since, option="--since") if since else None,
            parse_time(until, option="--until") if until else None)


def plain(data: Any) -> Any:
    """JSON types only (what an HTTP answer carries), so local and remote callers render the same data."""
    return json.loads(json.dumps(data, default=str, allow_nan=False))


class OperationsBase:
    """Operations as one principal: ``who`` says who (resolved once, on first use), ``jobs`` runs pipelines
    (inline for the CLI, in the background on the API server)."""

    def __init__(self, *, who: Callable[[], Principal], jobs: Any) -> None:
        self._who = who
        self._principal: Principal | None = None
        self.jobs = jobs

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            self._principal = self._who()
        return self._principal

    @contextlib.contextmanager
    def reading(self, permission: str) -> Iterator[Session]:
        """A read session, after checking that the principal may ``permission`` (refusals are audited)."""
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        principal = self.principal
        with session_scope(write=False) as session:
            identity.require(session=session, principal=principal, permission=permission)
            yield session

    def check(self, permission: str) -> None:
        """Refuse (audited, 403) unless the principal may ``permission``; for operations that touch no table."""
        with self.reading(permission):
            pass

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        from convergence.platform.db import session_scope

        principal = self.principal  # resolved before the write lock is taken
        del principal
        with session_scope() as session:
            yield session
