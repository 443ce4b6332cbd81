"""A real `cvg serve trading` with CVG_SERVE_AUTH=required and a real OpenID Provider: the model answers only
authenticated callers (API keys and OIDC access tokens), a revoked key stops working within the cache window,
and /info tells anonymous callers only what serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import api_key, person
from tests.serving.conftest import N_FEATURES, Server, register_trading

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def guarded(serving_db: dict[str, Any], oidc: Any) -> Iterator[tuple[Server, str]]:
    register_trading(serving_db["tmp"], serving_db["evidence"])
    key = api_key("trading-desk")  # no role needed to call a model, only an identity
    server = Server("trading", {**serving_db["env"], **oidc.env(), "CVG_SERVE_AUTH": "required",
                                "CVG_AUTH_CACHE_S": "0.5"}, "--float")
    yield server, key
    server.stop()


def _body(n: int = 1) -> dict[str, Any]:
    return {"rows": np.random.default_rng(3).normal(size=(n, N_FEATURES)).tolist()}


@pytest.mark.parametrize("header,fragment", [
    (None, "authentication required"),
    ("Basic dXNlcjpwYXNz", "must be: Bearer"),
    ("Bearer cvgk_000000000000.not-the-secret", "not valid"),
    ("Bearer eyJhbGciOiJub25lIn0.e30.", "algorithm 'none' is refused"),  # an unsigned JWT
])
def test_the_model_refuses_unauthenticated_callers(guarded: tuple[Server, str], header: str | None,
                                                   fragment: str) -> None:
    server, _ = guarded
    r = server.client.post("/predict", json=_body(), headers={"authorization": header} if header else {})
    assert r.status_code == 401 and fragment in r.json()["message"] and r.json()["error"] == "Unauthenticated"
    assert 'cvg_serving_errors_total{status="401"}' in server.client.get("/metrics").text


def test_an_api_key_is_accepted_and_revocation_reaches_the_replica(guarded: tuple[Server, str]) -> None:
    server, key = guarded
    ok = server.client.post("/predict", json=_body(2), headers={"authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    with session_scope() as s:
        gov.identity.revoke_api_key(session=s, principal=person("ada"), key_id=key.split(".")[0])
    deadline = time.monotonic() + 5
    while True:  # the replica's cache keeps a checked key for CVG_AUTH_CACHE_S (0.5 s here)
        r = server.client.post("/predict", json=_body(), headers={"authorization": f"Bearer {key}"})
        if r.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_info_shows_operator_details_only_to_callers_holding_a_role(guarded: tuple[Server, str]) -> None:
    server, key_without_role = guarded
    public = {"model", "version", "version_id", "killed"}
    assert set(server.client.get("/info").json()["trading"]) == public
    roleless = server.client.get("/info", headers={"authorization": f"Bearer {key_without_role}"}).json()["trading"]
    assert set(roleless) == public  # an identity alone (a desk calling the model) sees no operator details
    key = api_key("ops-console", "operator")
    detailed = server.client.get("/info", headers={"authorization": f"Bearer {key}"}).json()["trading"]
    assert {"device", "queue_depth", "stage", "kill", "safe_output"} <= set(detailed)
    assert detailed["safe_output"] == 0.0


def test_an_oidc_access_token_is_accepted_and_a_foreign_one_is_not(guarded: tuple[Server, str], oidc: Any) -> None:
    from tests.platform.api.oidc_provider import OTHER_AUDIENCE

    server, _ = guarded
    token = oidc.client_token("pipeline-bot")  # client credentials from the provider; groups → registrant
    ok = server.client.post("/predict", json=_body(), headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    detailed = server.client.get("/info", headers={"authorization": f"Bearer {token}"}).json()["trading"]
    assert "queue_depth" in detailed  # the token's groups give it a role
    foreign = oidc.client_token("pipeline-bot", resource=OTHER_AUDIENCE)
    r = server.client.post("/predict", json=_body(), headers={"authorization": f"Bearer {foreign}"})
    assert r.status_code == 401 and "audience" in r.json()["message"]
