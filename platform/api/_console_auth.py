"""Who is signed in to the console: OIDC authorization code with PKCE, or an API key, kept as a session.

Sessions live in the database (``identity.open_session``): the browser holds only a random id in an HttpOnly
cookie scoped to ``/ui``, every replica finds it, and every request re-authenticates the sealed credential
exactly like an API call, so a revoked key or a withdrawn role applies at once and a session ends with its
token. A sign-in in progress lives only in a sealed cookie of the browser that started it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import posixpath
import secrets
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from convergence.platform.errors import InvalidInput, NotFound, Unauthenticated, Unavailable

SESSION_COOKIE = "cvg_console"
LOGIN_COOKIE = "cvg_console_login"
PENDING_S = 600


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a console path only. Decoded and normalised first, so ``/ui/../x``,
    ``/ui/%2e%2e/x``, ``//host`` and ``/uiother`` all become the inventory."""
    if not path or not path.isascii() or any(ord(c) < 0x21 for c in path) or "\\" in path:
        return "/ui/"
    route, _, query = path.partition("?")
    decoded = urllib.parse.unquote(route)
    if decoded.startswith("//") or "\\" in decoded or any(ord(c) < 0x21 for c in decoded):
        return "/ui/"
    normal = posixpath.normpath(decoded)
    if (normal != "/ui" and not normal.startswith("/ui/")) or ".." in decoded.split("/"):
        return "/ui/"
    return route + (f"?{query}" if query else "")


def same(a: str, b: str) -> bool:
    """Constant-time equality of two tokens of any characters (``secrets.compare_digest`` refuses non-ASCII str)."""
    return secrets.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def pkce_pair() -> tuple[str, str]:
    """RFC 7636: a random verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class ConsoleSessions:
    """Signing in and out of the console; the state is in the database and in sealed cookies, none here but
    the issuer's discovery document."""

    def __init__(self, *, settings: Any, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self._config: dict[str, Any] | None = None

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.settings.oidc_issuer and self.settings.oidc_audience and self.settings.console_client_id)

    # --- sessions (database) -------------------------------------------------------------------

    def open(self, principal: Any, credential: str, *, method: str, expires: float | None,
             replaces: str | None = None) -> tuple[str, str, int]:
        """A new session → (id for the cookie, CSRF token, seconds it lasts); the session ``replaces`` ends."""
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        now = self.clock()
        until = min(expires or now + self.settings.console_session_s, now + self.settings.console_session_s)
        with session_scope() as session:
            session_id, csrf = identity.open_session(
                session=session, principal=principal, credential=credential, method=method,
                expires_at=dt.datetime.fromtimestamp(until, dt.timezone.utc), replaces=replaces)
        return session_id, csrf, max(int(until - now), 1)

    def get(self, session_id: str | None) -> Any:
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        if not session_id:
            return None
        with session_scope(write=False) as session:
            return identity.find_session(session=session, session_id=session_id)

    def close(self, session_id: str, principal: Any) -> None:
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        with session_scope() as session:
            identity.close_session(session=session, principal=principal, session_id=session_id)

    def forget(self, session_id: str) -> None:
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        with session_scope() as session:
            identity.forget_session(session=session, session_id=session_id)

    # --- OIDC: authorization code with PKCE ----------------------------------------------------

    def begin(self, *, next_path: str, redirect_uri: str) -> tuple[str, str]:
        """A new sign-in: (the sealed cookie that remembers it in this browser, the issuer's authorization URL)."""
        from convergence.governance import identity

        if not self.oidc_enabled:
            raise NotFound("OIDC sign-in is not configured for the console",
                           hint="set CVG_OIDC_ISSUER, CVG_OIDC_AUDIENCE and CVG_CONSOLE_CLIENT_ID, or sign in "
                                "with an API key")
        endpoint = self._configuration().get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise Unavailable("the OIDC issuer publishes no authorization endpoint")
        verifier, challenge = pkce_pair()
        # PKCE binds the code to this verifier; the identity is the access token's, checked like any API call (the
        # ID token is not used, so no nonce is asked for). A long ``next`` would not fit in a cookie.
        state = secrets.token_urlsafe(24)
        target = safe_next(next_path) if len(next_path) <= 1000 else "/ui/"
        cookie = identity.seal_sign_in({"state": state, "verifier": verifier, "next": target,
                                        "redirect_uri": redirect_uri, "created": self.clock()})
        query = {"response_type": "code", "client_id": self.settings.console_client_id, "redirect_uri": redirect_uri,
                 "scope": "openid profile", "state": state, "code_challenge": challenge,
                 "code_challenge_method": "S256", "resource": self.settings.oidc_audience}
        return cookie, endpoint + ("&" if "?" in endpoint else "?") + urllib.parse.urlencode(query)

    def finish(self, *, state: str, cookie: str | None, code: str) -> tuple[str, str, float | None]:
        """The issuer sent the browser back: the sign-in this browser started (its sealed cookie) must name the
        same ``state``; redeem the code with its PKCE verifier → (access token, where next, token expiry)."""
        from convergence.governance import identity

        pending = identity.open_sign_in(cookie)
        if pending is None or not isinstance(pending.get("state"), str) or not same(pending["state"], state):
            raise Unauthenticated("this sign-in was not started in this browser, or its cookie was changed",
                                  hint="sign in again from /ui/login")
        if not isinstance(pending.get("created"), (int, float)) or self.clock() - pending["created"] > PENDING_S:
            raise Unauthenticated("this sign-in took longer than ten minutes", hint="sign in again from /ui/login")
        if not code or len(code) > 2048:
            raise InvalidInput("the issuer sent no authorization code")
        token = self._redeem(code, pending)
        return token, safe_next(str(pending.get("next"))), _expiry(token)

    def _redeem(self, code: str, pending: dict[str, Any]) -> str:
        import httpx

        endpoint = self._configuration().get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise Unavailable("the OIDC issuer publishes no token endpoint")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": str(pending.get("redirect_uri")),
                "client_id": self.settings.console_client_id, "code_verifier": str(pending.get("verifier")),
                "resource": self.settings.oidc_audience}
        try:
            answer = httpx.post(endpoint, data=form, timeout=10)
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
