"""The API trusts a real OpenID Provider (npm oidc-provider on loopback): its tokens authenticate, their
groups claim gives roles, and every way a token can be wrong is a 401 that says what is wrong. `cvg login`
signs a person in with the provider's device flow."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.platform.api.conftest import ApiServer, bearer
from tests.platform.api.oidc_provider import OTHER_AUDIENCE, OpenIDProvider

pytestmark = [pytest.mark.slow]


def _whoami(server: ApiServer, token: str) -> httpx.Response:
    return httpx.get(server.url + "/whoami", headers=bearer(token), timeout=10)


def test_a_client_credentials_token_is_a_principal_with_the_roles_its_groups_name(
        oidc: OpenIDProvider, api_server: ApiServer) -> None:
    token = oidc.client_token("pipeline-bot")
    me = _whoami(api_server, token)
    assert me.status_code == 200, me.text
    data = me.json()
    assert (data["issuer"], data["subject"], data["name"], data["kind"]) == (oidc.url, "pipeline-bot",
                                                                             "pipeline-bot", "human")
    assert data["roles"] == ["registrant"] and data["auth"]["method"] == "oidc" and data["auth"]["credential"]
    again = _whoami(api_server, oidc.client_token("pipeline-bot")).json()
    assert again["id"] == data["id"]  # one principal per (issuer, subject), however many tokens
    unknown_groups = _whoami(api_server, oidc.client_token("grantless-bot")).json()
    assert unknown_groups["roles"] == []  # a group that is not a role gives nothing
    # the roles come from the token: acting needs them, and the ledger records who and how
    models = httpx.get(api_server.url + "/models", headers=bearer(token), timeout=10)
    assert models.status_code == 200 and models.json() == []
    refused = httpx.get(api_server.url + "/audit/events", headers=bearer(token), timeout=10)
    assert refused.status_code == 403 and refused.json()["rule"] == "role-required:audit.read"


def test_a_token_for_another_audience_is_refused(oidc: OpenIDProvider, api_server: ApiServer) -> None:
    r = _whoami(api_server, oidc.client_token("pipeline-bot", resource=OTHER_AUDIENCE))
    assert r.status_code == 401 and f"for audience '{OTHER_AUDIENCE}'" in r.json()["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_token_from_another_issuer_is_refused(oidc: OpenIDProvider, api_server: ApiServer,
                                                tmp_path: Path) -> None:
    from convergence.serving import free_port

    stranger = OpenIDProvider(free_port(), tmp_path, kid="stranger-key").start()
    try:
        r = _whoami(api_server, stranger.client_token("pipeline-bot"))
    finally:
        stranger.stop()
    assert r.status_code == 401 and r.json()["error"] == "Unauthenticated"
    assert "stranger-key" in r.json()["message"]  # signed with a key our issuer never published


def test_an_expired_token_is_refused(oidc: OpenIDProvider, api_server: ApiServer) -> None:
    token = oidc.client_token("brief-bot")  # a three-second token; this server allows no leeway
    assert _whoami(api_server, token).status_code == 200
    time.sleep(max(0.0, _segments(token)[1]["exp"] - time.time()) + 1.2)  # past its exp, however slow the first call
    r = _whoami(api_server, token)
    assert r.status_code == 401 and "expired" in r.json()["message"]


def _segments(token: str) -> list[dict]:
    return [json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in token.split(".")[:2]]


def _encode(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_tampered_token_or_alg_none_is_refused(oidc: OpenIDProvider, api_server: ApiServer) -> None:
    token = oidc.client_token("pipeline-bot")
    head, body, sig = token.split(".")
    header, claims = _segments(token)
    promoted = _encode({**claims, "groups": ["admin", "approver"]})
    r = _whoami(api_server, f"{head}.{promoted}.{sig}")
    assert r.status_code == 401 and "signature does not verify" in r.json()["message"]
    none = _encode({**header, "alg": "none"})
    r = _whoami(api_server, f"{none}.{promoted}.")
    assert r.status_code == 401 and "'none' is refused" in r.json()["message"]


def test_a_rotated_signing_key_is_picked_up_from_the_jwks(oidc: OpenIDProvider, api_server: ApiServer) -> None:
    before = oidc.client_token("pipeline-bot")
    assert _whoami(api_server, before).status_code == 200
    oidc.restart("key-2")  # the provider now signs with key-2 and no longer publishes key-1
    try:
        after = oidc.client_token("pipeline-bot")
        assert _segments(after)[0]["kid"] == "key-2"
        r = _whoami(api_server, after)
        assert r.status_code == 200, r.text  # unknown kid → JWKS refetched → accepted
    finally:
        oidc.restart("key-1")


def test_cvg_login_signs_a_person_in_with_the_device_flow(oidc: OpenIDProvider, api_server: ApiServer,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, **oidc.env(), "CVG_OIDC_CLIENT_ID": "cvg-cli", "CVG_HOME": str(tmp_path / "home"),
           "CVG_API_URL": api_server.url}
    env.pop("CVG_API_KEY", None)
    cvg = str(Path(sys.executable).with_name("cvg"))
    login = subprocess.Popen([cvg, "login", "--timeout", "60"], env=env, stderr=subprocess.PIPE, text=True)
    assert login.stderr is not None
    line = login.stderr.readline()
    url = re.search(r"open (\S+) and confirm", line)
    assert url, line
    oidc.approve_device(url.group(1), login="olivia")  # what olivia does in her browser
    assert login.wait(timeout=60) == 0, login.stderr.read()
    credentials = tmp_path / "home" / "credentials.json"
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    me = subprocess.run([cvg, "whoami", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert me.returncode == 0, me.stderr
    data = json.loads(me.stdout)
    assert (data["name"], data["issuer"], data["roles"], data["auth"]["method"]) == ("olivia", oidc.url,
                                                                                     ["approver"], "oidc")
    assert subprocess.run([cvg, "logout"], env=env, capture_output=True).returncode == 0 and not credentials.exists()
    gone = subprocess.run([cvg, "whoami"], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 8 and "authentication required" in gone.stderr
