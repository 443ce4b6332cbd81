"""The console over HTTP, in-process: who may see what, sign-in and sign-out, headers, and hostile input.

Signed-out readers are sent to sign in; an API key signs in to a server-side session (the key never comes back);
sign-out needs the page's token and the console's own origin; every answer carries a strict CSP; a registrant
sees the registry but not the trail or the pack; and a campaign of odd inputs gets no 5xx and no traceback.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from tests.people import api_key
from tests.platform.api.conftest import bearer

PAGES = ("/ui/", "/ui/time-travel?name=alpha&at=now", "/ui/ledger", "/ui/budgets")


def _signed_in(client: Any, key: str) -> str:
    """Sign in with ``key`` through the form; the session cookie is kept by the client. Returns the CSRF token."""
    answer = client.post("/ui/login/key", data={"api_key": key, "next": "/ui/budgets"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/budgets", answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/ui" in cookie and "SameSite=lax" in cookie and key not in cookie
    page = client.get("/ui/budgets")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_signed_out_readers_are_sent_to_sign_in_and_back(client: Any) -> None:
    answer = client.get("/ui/models/1?x=1", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?" + urllib.parse.urlencode({"next": "/ui/models/1?x=1"})
    login = client.get(answer.headers["location"])
    assert login.status_code == 200 and 'name="next" value="/ui/models/1?x=1"' in login.text
    assert "OIDC sign-in is not configured" in login.text  # no CVG_CONSOLE_CLIENT_ID here: keys only
    csp = login.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert login.headers["x-frame-options"] == "DENY" and login.headers["cache-control"] == "no-store"
    for target in ("//evil.example/x", "https://evil.example/", "/elsewhere", "/ui\\@evil", "javascript:alert(1)",
                   "/ui/../audit/events", "/ui/%2e%2e/audit/events", "/uiother", "/ui/é"):
        page = client.get("/ui/login", params={"next": target})
        assert 'name="next" value="/ui/"' in page.text, target  # never leaves the console


def test_a_key_signs_in_to_a_session_and_sign_out_needs_the_pages_token(client: Any, console_story: dict[str, Any]) -> None:
    key = api_key("exam-bot", "auditor")
    csrf = _signed_in(client, key)
    inventory = client.get("/ui/")
    assert inventory.status_code == 200 and key not in inventory.text and "exam-bot" in inventory.text
    assert client.post("/ui/logout", data={"csrf": "forged"}).status_code == 403
    assert client.post("/ui/logout", data={"csrf": "é"}).status_code == 403  # non-ASCII: refused, not a 500
    foreign = client.post("/ui/logout", data={"csrf": csrf}, headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403 and "another site" in foreign.text
    assert client.get("/ui/").status_code == 200  # still signed in after both refusals
    out = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_wrong_or_revoked_key_is_one_clear_line_and_ends_the_session(client: Any, console_story: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.governance import identity
    from convergence.platform.db import session_scope
    from tests.people import person

    bad = client.post("/ui/login/key", data={"api_key": "cvgk_not-a-real-key", "next": "/ui/"})
    assert bad.status_code == 401 and "cvgk_not-a-real-key" not in bad.text and 'role="alert"' in bad.text
    for origin in ("null", "http://[::1", "https://evil.example", "ftp://testserver"):
        cross = client.post("/ui/login/key", data={"api_key": "x"}, headers={"origin": origin})
        assert cross.status_code == 403, origin
    key = api_key("brief-bot", "auditor")
    _signed_in(client, key)
    client.app.state.auth.invalidate()
    with session_scope() as s:
        key_id = next(k["key_id"] for k in identity.list_api_keys(session=s, principal=person("sam"))
                      if k["account"] == "brief-bot")
        identity.revoke_api_key(session=s, principal=person("sam"), key_id=key_id, reason="leaked")
    client.app.state.auth.invalidate()
    answer = client.get("/ui/ledger", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")


def test_an_auditor_sees_everything_a_registrant_sees_the_registry_only(client: Any, console_story: dict[str, Any]) -> None:
    story = console_story
    auditor = bearer(api_key("exam-bot", "auditor"))
    for url in (*PAGES, f"/ui/models/{story['v1']}", f"/ui/models/{story['v2']}", f"/ui/models/{story['teacher']}"):
        page = client.get(url, headers=auditor)
        assert page.status_code == 200, (url, page.text[:300])
        assert "<form method=\"post\"" not in page.text  # header auth has no session, so not even sign-out
    model = client.get(f"/ui/models/{story['v2']}", headers=auditor).text
    assert f'href="/ui/models/{story["v2"]}/pack"' in model and 'id="kill-timeline"' in model
    assert "https://idp.test" in model and "anna" in model and "file://" not in model
    pack = client.get(f"/ui/models/{story['v2']}/pack", headers=auditor)
    assert pack.status_code == 200 and pack.content[:2] == b"PK"
    assert "attachment" in pack.headers["content-disposition"]

    registrant = bearer(api_key("dev-bot", "registrant"))
    model = client.get(f"/ui/models/{story['v2']}", headers=registrant)
    assert model.status_code == 200 and "/pack" not in model.text and "needs the auditor or admin role" in model.text
    assert 'id="kill-timeline"' not in model.text
    ledger = client.get("/ui/ledger", headers=registrant)
    assert ledger.status_code == 403 and "audit.read" in ledger.text and "<html" in ledger.text
    assert client.get(f"/ui/models/{story['v2']}/pack", headers=registrant).status_code == 403
    proof = client.get("/ui/ledger/proof/3", headers=registrant)
    assert proof.status_code == 403 and proof.json()["error"] == "Forbidden"


def test_the_proof_a_browser_gets_rebuilds_the_stored_hash(client: Any, console_story: dict[str, Any]) -> None:
    """The JSON the page's script checks: the event's fields and payload text hash to the stored hash, and the
    proof places that leaf under the signed root (what console.js does, done here with the standalone auditor)."""
    from convergence.governance import auditor, ledger

    key = bearer(api_key("exam-bot", "auditor"))
    answer = client.get("/ui/ledger/proof/8", headers=key)
    data = answer.json()
    e = data["event"]
    assert isinstance(e["payload"], str)  # the text as hashed, never re-encoded by the server
    proof = {"seq": 8, "tree_size": data["tree_size"], "proof": data["proof"], "checkpoint": data["checkpoint"],
             "event": {**e, "hash": auditor.event_hash(e)}}
    assert auditor.inclusion(proof, ledger.verifier_key()).startswith("seq 8 is included")
    assert client.get("/ui/ledger/proof/999999", headers=key).status_code == 404


def test_evidentlys_report_is_served_sandboxed(client: Any, console_story: dict[str, Any]) -> None:
    answer = client.get(f"/ui/drift/{console_story['report']}/report", headers=bearer(api_key("exam-bot", "auditor")))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"].startswith("sandbox allow-scripts;")
    assert "allow-same-origin" not in answer.headers["content-security-policy"]


def test_time_travel_names_the_version_before_and_after_a_promotion(client: Any, console_story: dict[str, Any]) -> None:
    key = bearer(api_key("exam-bot", "auditor"))
    before = client.get("/ui/time-travel", params={"name": "alpha", "at": console_story["between"].isoformat()},
                        headers=key).text
    after = client.get("/ui/time-travel", params={"name": "alpha", "at": "now"}, headers=key).text
    assert 'id="tt-version">v1<' in before and 'id="tt-version">v2<' in after
    assert "alice" in before and "anna" in after
    assert "model.promoted" in after  # the events around the instant, for a reader of the trail


def test_odd_input_is_a_clear_4xx_never_a_5xx(client: Any, console_story: dict[str, Any]) -> None:
    """A campaign of hostile paths and parameters, counted: none answers 5xx or shows a traceback."""
    key = bearer(api_key("exam-bot", "auditor"))
    odd = ["", "0", "-1", "1e9", "99999999999999999999", "abc", "%00", "\u0000", "\u202e", "💥" * 50, "../../etc/passwd",
           "<script>alert(1)</script>", "' OR 1=1 --", "a" * 5000, "NaN", "2026-13-45", "now", "1h", "\ud800",
           "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
    requests = []
    for value in odd:
        quoted = urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")
        requests += [("GET", f"/ui/models/{quoted}"), ("GET", f"/ui/models/{quoted}/pack"),
                     ("GET", f"/ui/drift/{quoted}/report"), ("GET", f"/ui/ledger/proof/{quoted}"),
                     ("GET", f"/ui/static/{quoted}"), ("GET", f"/ui/?q={quoted}&sort={quoted}&family={quoted}"),
                     ("GET", f"/ui/time-travel?name={quoted}&at={quoted}"), ("GET", f"/ui/time-travel?name=alpha&at={quoted}"),
                     ("GET", f"/ui/ledger?before={quoted}"), ("GET", f"/ui/budgets?project={quoted}"),
                     ("GET", f"/ui/callback?state={quoted}&code={quoted}"), ("GET", f"/ui/callback?error={quoted}"),
                     ("GET", f"/ui/login?next={quoted}"), ("GET", f"/ui/login/oidc?next={quoted}")]
    statuses: dict[int, int] = {}
    for method, url in requests:
        answer = client.request(method, url, headers=key, follow_redirects=False)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, (url, answer.text[:300])
        assert "Traceback" not in answer.text, url
        if answer.headers.get("content-type", "").startswith("text/html"):  # a page never echoes markup unescaped
            assert "<script>alert(1)</script>" not in answer.text, url
    for body in (b"api_key=" + b"x" * 20000, b"\xff\xfe", b"api_key=%ZZ&next=%00", b"&&&===", b""):
        answer = client.post("/ui/login/key", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert 400 <= answer.status_code < 500, body[:40]
    assert sum(statuses.values()) == len(requests) + 5 == 299 and not any(s >= 500 for s in statuses), statuses


def test_the_callback_refuses_a_sign_in_it_did_not_start(client: Any) -> None:
    """Without the browser's own state cookie, or after the issuer said no, the callback signs nobody in."""
    denied = client.get("/ui/callback", params={"error": "access_denied", "error_description": "paste your key at x"})
    assert denied.status_code == 401 and "access_denied" in denied.text
    assert "cvg_console=" not in denied.headers.get("set-cookie", "")  # no session; the sign-in cookie is dropped
    assert "paste your key" not in denied.text  # the issuer's free text is not shown on the console's page
    forged = client.get("/ui/callback", params={"state": "made-up", "code": "stolen"})
    assert forged.status_code == 401 and "not started in this browser" in forged.text
    client.cookies.set("cvg_console_login", "enc:v1:AAAAforged%C3%A9", path="/ui")
    edited = client.get("/ui/callback", params={"state": "made-up", "code": "stolen"})
    assert edited.status_code == 401 and "not started in this browser" in edited.text
    assert client.get("/ui/login/oidc").status_code == 404  # not configured here: says so, no redirect


