"""Who is signed in to the console: OIDC authorization code with PKCE, or an API key, kept as a session.

The app owns one ``ConsoleSessions``. A sign-in keeps the credential (the access token, or the key) on the
server under a random session id; the browser holds only that id, in an HttpOnly cookie scoped to ``/ui``.
Every request is then authenticated with the credential exactly like an API call, so a revoked key or a role
taken back applies to the console at once, and a session ends when its token expires.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from convergence.platform.errors import InvalidInput, NotFound, Unauthenticated, Unavailable

SESSION_COOKIE = "cvg_console"
LOGIN_COOKIE = "cvg_console_login"
_PENDING_S = 600.0
_MAX_PENDING = 1000
_MAX_SESSIONS = 10_000


@dataclasses.dataclass(frozen=True)
class ConsoleSession:
    id: str
    credential: str
    csrf: str
    expires: float
    method: str  # "oidc" or "api_key"


@dataclasses.dataclass(frozen=True)
class _Pending:
    verifier: str
    nonce: str
    next_path: str
    redirect_uri: str
    created: float


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a console path only (never another site: no scheme, host or ``//``)."""
    if not path or not path.startswith("/ui") or path.startswith("//") or "\\" in path or any(
            ord(c) < 0x21 for c in path):
        return "/ui/"
    return path


def pkce_pair() -> tuple[str, str]:
    """RFC 7636: a random verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class ConsoleSessions:
    """Console sessions and pending OIDC sign-ins, bounded and expiring; thread-safe."""

    def __init__(self, *, settings: Any, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._config: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.settings.oidc_issuer and self.settings.oidc_audience and self.settings.console_client_id)

    # --- sessions -----------------------------------------------------------------------------

    def open(self, credential: str, *, method: str, expires: float | None = None) -> ConsoleSession:
        now = self.clock()
        until = min(expires or now + self.settings.console_session_s, now + self.settings.console_session_s)
        session = ConsoleSession(secrets.token_urlsafe(32), credential, secrets.token_urlsafe(24), until, method)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= self.clock():
                del self._sessions[session_id]
                return None
        return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    # --- OIDC: authorization code with PKCE ----------------------------------------------------

    def begin(self, *, next_path: str, redirect_uri: str) -> tuple[str, str]:
        """A new sign-in: (state, the issuer's authorization URL to send the browser to)."""
        if not self.oidc_enabled:
            raise NotFound("OIDC sign-in is not configured for the console",
                              hint="set CVG_OIDC_ISSUER, CVG_OIDC_AUDIENCE and CVG_CONSOLE_CLIENT_ID, or sign in "
                                   "with an API key")
        config = self._configuration()
        endpoint = config.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise Unavailable("the OIDC issuer publishes no authorization endpoint")
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            for key in [k for k, p in self._pending.items() if now - p.created > _PENDING_S]:
                del self._pending[key]
            self._pending[state] = _Pending(verifier, nonce, safe_next(next_path), redirect_uri, now)
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)
        query = {"response_type": "code", "client_id": self.settings.console_client_id, "redirect_uri": redirect_uri,
                 "scope": "openid profile", "state": state, "nonce": nonce, "code_challenge": challenge,
                 "code_challenge_method": "S256", "resource": self.settings.oidc_audience}
        sep = "&" if "?" in endpoint else "?"
        return state, endpoint + sep + urllib.parse.urlencode(query)

    def finish(self, *, state: str, cookie_state: str | None, code: str) -> tuple[str, str, float | None]:
        """The issuer sent the browser back: check ``state`` against the one this browser started, redeem the
        code with its PKCE verifier → (access token, where to go next, when the token expires)."""
        with self._lock:
            pending = self._pending.pop(state, None) if state else None
        if pending is None or self.clock() - pending.created > _PENDING_S:
            raise Unauthenticated("this sign-in is unknown or expired", hint="sign in again from /ui/login")
        if not cookie_state or not secrets.compare_digest(cookie_state, state):
            raise Unauthenticated("this sign-in was started in another browser", hint="sign in again from /ui/login")
        if not code or len(code) > 2048:
            raise InvalidInput("the issuer sent no authorization code")
        token = self._redeem(code, pending)
        return token, pending.next_path, _expiry(token)

    def _redeem(self, code: str, pending: _Pending) -> str:
        import httpx

        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "client_id": self.settings.console_client_id, "code_verifier": pending.verifier,
                "resource": self.settings.oidc_audience}
        try:
            answer = httpx.post(self._configuration()["token_endpoint"], data=form, timeout=10)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the OIDC issuer's token endpoint: {type(exc).__name__}") from None
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            error = body.get("error", answer.status_code) if isinstance(body, dict) else answer.status_code
            raise Unauthenticated(f"the issuer refused the sign-in: {str(error)[:80]}")
        return body["access_token"]

    def _configuration(self) -> dict[str, Any]:
        """The issuer's discovery document, fetched on the first sign-in and kept."""
        from convergence.platform.oidc import TokenVerifier

        if self._config is None:
            self._config = TokenVerifier(self.settings.oidc_issuer, self.settings.oidc_audience).configuration()
        return self._config


def _expiry(token: str) -> float | None:
    """The token's exp (it is verified when it is used, on every request)."""
    import jwt

    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
