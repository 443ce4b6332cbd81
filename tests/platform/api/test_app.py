"""The control-plane API in-process: the OpenAPI 3.1 document, authentication on every route, one JSON error
shape with the documented status for every kind of bad request, and the four-eyes workflow over HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import api_key, person
from tests.platform.api.conftest import bearer

ERROR_KEYS = {"error", "message"}


def _error(r: Any, status: int, name: str, fragment: str = "") -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert ERROR_KEYS <= set(body) and body["error"] == name and fragment in body["message"], body
    return body


def test_the_openapi_document_is_3_1_and_every_route_needs_a_bearer(client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and "HTTPBearer" in doc["components"]["securitySchemes"]
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 45
    for path, method, op in operations:
        if path in ("/livez", "/readyz"):
            continue
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
        assert {"401", "403", "404", "422"} <= set(op["responses"]), (method, path)
    assert {"/models/{version_id}/approve", "/audit/export", "/grants/{grant_id}/approve", "/kill-switches/{name}/kill",
            "/pipelines/{family}/trigger", "/service-accounts/{name}/keys", "/budgets"} <= set(doc["paths"])


@pytest.mark.parametrize("headers,fragment", [
    ({}, "authentication required"),
    ({"authorization": "Token abc"}, "must be: Bearer"),
    ({"authorization": "Bearer "}, "must be: Bearer"),
    ({"authorization": "Bearer cvgk_0123456789ab.wrong"}, "not valid"),
    ({"authorization": "Bearer cvgk_nodot"}, "malformed"),
    ({"authorization": "Bearer h\u00e9llo".encode("latin-1")}, "not an API key or a JWT"),
])
def test_every_route_refuses_a_missing_or_bad_credential(client, headers: dict[str, str], fragment: str) -> None:
    for method, path in (("GET", "/models"), ("POST", "/models/1/approve"), ("GET", "/audit/export"),
                         ("POST", "/artifacts"), ("GET", "/whoami")):
        r = client.request(method, path, headers=headers, json={"reason": "x"} if method == "POST" else None)
        body = _error(r, 401, "Unauthenticated", fragment)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "hint" not in body or body["hint"]  # no empty hints
    assert client.get("/livez").json() == {"status": "ok"} and client.get("/readyz").status_code == 200


def test_revoked_and_expired_keys_get_401_saying_so(client) -> None:
    key = api_key("short-lived-bot")
    assert client.get("/whoami", headers=bearer(key)).json()["name"] == "short-lived-bot"
    with session_scope() as s:
        gov.identity.revoke_api_key(session=s, principal=person("ada"), key_id=key.split(".")[0])
    client.app.state.auth.invalidate()  # another process revoked it: this one notices when its cache lapses
    _error(client.get("/whoami", headers=bearer(key)), 401, "Unauthenticated", "was revoked")


def test_errors_are_one_json_object_with_the_documented_status(client) -> None:
    key = api_key("caller", "registrant", "operator")
    auth = bearer(key)
    _error(client.get("/nowhere", headers=auth), 404, "NotFound", "no route GET /nowhere")
    _error(client.get("/models/99", headers=auth), 404, "NotFound", "no model version with id 99")
    _error(client.get("/models/99999999999999999999", headers=auth), 422, "InvalidInput", "version_id")
    _error(client.get("/models?limit=0", headers=auth), 422, "InvalidInput", "limit")
    _error(client.get("/models?stage=live", headers=auth), 422, "InvalidInput", "stage")
    _error(client.post("/models/1/approve", headers={**auth, "content-type": "application/json"}, content=b"{oops"),
           400, "MalformedRequest", "not valid JSON")
    _error(client.post("/models/1/promote", headers=auth, json={"reason": "x", "sneaky": 1}), 422, "InvalidInput",
           "sneaky")
    _error(client.post("/models/1/promote", headers=auth, json={"reason": "nul\u0000byte"}), 422, "InvalidInput",
           "U+0000")
    _error(client.post("/models/1/promote", headers=auth, content=b"x" * 70_000,
                       ), 413, "PayloadTooLarge", "over the limit")
    _error(client.get("/audit/events?since=yesterday-ish", headers=bearer(api_key("reader", "auditor"))), 422,
           "InvalidInput", "is not a time")
    forbidden = _error(client.get("/audit/events", headers=auth), 403, "Forbidden", "needs the admin or auditor role")
    assert forbidden["rule"] == "role-required:audit.read"
    _error(client.post("/pipelines/trading/runs", headers=bearer(api_key("runner-bot", "registrant")), json={}), 403,
           "PolicyViolation", "does not run pipelines")


def test_the_request_id_is_the_servers_and_recorded_with_the_principal(client, model_file: Path) -> None:
    key = api_key("quant-bot", "registrant")
    headers = {**bearer(key), "x-request-id": "req-abc-123"}  # a caller's id is not what the ledger trusts
    uploaded = client.post("/artifacts", headers={**headers, "content-type": "application/octet-stream"},
                           content=model_file.read_bytes())
    assert uploaded.status_code == 201 and len(uploaded.headers["x-request-id"]) == 32
    assert uploaded.json()["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    made = client.post("/models", headers=headers, json={"name": "alpha", "artifact_sha256": uploaded.json()["sha256"],
                                                          "family": "trading", "role": "student"})
    assert made.status_code == 201, made.text
    request_id = made.headers["x-request-id"]
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="model.registered")
    who = event.payload_obj["principal"]
    assert (event.actor, who["auth"], who["credential"], who["request_id"]) == ("quant-bot", "api_key",
                                                                               key.split(".")[0], request_id)


def test_every_answer_carries_exactly_one_request_id(client, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.api import Operations

    key = api_key("id-bot", "auditor")

    def broken(self):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug of ours")

    answers = {"ok": client.get("/whoami", headers=bearer(key)), "401": client.get("/whoami"),
               "404": client.get("/no/such/route", headers=bearer(key)),
               "413": client.post("/grants", headers=bearer(key), content=b"x" * 70_000)}
    monkeypatch.setattr(Operations, "list_principals", broken)
    answers["500"] = client.get("/principals", headers=bearer(key))
    for what, r in answers.items():
        ids = r.headers.get_list("x-request-id")
        assert len(ids) == 1 and len(ids[0]) == 32, (what, r.status_code, ids)
    assert answers["500"].status_code == 500 and answers["500"].headers["x-request-id"] in answers["500"].text


def test_four_eyes_over_http(client, model_file: Path, evidence_file: Path) -> None:
    registrant, checker = api_key("solo-bot", "registrant", "operator"), api_key("checker-bot", "registrant")
    validator, approver = person("carol"), person("alice")
    sha = client.post("/artifacts", headers=bearer(registrant), content=model_file.read_bytes()).json()["sha256"]
    vid = client.post("/models", headers=bearer(registrant), json={
        "name": "beta", "artifact_sha256": sha, "family": "trading", "role": "student"}).json()["id"]
    evidence = client.post("/artifacts", headers=bearer(checker), content=evidence_file.read_bytes()).json()["sha256"]
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=validator, evidence=gov.get_artifact_store().locate(evidence))
        gov.approve(session=s, version_id=vid, principal=approver, reason="ok", safe_output=0.0)
    refused = client.post(f"/models/{vid}/promote", headers=bearer(registrant), json={"reason": "mine"})
    assert _error(refused, 403, "Forbidden", "cannot promote")["rule"] == "promoter-not-registrant"
    ops = api_key("ops-bot", "operator")
    promoted = client.post(f"/models/{vid}/promote", headers=bearer(ops), json={})
    assert promoted.status_code == 200 and promoted.json()["stage"] == "production"
    killed = client.post("/kill-switches/beta/kill", headers=bearer(ops), json={"reason": "x"})
    assert _error(killed, 403, "Forbidden", "needs the risk role")["rule"] == "role-required:serving.kill"
    risk = api_key("risk-bot", "risk")
    arbitrary = client.post("/kill-switches/beta/kill", headers=bearer(risk), json={"reason": "x", "safe_output": 9.99})
    _error(arbitrary, 422, "InvalidInput", "safe_output")
    flat = client.post("/kill-switches/beta/kill", headers=bearer(risk), json={"reason": "x", "safe_output": True})
    assert flat.status_code == 200 and flat.json()["safe_output"] == 0.0


def test_grants_and_keys_over_http(client) -> None:
    ada, sam = api_key("ada-bot", "admin"), api_key("sam-bot", "admin")
    created = client.post("/service-accounts", headers=bearer(ada), json={"name": "nightly"})
    assert created.status_code == 201 and created.json()["kind"] == "service"
    grant = client.post("/grants", headers=bearer(ada), json={"principal": "sa:nightly", "role": "registrant"}).json()
    _error(client.post(f"/grants/{grant['id']}/approve", headers=bearer(ada), json={}), 403, "Forbidden",
           "cannot approve")
    assert client.post(f"/grants/{grant['id']}/approve", headers=bearer(sam), json={}).json()["status"] == "active"
    issued = client.post("/service-accounts/nightly/keys", headers=bearer(ada), json={"expires": "30d"}).json()
    assert issued["key"].startswith(issued["key_id"] + ".") and issued["expires_at"]
    _error(client.get("/whoami", headers=bearer(issued["key"])), 401, "Unauthenticated", "awaits a second admin")
    _error(client.post(f"/api-keys/{issued['key_id']}/approve", headers=bearer(ada), json={}), 403, "Forbidden",
           "cannot approve")
    assert client.post(f"/api-keys/{issued['key_id']}/approve", headers=bearer(sam), json={}).status_code == 200
    me = client.get("/whoami", headers=bearer(issued["key"])).json()
    assert (me["name"], me["roles"]) == ("nightly", ["registrant"])
    listed = client.get("/api-keys", headers=bearer(sam)).json()
    assert issued["key"].split(".")[1] not in json.dumps(listed)  # no secret is ever listed
    revoked = client.post(f"/api-keys/{issued['key_id']}/revoke", headers=bearer(sam), json={"reason": "rotate"})
    assert revoked.status_code == 200
    _error(client.get("/whoami", headers=bearer(issued["key"])), 401, "Unauthenticated", "was revoked")


def test_the_export_streams_a_file_the_auditor_script_accepts(client, tmp_path: Path) -> None:
    import subprocess
    import sys

    person("bob")
    with session_scope() as s:
        gov.ensure_project(session=s, name="desk", principal=person("bob"))
    reader = api_key("examiner", "auditor")
    r = client.get("/audit/export?format=jsonl", headers=bearer(reader))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    path = tmp_path / "audit.jsonl"
    path.write_bytes(r.content)
    assert len(path.read_text().splitlines()) >= 3
    script = Path(gov.__file__).with_name("auditor.py")
    checked = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and "chain intact" in checked.stdout
    _error(client.get("/audit/export?format=xml", headers=bearer(reader)), 422, "InvalidInput", "format")


def test_a_kubernetes_trigger_dry_run_names_who_asked(client) -> None:
    key = api_key("trigger-bot", "operator")
    r = client.post("/pipelines/trading/trigger", headers=bearer(key), json={"dry_run": True, "rayjob": False})
    assert r.status_code == 200, r.text
    command = r.json()["spec"]["template"]["spec"]["containers"][0]["command"]
    trigger = json.loads(command[command.index("--trigger") + 1])
    assert trigger["requested_by"]["name"] == "trigger-bot" and "--as" not in command


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("method,path,body,status", [
    ("GET", "/principals/%23%C2%B2", None, 404),                              # "#²": isdigit() but not an id
    ("POST", "/grants", {"principal": "#²", "role": "auditor"}, 422),
    ("GET", "/audit/events?since=0001-01-01T00:00:00%2B14:00", None, 422),    # before year 1 in UTC
    ("GET", "/model-names/m/at?time=9999-12-31T23:59:59-14:00", None, 422),   # after 9999 in UTC
    ("POST", "/webhooks/test", {"url": "http://[::1", "secret": "x"}, 422),   # urlparse raises
    ("POST", "/webhooks/subscriptions", {"url": "http://host:99999999/"}, 422),  # a port that is not a port
    ("POST", "/pipelines/trading/trigger", {"overrides": {"x\u0000\u202e": 1}}, 422),  # invisible keys in JSON
    ("POST", "/pipelines/trading/trigger", {"overrides": {"a": _nested(40)}}, 422),  # deeper than 32
])
def test_inputs_that_once_answered_500_are_4xx(client, method: str, path: str, body: Any, status: int) -> None:
    key = api_key("everything", "admin", "auditor", "registrant", "operator")
    r = client.request(method, path, headers=bearer(key), json=body)
    assert r.status_code == status and ERROR_KEYS <= set(r.json()), (r.status_code, r.text)


def test_an_oversized_chunked_body_is_413(client) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 4096  # 160 kB, no content-length: the limit here is 64 kB

    key = api_key("chunker", "operator")
    r = client.post("/models/1/promote", headers={**bearer(key), "content-type": "application/json"}, content=chunks())
    _error(r, 413, "PayloadTooLarge", "over the limit")


def test_people_cannot_give_a_run_a_trigger_nor_the_server_a_file_path(client) -> None:
    from convergence.platform.api import BackgroundJobs, Operations
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.errors import Forbidden, PolicyViolation

    human = person("quinn")
    forged = {"kind": "drift", "requested_by": {"id": 1, "name": "someone else"}}
    ops = Operations(who=lambda: human, jobs=BackgroundJobs(1))
    with pytest.raises(Forbidden, match="recorded by the system") as refused:
        ops.run_pipeline(family="trading", trigger=forged)
    assert refused.value.rule == "trigger-by-system"
    with session_scope(write=False) as s:  # the attempt is evidence
        [event] = gov.query_events(session=s, action="pipeline.run_refused")
    assert event.payload_obj["rule"] == "trigger-by-system" and event.payload_obj["principal"]["id"] == human.id
    with pytest.raises(PolicyViolation, match="not a file path"):
        ops.run_pipeline(family="trading", overrides={"data": {"source": "csv", "path": "/etc/shadow"}})


def test_readyz_says_what_is_wrong_but_never_where_the_database_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz needs no credential: an unreachable database is named by what is wrong, not by its URL."""
    from starlette.testclient import TestClient

    from convergence.platform.api import create_app
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_DATABASE_URL", "postgresql+psycopg://ops:hunter2@127.0.0.1:1/prod_ledger")
    dispose_engines()
    get_settings.cache_clear()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as c:
            answer = c.get("/readyz")
    finally:
        dispose_engines()
        get_settings.cache_clear()
    assert answer.status_code == 503 and "does not answer" in answer.json()["message"]
    assert not any(s in answer.text for s in ("hunter2", "ops", "127.0.0.1", "prod_ledger"))