def test_no_write_route_exists_under_ui(client: Any) -> None:
    key = bearer(api_key("exam-bot", "auditor"))
    for method, path in (("POST", "/ui/"), ("PUT", "/ui/models/1"), ("DELETE", "/ui/ledger"), ("POST", "/ui/budgets"),
                         ("POST", "/ui/models/1/pack")):
        assert client.request(method, path, headers=key).status_code == 405, path


def test_sessions_live_in_the_database_and_are_audited(client: Any, console_story: dict[str, Any]) -> None:
    """Another replica (a second app on the same database) knows the session; signing in and out are events."""
    from starlette.testclient import TestClient

    from convergence import governance as gov
    from convergence.platform.api import create_app
    from convergence.platform.db import session_scope

    csrf = _signed_in(client, api_key("exam-bot", "auditor"))
    with TestClient(create_app(), raise_server_exceptions=False) as replica:
        replica.cookies.update(client.cookies)
        assert replica.get("/ui/ledger").status_code == 200
    assert client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    from sqlalchemy import text

    with session_scope(write=False) as s:
        actions = [e.action for e in gov.query_events(session=s, action="console.*")]
        assert actions == ["console.signed_in", "console.signed_out"]
        assert s.execute(text("SELECT count(*) FROM console_sessions")).scalar() == 0


