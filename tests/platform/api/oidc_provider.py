"""Start and drive the real OpenID Provider (tests/oidc/provider.mjs, npm oidc-provider) on loopback.

``OpenIDProvider`` gets tokens through the standard grants only: client credentials for machines, and the
device authorization grant for people, whose browser steps (enter the code, confirm, sign in with the
provider's development login, consent) ``approve_device`` performs with plain HTTP form posts.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

OIDC_DIR = Path(__file__).resolve().parents[2] / "oidc"
AUDIENCE = "urn:convergence:test-api"
OTHER_AUDIENCE = "urn:someone-else:api"

CLIENTS = [
    {"client_id": "cvg-cli", "token_endpoint_auth_method": "none", "redirect_uris": [], "response_types": [],
     "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"]},
    # the console (/ui): a public native client, authorization code with PKCE, any loopback port (RFC 8252)
    {"client_id": "cvg-console", "token_endpoint_auth_method": "none", "application_type": "native",
     "redirect_uris": ["http://127.0.0.1/ui/callback"], "response_types": ["code"],
     "grant_types": ["authorization_code"]},
    {"client_id": "pipeline-bot", "client_secret": "pipeline-bot-secret-0123456789abcdef", "redirect_uris": [],
     "response_types": [], "grant_types": ["client_credentials"], "groups": ["registrant"]},
    {"client_id": "grantless-bot", "client_secret": "grantless-bot-secret-0123456789abcd", "redirect_uris": [],
     "response_types": [], "grant_types": ["client_credentials"], "groups": ["not-a-role"]},
    {"client_id": "brief-bot", "client_secret": "brief-bot-secret-0123456789abcdefgh", "redirect_uris": [],
     "response_types": [], "grant_types": ["client_credentials"], "groups": ["registrant"], "ttl": 3},
]
ACCOUNTS = {"olivia": {"name": "olivia", "groups": ["approver"]}, "vera": {"name": "vera", "groups": ["validator"]},
            "audrey": {"name": "audrey", "groups": ["auditor"]}}
SECRETS = {c["client_id"]: c.get("client_secret") for c in CLIENTS}


def node_available() -> bool:
    return shutil.which("node") is not None and (OIDC_DIR / "node_modules" / "oidc-provider").is_dir()


def rsa_jwk(kid: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub, priv = key.public_key().public_numbers(), key.private_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(pub.n), "e": b64(pub.e),
            "d": b64(priv.d), "p": b64(priv.p), "q": b64(priv.q), "dp": b64(priv.dmp1), "dq": b64(priv.dmq1),
            "qi": b64(priv.iqmp)}


class OpenIDProvider:
    """One provider process on ``port`` with its own keys; ``restart(kid)`` rotates its signing key."""

    def __init__(self, port: int, workdir: Path, kid: str = "key-1") -> None:
        self.url, self.workdir, self.kid = f"http://127.0.0.1:{port}", workdir, kid
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> OpenIDProvider:
        config = self.workdir / f"provider-{self.kid}.json"
        config.write_text(json.dumps({"issuer": self.url, "audience": AUDIENCE, "other_audiences": [OTHER_AUDIENCE],
                                      "jwks": {"keys": [rsa_jwk(self.kid)]}, "clients": CLIENTS,
                                      "accounts": ACCOUNTS}))
        log = open(self.workdir / f"provider-{self.kid}.log", "w")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(["node", str(OIDC_DIR / "provider.mjs"), str(config)], stdout=log,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"oidc-provider did not start: {(self.workdir / f'provider-{self.kid}.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self, kid: str) -> None:
        """Rotate: the same issuer, a new signing key (the old one is no longer published)."""
        self.stop()
        self.kid = kid
        self.start()

    def env(self) -> dict[str, str]:
        """The settings that make convergence accept this provider's tokens (no leeway: expiry tests are exact)."""
        return {"CVG_OIDC_ISSUER": self.url, "CVG_OIDC_AUDIENCE": AUDIENCE, "CVG_OIDC_ROLES_CLAIM": "groups",
                "CVG_OIDC_LEEWAY_S": "0", "CVG_OIDC_JWKS_REFRESH_S": "0"}

    def client_token(self, client_id: str, *, resource: str | None = None) -> str:
        data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": SECRETS[client_id],
                "scope": "cvg", **({"resource": resource} if resource else {})}
        response = httpx.post(self.url + "/token", data=data, timeout=10)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def approve_device(self, verification_uri_complete: str, login: str) -> None:
        """What a person does in the browser for the device flow: confirm the code, sign in, consent."""
        with httpx.Client(follow_redirects=True, timeout=10) as browser:
            page = browser.get(verification_uri_complete)
            for _ in range(8):
                forms = _forms(page.text)
                if not forms:
                    break
                action, fields = forms[0]
                if "login" in fields:
                    fields.update(login=login, password="any")
                page = browser.post(str(page.url.join(action)), data=fields)
        if "Sign-in Success" not in page.text:
            raise RuntimeError(f"device approval did not finish: {page.text[:300]}")


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append((a.get("action") or "", {}))
        elif tag == "input" and self.forms and a.get("name") and a.get("type") != "submit":
            self.forms[-1][1][str(a["name"])] = a.get("value") or ""


def _forms(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms
