"""OpenID Connect: verify access tokens from an issuer, and sign a person in with the device flow.

``TokenVerifier`` discovers the issuer (``/.well-known/openid-configuration``), fetches and caches its
JWKS, and refetches it when a token names a key id it has not seen (key rotation), at most once per
``refresh_s``. It accepts only asymmetric signatures: ``alg: none`` and HMAC (which would let a public key
act as a shared secret) are refused before any key is looked at. ``iss``, ``aud``, ``exp`` and ``nbf`` are
checked with a small leeway. Every refusal is one ``Unauthenticated`` line that says what was wrong.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from convergence.platform.errors import InvalidInput, Unauthenticated, Unavailable

__all__ = ["ASYMMETRIC_ALGS", "TokenVerifier", "device_login"]

ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach the OIDC issuer at {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise Unavailable(f"the OIDC issuer answered {response.status_code} for {url}")
    try:
        data = response.json()
    except ValueError:
        raise Unavailable(f"the OIDC issuer's {url} is not JSON") from None
    if not isinstance(data, dict):
        raise Unavailable(f"the OIDC issuer's {url} is not a JSON object")
    return data


class TokenVerifier:
    """Checks JWT access tokens from one issuer for one audience; thread-safe, one per process."""

    def __init__(self, issuer: str, audience: str, *, leeway_s: float = 30.0, refresh_s: float = 10.0,
                 timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not issuer or not audience:
            raise InvalidInput("OIDC needs both CVG_OIDC_ISSUER and CVG_OIDC_AUDIENCE")
        # iss must equal the issuer exactly as configured (some issuers end it with "/"); URLs join on the base
        self.issuer, self.base, self.audience = issuer, issuer.rstrip("/"), audience
        self.leeway_s, self.refresh_s, self.timeout_s, self.clock = leeway_s, refresh_s, timeout_s, clock
        self._config: dict[str, Any] | None = None
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._forced_at: float | None = None
        self._built: dict[tuple[str, str], Any] = {}  # (kid, alg) → the key object, built once per JWKS
        self._lock = threading.Lock()

    def configuration(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched once); its ``issuer`` must be the one configured."""
        if self._config is None:
            config = _get_json(f"{self.base}/.well-known/openid-configuration", self.timeout_s)
            if str(config.get("issuer", "")).rstrip("/") != self.base:
                raise Unavailable(f"the discovery document at {self.issuer} names issuer {config.get('issuer')!r}")
            if not isinstance(config.get("jwks_uri"), str):
                raise Unavailable(f"the discovery document at {self.issuer} has no jwks_uri")
            self._config = config
        return self._config

    def _refresh(self) -> None:
        data = _get_json(self.configuration()["jwks_uri"], self.timeout_s)
        keys = data.get("keys")
        if not isinstance(keys, list):
            raise Unavailable("the issuer's JWKS has no keys list")
        self._keys = {k["kid"]: k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)}
        self._built = {}
        self._fetched_at = self.clock()

    def _key(self, kid: str) -> dict[str, Any]:
        with self._lock:
            if self._fetched_at is None:
                self._refresh()
            if kid not in self._keys and (self._forced_at is None or self.clock() - self._forced_at >= self.refresh_s):
                self._forced_at = self.clock()  # an unknown kid: the issuer may have rotated its keys; refetch,
                self._refresh()                 # but at most once per refresh_s, so junk kids cannot hammer it
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"the token is signed with key {kid!r}, which the issuer does not publish")
        return key

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if it is a valid access token for this API; else ``Unauthenticated``."""
        import jwt

        header = _header(token)
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if typ is not None and str(typ).lower() not in ("at+jwt", "application/at+jwt", "jwt"):
            raise Unauthenticated(f"a token of type {typ!r} is not an access token")
        if alg not in ASYMMETRIC_ALGS:
            raise Unauthenticated(f"token algorithm {alg!r} is refused: only signed tokens "
                                  f"({', '.join(ASYMMETRIC_ALGS[:3])}, …) are accepted")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no signing key (kid)")
        jwk = self._key(kid)
        if jwk.get("kty") != _KTY[alg[:2]] or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
            raise Unauthenticated(f"key {kid!r} is a {jwk.get('kty')} {jwk.get('alg', '')} key and cannot verify "
                                  f"an {alg} signature")
        try:
            key = self._built.get((kid, alg))
            if key is None:
                key = self._built[(kid, alg)] = jwt.PyJWK(jwk, algorithm=alg).key
            return jwt.decode(token, key=key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                              leeway=self.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(f"the token expired at {_claim_time(token, 'exp')}",
                                  hint="sign in again (`cvg login`) or get a new token") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(f"the token is not valid yet (nbf {_claim_time(token, 'nbf')})") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the token is for audience {_claim(token, 'aud')!r}, not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"the token was issued by {_claim(token, 'iss')!r}, not {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from None
        except (jwt.PyJWTError, jwt.PyJWKError, ValueError, TypeError, RecursionError) as exc:
            raise Unauthenticated(f"the token is not valid: {type(exc).__name__}") from None


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read with the standard library (PyJWT reads it again, checked, when it verifies)."""
    import base64
    import binascii

    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise Unauthenticated("the bearer token is not a JWT") from None
    if not isinstance(header, dict) or token.count(".") != 2:
        raise Unauthenticated("the bearer token is not a JWT")
    return header


def _claim(token: str, name: str) -> Any:
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False}).get(name)
    except jwt.PyJWTError:
        return None


def _claim_time(token: str, name: str) -> str:
    import datetime as dt

    value = _claim(token, name)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat(timespec="seconds")
    return str(value)


def device_login(*, issuer: str, client_id: str, audience: str | None, prompt: Callable[[dict[str, Any]], None],
                 scope: str = "openid profile", timeout_s: float = 600.0) -> dict[str, Any]:
    """RFC 8628: ask the issuer for a user code, let ``prompt`` show it, poll until the person approves.
    Returns the token response (``access_token`` …)."""
    import httpx

    config = TokenVerifier(issuer, audience or "-").configuration()
    endpoint = config.get("device_authorization_endpoint")
    if not endpoint:
        raise Unavailable(f"{issuer} does not offer the device authorization grant",
                          hint="get a token another way and set CVG_TOKEN")
    form = {"client_id": client_id, "scope": scope, **({"resource": audience} if audience else {})}
    start = httpx.post(endpoint, data=form, timeout=10)
    if start.status_code != 200:
        raise Unauthenticated(f"the issuer refused the device login: {_oauth_error(start)}")
    grant = start.json()
    prompt(grant)
    interval, deadline = float(grant.get("interval", 5)), time.monotonic() + min(timeout_s, grant.get("expires_in", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        answer = httpx.post(config["token_endpoint"], timeout=10, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": grant["device_code"],
            "client_id": client_id})
        if answer.status_code == 200:
            return answer.json()
        error = _oauth_error(answer)
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise Unauthenticated(f"device login failed: {error}")
    raise Unauthenticated("device login timed out before the code was approved")


def _oauth_error(response: Any) -> str:
    try:
        return str(json.loads(response.text).get("error", response.status_code))
    except (ValueError, AttributeError):
        return str(response.status_code)