def test_a_link_from_another_site_never_acts_with_the_session(client: Any, console_story: dict[str, Any]) -> None:
    """Sec-Fetch-Site cross-site: no page, pack or refusal in the reader's name; a link to continue instead."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    _signed_in(client, api_key("dev-bot", "registrant"))
    with session_scope(write=False) as s:
        before = gov.head(session=s)[0]
    cross = {"sec-fetch-site": "cross-site"}
    for path in ("/ui/ledger", f"/ui/models/{console_story['v2']}/pack"):
        answer = client.get(path, headers=cross, follow_redirects=False)
        assert answer.status_code in (303, 401), (path, answer.status_code)
    with session_scope(write=False) as s:
        assert gov.head(session=s)[0] == before  # no refusal recorded in dev-bot's name
    login = client.get("/ui/login", params={"next": "/ui/ledger"}, headers=cross)
    assert 'id="continue"' in login.text and "dev-bot" in login.text
    assert client.get("/ui/ledger", headers={"sec-fetch-site": "same-origin"}).status_code == 403  # its own click


def test_a_cookie_is_secure_behind_a_tls_proxy_and_a_new_ledger_has_a_page(client: Any, db_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from convergence.platform.api import create_app
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_CONSOLE_URL", "https://cvg.example")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False, base_url="https://cvg.example") as tls:
        answer = tls.post("/ui/login/key", data={"api_key": api_key("exam-bot", "auditor")}, follow_redirects=False,
                          headers={"origin": "https://cvg.example"})
        assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]
        ledger = tls.get("/ui/ledger")  # nothing signed yet: the page says so instead of failing
        assert ledger.status_code == 200 and 'id="cp-none"' in ledger.text
    get_settings.cache_clear()


def test_the_inventory_filters_and_sorts(client: Any, console_story: dict[str, Any]) -> None:
    key = bearer(api_key("exam-bot", "auditor"))

    def models(**params: str) -> list[str]:
        return re.findall(r'<tr data-model="([^"]+)"', client.get("/ui/", params=params, headers=key).text)

    assert models() == ["alpha", "alpha-teacher"]
    assert models(tier="high") == ["alpha"] and models(stage="candidate") == ["alpha-teacher"]
    assert models(q="TEACH") == ["alpha-teacher"] and models(family="language") == []
    assert models(sort="name", desc="1") == ["alpha-teacher", "alpha"]
    assert models(sort="tier", desc="1") == ["alpha-teacher", "alpha"]  # unset tiers after high, reversed
    assert models(sort="no-such-column") == ["alpha", "alpha-teacher"]  # an unknown sort is the default


def test_signing_in_again_ends_the_old_session_and_only_own_clicks_download(client: Any,
                                                                           console_story: dict[str, Any]) -> None:
    """A second sign-in replaces the browser's session; the pack (which may sign a checkpoint) wants the browser to
    say same-origin; another site cannot even start an OIDC sign-in; a TLS proxy's https origin is the console's."""
    key = api_key("exam-bot", "auditor")
    _signed_in(client, key)
    first = client.cookies.get("cvg_console")
    _signed_in(client, key)
    assert client.cookies.get("cvg_console") != first
    from starlette.testclient import TestClient

    from convergence.platform.api import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as other:
        other.cookies.set("cvg_console", first, path="/ui")
        assert other.get("/ui/", follow_redirects=False).status_code == 303  # the old session is gone
    pack = f"/ui/models/{console_story['v2']}/pack"
    assert client.get(pack, follow_redirects=False).status_code == 401  # no Sec-Fetch-Site: not the session's
    own = client.get(pack, headers={"sec-fetch-site": "same-origin"})
    assert own.status_code == 200 and own.content[:2] == b"PK"
    started = client.get("/ui/login/oidc", headers={"sec-fetch-site": "cross-site"}, follow_redirects=False)
    assert started.status_code == 200 and "cvg_console_login" not in started.headers.get("set-cookie", "")
    proxied = client.post("/ui/logout", data={"csrf": "x"}, headers={"origin": "https://testserver"})
    assert proxied.status_code == 403 and "not sent by this console" in proxied.text  # origin accepted
