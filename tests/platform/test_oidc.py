"""Unit tests of the token verifier itself: tokens minted here (the one place the issue allows it), served
keys from a tiny discovery + JWKS server on loopback. The real OpenID Provider's tokens are tested in
tests/platform/api/test_oidc_provider.py."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from convergence.platform.errors import Unauthenticated
from convergence.platform.oidc import TokenVerifier

AUD = "https://cvg.test"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def rsa_key(kid: str) -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    return key, {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": _b64(pub.n), "e": _b64(pub.e)}


class Issuer:
    """Discovery and a JWKS on loopback; ``keys`` may be swapped to rotate."""

    def __init__(self) -> None:
        issuer = self
        self.keys: list[dict[str, Any]] = []
        self.jwks_fetches = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                else:
                    issuer.jwks_fetches += 1
                    body = {"keys": issuer.keys}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.server.shutdown()


@pytest.fixture
def signer(issuer: Issuer) -> Any:
    key, jwk = rsa_key("k1")
    issuer.keys = [jwk]

    def sign(claims: dict[str, Any] | None = None, *, headers: dict[str, Any] | None = None, key_=None,
             alg: str = "RS256") -> str:
        now = int(time.time())
        body = {"iss": issuer.url, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300, **(claims or {})}
        return jwt.encode(body, key_ or key, algorithm=alg, headers={"kid": "k1", **(headers or {})})

    sign.key = key  # type: ignore[attr-defined]
    return sign


def verifier(issuer: Issuer, **kw: Any) -> TokenVerifier:
    return TokenVerifier(issuer.url, AUD, leeway_s=kw.pop("leeway_s", 5), refresh_s=kw.pop("refresh_s", 0), **kw)


def test_a_good_token_gives_its_claims(issuer: Issuer, signer) -> None:
    claims = verifier(issuer).verify(signer({"groups": ["approver"]}))
    assert claims["sub"] == "alice" and claims["groups"] == ["approver"]


@pytest.mark.parametrize("claims,fragment", [
    ({"exp": -60}, "expired"),          # times are offsets from now, taken when the test runs
    ({"nbf": 600}, "not valid yet"),
    ({"aud": "https://someone-else.test"}, "for audience 'https://someone-else.test'"),
    ({"iss": "https://evil.test"}, "issued by 'https://evil.test'"),
    ({"sub": None}, "no 'sub' claim"),
])
def test_claims_are_checked(issuer: Issuer, signer, claims: dict[str, Any], fragment: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") else v for k, v in claims.items()}
    token = signer({k: v for k, v in claims.items() if v is not None})
    if claims.get("sub", "x") is None:
        token = jwt.encode({"iss": issuer.url, "aud": AUD, "exp": int(time.time()) + 60}, signer.key,
                           algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated, match=fragment):
        verifier(issuer).verify(token)


def test_the_leeway_absorbs_small_clock_skew(issuer: Issuer, signer) -> None:
    token = signer({"exp": int(time.time()) - 3})
    assert verifier(issuer, leeway_s=30).verify(token)["sub"] == "alice"
    with pytest.raises(Unauthenticated, match="expired"):
        verifier(issuer, leeway_s=0).verify(token)


def test_a_bad_signature_is_refused(issuer: Issuer, signer) -> None:
    other, _ = rsa_key("k1")
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verifier(issuer).verify(signer(key_=other))
    head, body, sig = signer().split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"iss": issuer.url, "aud": AUD, "sub": "root",
                                                  "exp": int(time.time()) + 60}).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verifier(issuer).verify(f"{head}.{forged}.{sig}")


def test_alg_none_is_refused(issuer: Issuer) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"iss": issuer.url, "aud": AUD, "sub": "root",
                                                "exp": int(time.time()) + 60}).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="'none' is refused"):
        verifier(issuer).verify(f"{header}.{body}.")


def test_hmac_with_the_public_key_as_secret_is_refused(issuer: Issuer, signer) -> None:
    public_pem = signer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUD, "sub": "root", "exp": now + 60}
    # PyJWT itself refuses a PEM as an HMAC secret; forge the token by hand, as an attacker would
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(Unauthenticated, match="'HS256' is refused"):
        verifier(issuer).verify(b".".join([header, body, sig]).decode())


def test_a_key_of_another_type_cannot_verify(issuer: Issuer, signer) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": issuer.url, "aud": AUD, "sub": "a", "exp": int(time.time()) + 60}, ec_key,
                       algorithm="ES256", headers={"kid": "k1"})  # names the RSA key's id
    with pytest.raises(Unauthenticated, match="cannot verify an ES256 signature"):
        verifier(issuer).verify(token)


def test_an_unknown_key_refetches_the_jwks_once_then_a_rotated_key_is_accepted(issuer: Issuer, signer) -> None:
    check = verifier(issuer, refresh_s=3600)
    assert check.verify(signer())["sub"] == "alice"
    fetched = issuer.jwks_fetches
    new_key, new_jwk = rsa_key("k2")
    rotated = signer(headers={"kid": "k2"}, key_=new_key)
    with pytest.raises(Unauthenticated, match="key 'k2', which the issuer does not publish"):
        check.verify(rotated)  # the issuer has not published k2 yet
    assert issuer.jwks_fetches == fetched + 1  # one refetch for the unknown kid …
    with pytest.raises(Unauthenticated, match="does not publish"):
        check.verify(rotated)
    assert issuer.jwks_fetches == fetched + 1  # … and no more within refresh_s: no amplification
    issuer.keys = [new_jwk]
    assert verifier(issuer, refresh_s=0).verify(rotated)["sub"] == "alice"


def test_garbage_is_one_clear_line(issuer: Issuer) -> None:
    nested = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=").decode() + ".e30.e30"  # once a RecursionError
    for token in ("not-a-jwt", "a.b.c", "e30.e30.e30", nested):
        with pytest.raises(Unauthenticated):
            verifier(issuer).verify(token)


def test_an_id_token_or_other_typ_is_not_an_access_token(issuer: Issuer, signer) -> None:
    with pytest.raises(Unauthenticated, match="not an access token"):
        verifier(issuer).verify(signer(headers={"typ": "logout+jwt"}))
    assert verifier(issuer).verify(signer(headers={"typ": "at+jwt"}))["sub"] == "alice"


def test_an_issuer_configured_with_a_trailing_slash_matches_its_tokens_exactly(issuer: Issuer, signer) -> None:
    """Some issuers (Auth0) put a slash at the end of iss: the configured string is what iss must equal."""
    slashed = TokenVerifier(issuer.url + "/", AUD, leeway_s=5, refresh_s=0)
    assert slashed.verify(signer({"iss": issuer.url + "/"}))["sub"] == "alice"
    with pytest.raises(Unauthenticated, match="issued by"):
        slashed.verify(signer())  # iss without the slash is another issuer


def test_absurd_expiry_is_refused_not_a_crash(issuer: Issuer, signer, db_url: str, monkeypatch) -> None:
    from convergence.governance.identity import Authenticator
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_OIDC_ISSUER", issuer.url)
    monkeypatch.setenv("CVG_OIDC_AUDIENCE", AUD)
    get_settings.cache_clear()
    principal = Authenticator().from_credential(signer({"exp": 10**20}))  # far future: clamped, not overflowed
    assert principal.subject == "alice"
