"""Console sessions, held in the database so that every API replica knows who is signed in.

The browser holds a random session id; the table holds its SHA-256, the principal, a CSRF token and the
credential the session acts with, sealed (AES-GCM, bound to this purpose). Signing in and out are ledger
events (who opened the record, and how). A sign-in in progress is not stored at all: its PKCE verifier and
state travel sealed in the browser's own cookie, so nobody can fill a table by starting sign-ins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from convergence.governance._ledger import Subject, append
from convergence.governance._models import ConsoleSession
from convergence.governance._principal import Principal
from convergence.governance._secrets import seal, unseal
from convergence.platform.db import utcnow
from convergence.platform.errors import ConvergenceError, InvalidInput

_SESSION = b"console-session"
_SIGN_IN = b"console-sign-in"
METHODS = ("oidc", "api_key")


@dataclasses.dataclass(frozen=True)
class OpenSession:
    """A session as its page needs it: the credential to authenticate with, the CSRF token, how it signed in."""

    credential: str
    csrf: str
    method: str
    expires_at: dt.datetime


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def open_session(*, session: Session, principal: Principal, credential: str, method: str,
                 expires_at: dt.datetime, replaces: str | None = None) -> tuple[str, str]:
    """Record a sign-in (audited as ``console.signed_in``) → (session id for the cookie, CSRF token). The session
    the browser had (``replaces``) ends, and expired sessions are swept, in the same transaction."""
    if method not in METHODS:
        raise InvalidInput(f"a console session signs in with {' or '.join(METHODS)}, not {method!r}")
    now = utcnow()
    sweep(session=session)
    if replaces:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id_sha256 == _digest(replaces)))
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    session.add(ConsoleSession(id_sha256=_digest(session_id), principal_id=principal.id, method=method,
                               credential=seal(credential, purpose=_SESSION), csrf=csrf, created_at=now,
                               expires_at=expires_at))
    append(session=session, principal=principal, action="console.signed_in", subject=Subject("principal", principal.id),
           payload={"method": method, "expires_at": expires_at.isoformat()})
    return session_id, csrf


def find_session(*, session: Session, session_id: str | None) -> OpenSession | None:
    """The live session of ``session_id``, or None (unknown, expired, or sealed with a key this server lacks)."""
    if not session_id or len(session_id) > 200:
        return None
    row = session.get(ConsoleSession, _digest(session_id))
    if row is None or row.expires_at <= utcnow():
        return None
    try:
        credential = unseal(row.credential, purpose=_SESSION, strict=True)
    except ConvergenceError:
        return None
    return OpenSession(credential, row.csrf, row.method, row.expires_at)


def close_session(*, session: Session, principal: Principal, session_id: str) -> bool:
    """Sign out (audited as ``console.signed_out``); False when there was no such session of ``principal``."""
    row = session.get(ConsoleSession, _digest(session_id))
    if row is None or row.principal_id != principal.id:
        return False
    session.delete(row)
    sweep(session=session)
    append(session=session, principal=principal, action="console.signed_out", subject=Subject("principal", principal.id),
           payload={"method": row.method})
    return True


def forget_session(*, session: Session, session_id: str) -> None:
    """Drop a session whose credential no longer authenticates (revoked, expired): housekeeping, not an event —
    the revocation that caused it is."""
    session.execute(delete(ConsoleSession).where(ConsoleSession.id_sha256 == _digest(session_id)))
    sweep(session=session)


def sweep(*, session: Session) -> int:
    """Delete expired sessions (their sealed credentials with them); run at every sign-in, sign-out and drop."""
    return session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= utcnow())).rowcount or 0


def seal_sign_in(data: dict[str, Any]) -> str:
    """A sign-in in progress (state, PKCE verifier, nonce, where to go), sealed for the browser's cookie."""
    return seal(json.dumps(data, sort_keys=True), purpose=_SIGN_IN)


def open_sign_in(sealed: str | None) -> dict[str, Any] | None:
    """The sign-in a cookie holds, or None when it is missing, edited, or sealed by another key."""
    if not sealed or len(sealed) > 4096:
        return None
    try:
        data = json.loads(unseal(sealed, purpose=_SIGN_IN, strict=True))
    except (ConvergenceError, ValueError):
        return None
    return data if isinstance(data, dict) else None
