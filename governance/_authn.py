"""Authentication: a credential (API key or OIDC access token) or the local account becomes a Principal.

One ``Authenticator`` per process, owned by whatever serves requests (the API app, a serving replica,
the CLI), never a module global. It keeps short caches so a request costs a dictionary lookup and a
SHA-256, not a database round trip: a checked key or token and the principal's roles are reused for
``CVG_AUTH_CACHE_S`` (2 s), which bounds how long a revocation takes to reach every process.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import threading
import time
from typing import Any

from sqlalchemy import update

from convergence.governance._access import record_refusal
from convergence.governance._grants import KEY_PREFIX, check_api_key
from convergence.governance._identity import (
    ensure_principal,
    find_principal,
    is_sandbox,
    os_principal,
    sandbox_principal,
    to_principal,
)
from convergence.governance._models import ApiKey
from convergence.governance._principal import ACCESS_ROLES, AuthContext, Principal, check_display_name
from convergence.platform.db import session_scope, utcnow
from convergence.platform.errors import InvalidInput, Unauthenticated
from convergence.platform.settings import Settings, get_settings

_LAST_USED_EVERY_S = 60.0  # how often a key's last_used_at is written (not on every request)
_TOKEN_CACHE_SIZE = 4096


@dataclasses.dataclass
class _Entry:
    principal: Principal
    until: float  # monotonic time after which the database (or issuer) is asked again
    secret_sha256: str = ""
    expires_at: dt.datetime | None = None


def roles_from_claims(claims: dict[str, Any], claim: str | None, prefix: str = "") -> frozenset[str]:
    """Our roles named by a claim (``groups``, or a dotted path like ``realm_access.roles``)."""
    if not claim:
        return frozenset()
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    values = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
    names = {v[len(prefix):] for v in values if isinstance(v, str) and v.startswith(prefix)}
    return frozenset(names & set(ACCESS_ROLES))


class Authenticator:
    """Credentials to principals, for the API, serving replicas and the CLI's local mode."""

    def __init__(self, *, settings: Settings | None = None, verifier: Any = None,
                 clock: Any = time.monotonic) -> None:
        self.settings = settings or get_settings()
        self.clock = clock
        self._verifier = verifier
        self._keys: dict[str, _Entry] = {}
        self._tokens: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def verifier(self) -> Any:
        if self._verifier is None:
            s = self.settings
            if not s.oidc_issuer:
                raise Unauthenticated("bearer tokens are not accepted here: no OIDC issuer is configured "
                                      "(CVG_OIDC_ISSUER); use a service account's API key")
            from convergence.platform.oidc import TokenVerifier

            self._verifier = TokenVerifier(s.oidc_issuer, s.oidc_audience or "", leeway_s=s.oidc_leeway_s,
                                           refresh_s=s.oidc_jwks_refresh_s)
        return self._verifier

    def invalidate(self) -> None:
        """Forget cached keys, tokens and roles (after a grant, revocation or key change in this process)."""
        with self._lock:
            self._keys.clear()
            self._tokens.clear()

    def from_header(self, authorization: str | None, *, request_id: str | None = None) -> Principal:
        """``Authorization: Bearer <API key or token>`` → Principal, or ``Unauthenticated``."""
        return self.from_credential(_bearer(authorization), request_id=request_id)

    def cached(self, authorization: str | None, *, request_id: str | None = None) -> Principal | None:
        """The principal when this header's credential is in the cache and needs no I/O (an event loop may
        call this; on None, call ``from_header`` in a thread). A malformed header raises at once."""
        credential, now = _bearer(authorization), self.clock()
        if credential.startswith(KEY_PREFIX):
            key_id, _, secret = credential.partition(".")
            entry = self._keys.get(key_id)
            if (entry is None or entry.until <= now or _touch_due(self._last_used, key_id, now)
                    or entry.secret_sha256 != hashlib.sha256(secret.encode()).hexdigest()):
                return None
        else:
            with self._lock:
                entry = self._tokens.get(hashlib.sha256(credential.encode()).hexdigest())
            if entry is None or entry.until <= now:
                return None
        if entry.expires_at is not None and entry.expires_at <= utcnow():
            return None  # the slow path says why
        return dataclasses.replace(entry.principal, auth=dataclasses.replace(entry.principal.auth,
                                                                              request_id=request_id))

    def from_credential(self, credential: str, *, request_id: str | None = None) -> Principal:
        if len(credential) > 16384 or not credential.isascii():
            raise Unauthenticated("the credential is not an API key or a JWT")
        try:
            principal = self._api_key(credential) if credential.startswith(KEY_PREFIX) else self._token(credential)
        except InvalidInput as exc:  # a name or claim we cannot take: still a refusal of the credential, 401
            raise Unauthenticated(f"the credential cannot be used: {exc.message}") from None
        except (ValueError, TypeError, OverflowError, KeyError, RecursionError) as exc:
            raise Unauthenticated(f"the credential is not valid ({type(exc).__name__})") from None
        return dataclasses.replace(principal, auth=dataclasses.replace(principal.auth, request_id=request_id))

    # --- API keys -----------------------------------------------------------------------------

    def _api_key(self, key: str) -> Principal:
        key_id, _, secret = key.partition(".")
        now = self.clock()
        entry = self._keys.get(key_id)
        if entry is None or entry.until <= now:
            entry = self._load_key(key)
        elif entry.secret_sha256 != hashlib.sha256(secret.encode()).hexdigest():
            raise Unauthenticated("the API key is not valid")
        if entry.expires_at is not None and entry.expires_at <= utcnow():
            raise Unauthenticated(f"API key {key_id} expired at {entry.expires_at.isoformat(timespec='seconds')}")
        self._touch(key_id, now)
        return entry.principal

    def _load_key(self, key: str) -> _Entry:
        with session_scope(write=False) as session:
            row, account = check_api_key(session=session, key=key)
            auth = AuthContext("api_key", credential=row.key_id)
            principal = to_principal(account, auth=auth, session=session)
            entry = _Entry(principal, self.clock() + self.settings.auth_cache_s, row.secret_sha256, row.expires_at)
        with self._lock:
            self._keys[row.key_id] = entry
        return entry

    def _touch(self, key_id: str, now: float) -> None:
        """Record the key's last use, at most once a minute per key and process."""
        if not _touch_due(self._last_used, key_id, now):
            return
        self._last_used[key_id] = now
        with session_scope() as session:
            session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used_at=utcnow()))

    # --- OIDC tokens --------------------------------------------------------------------------

    def _token(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            entry = self._tokens.get(digest)
        if entry is not None and entry.until > now and (entry.expires_at is None or entry.expires_at > utcnow()):
            return entry.principal
        claims = self.verifier.verify(token)
        if isinstance(claims.get("exp"), bool) or not isinstance(claims.get("exp"), (int, float)):
            raise Unauthenticated("the token's exp is not a number of seconds")
        principal = self._principal_for(claims)
        exp = dt.datetime.fromtimestamp(min(float(claims["exp"]), 32503680000.0), dt.timezone.utc) + dt.timedelta(
            seconds=self.settings.oidc_leeway_s)
        with self._lock:
            self._tokens[digest] = _Entry(principal, now + self.settings.auth_cache_s, expires_at=exp)
            while len(self._tokens) > _TOKEN_CACHE_SIZE:
                self._tokens.popitem(last=False)
        return principal

    def _principal_for(self, claims: dict[str, Any]) -> Principal:
        """The principal of a verified token: (iss, sub), created on first sight; roles from grants ∪ claim."""
        s = self.settings
        issuer, subject = str(claims["iss"]), str(claims["sub"])
        name = _display_name(claims.get(s.oidc_name_claim) or claims.get("email") or subject, subject)
        auth = AuthContext("oidc", credential=str(claims.get("jti") or "")[:100] or None)
        claimed = roles_from_claims(claims, s.oidc_roles_claim, s.oidc_role_prefix)
        return self._lookup(issuer, subject, str(name), auth, claimed)

    def _lookup(self, issuer: str, subject: str, name: str, auth: AuthContext, claimed: frozenset[str]) -> Principal:
        with session_scope(write=False) as session:
            row = find_principal(session=session, issuer=issuer, subject=subject)
            if row is not None:
                return self._usable(to_principal(row, auth=auth, session=session, roles=claimed), row)
        with session_scope() as session:
            row = ensure_principal(session=session, issuer=issuer, subject=subject, name=name, kind="human", auth=auth)
            return self._usable(to_principal(row, auth=auth, session=session, roles=claimed), row)

    @staticmethod
    def _usable(principal: Principal, row: Any) -> Principal:
        if row.disabled_at is not None:
            raise Unauthenticated(f"principal {row.name} is disabled")
        return principal

    # --- the CLI without the API --------------------------------------------------------------

    def local(self, *, as_name: str | None = None, request_id: str | None = None) -> Principal:
        """Who runs this command on the database directly: CVG_API_KEY, else a token (CVG_TOKEN or
        `cvg login`), else ``--as NAME`` on a sandbox database, else the operating-system account."""
        s = self.settings
        credential = s.api_key or s.token or (stored_token(s) if s.oidc_issuer else None)
        if credential and as_name:
            raise InvalidInput("--as cannot be combined with an API key or a token: the credential says who you are")
        if credential:
            return self.from_credential(credential, request_id=request_id)
        with session_scope(write=False) as session:
            sandbox = is_sandbox(session=session)
        if as_name is not None and not sandbox:
            message = (f"--as {as_name} is refused: this database is not a sandbox, so who you are comes from your "
                       "OS account, CVG_API_KEY or `cvg login`, never from a name you type")
            with session_scope() as session:  # the attempt is evidence too, under the account that made it
                me = os_principal(session=session, request_id=request_id)
            with session_scope() as session:
                record_refusal(session=session, principal=me, permission="identity.as", rule="sandbox-only",
                               message=message[:300])
            raise Unauthenticated(message)
        with session_scope() as session:
            if as_name is not None:
                return sandbox_principal(session=session, name=as_name, request_id=request_id)
            return os_principal(session=session, request_id=request_id)


def _bearer(authorization: str | None) -> str:
    """The credential of ``Authorization: Bearer <credential>``, or ``Unauthenticated``."""
    if not authorization:
        raise Unauthenticated("authentication required: send Authorization: Bearer <API key or OIDC token>")
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthenticated("the Authorization header must be: Bearer <API key or OIDC token>")
    return credential.strip()


def _touch_due(last_used: dict[str, float], key_id: str, now: float) -> bool:
    return now - last_used.get(key_id, -_LAST_USED_EVERY_S) >= _LAST_USED_EVERY_S


def _display_name(claimed: Any, subject: str) -> str:
    """The claimed name when it is a usable display name, else one made from the subject: a person whose
    name convergence cannot show safely still signs in."""
    for candidate in (claimed, subject):
        try:
            return check_display_name(str(candidate))[0]
        except InvalidInput:
            continue
    return f"oidc-{hashlib.sha256(subject.encode()).hexdigest()[:12]}"


def stored_token(settings: Settings) -> str | None:
    """The access token `cvg login` saved, while it is not expired."""
    import json

    path = settings.home / "credentials.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("issuer") != settings.oidc_issuer:
        return None
    if float(data.get("expires_at", 0)) <= time.time():
        return None
    token = data.get("access_token")
    return token if isinstance(token, str) else None
