"""The console in a real browser: Debian's chromium driven by Playwright against a real `cvg api` on loopback,
a real OpenID Provider for the sign-in (authorization code with PKCE), on SQLite and PostgreSQL.

An auditor signs in, walks from the inventory to the production model and its approvals, downloads its audit
pack, travels in time across a promotion, and checks a ledger event in the browser — "verified", then "failed"
once the row is edited behind the triggers' back. No page logs a script error or a failed request, no page has a
write form, and a screenshot of every page is kept under .artifacts/console/BACKEND/.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.people import api_key
from tests.platform.api.conftest import ApiServer, bearer

pytestmark = [pytest.mark.slow]

SHOTS = Path(__file__).resolve().parents[3] / ".artifacts" / "console"


@pytest.fixture
def console_server(console_story: dict[str, Any], oidc: Any, tmp_path: Path) -> Iterator[ApiServer]:
    """`cvg api` on the story's database, trusting the provider, with the console's public client configured."""
    env = {"CVG_API_MAX_RUNS": "0", **oidc.env(), "CVG_CONSOLE_CLIENT_ID": "cvg-console", "CVG_AUTH_CACHE_S": "0",
           "CVG_CONSOLE_VERIFY_S": "0"}
    server = ApiServer(env, tmp_path / "api.log")
    yield server
    server.stop()


class Visit:
    """One browser tab that records script errors and failed requests of the console's own pages."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.forms: dict[str, list[list[str]]] = {}
        page.on("console", lambda m: self._error(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self._error(str(exc)))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}") if r.url.startswith(base) else None)
        page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}")
                if r.url.startswith(base) and r.status >= 400 else None)

    def _error(self, text: str) -> None:
        if self.page.url.startswith(self.base):  # the provider's own pages are not ours to judge
            self.errors.append(f"{self.page.url}: {text}")

    def shot(self, name: str) -> None:
        """A full-page screenshot, and the page's forms (id, method) for the no-write-form check."""
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        self.forms[name] = self.page.eval_on_selector_all("form", "fs => fs.map(f => [f.id, f.method])")


@contextlib.contextmanager
def browse(chromium: str, base: str, shots: Path) -> Iterator[Visit]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(accept_downloads=True, timezone_id="Europe/Paris", locale="en-GB")
            yield Visit(context.new_page(), base, shots)
        finally:
            browser.close()


def _sign_in_with_oidc(visit: Visit, login: str) -> None:
    """What the person does: the console sends them to the issuer; they sign in there and consent."""
    page = visit.page
    page.goto(visit.base + "/ui/")
    assert "/ui/login" in page.url
    visit.shot("login")
    page.click("#oidc-signin")
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    while not page.url.startswith(visit.base):  # the provider's consent page(s)
        page.click("button[type=submit]")
        page.wait_for_load_state()
    page.wait_for_selector("#me-name")


def test_an_auditor_signs_in_reaches_the_production_model_and_travels_in_time(
        console_server: ApiServer, console_story: dict[str, Any], chromium: str, backend: str, tmp_path: Path) -> None:
    story, base = console_story, console_server.url
    with browse(chromium, base, SHOTS / backend) as visit:
        page = visit.page
        _sign_in_with_oidc(visit, "audrey")
        assert page.text_content("#me-name") == "audrey" and "auditor" in page.text_content(".me")
        assert page.url == base + "/ui/"
        visit.shot("inventory")
        row = page.locator("tr[data-model=alpha]")
        assert "v2" in row.text_content() and "high" in row.text_content() and "carol" in row.text_content()

        # keyboard only: Tab to alpha's production version, Enter opens it
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.matches('tr[data-model=alpha] a.production')"):
                break
        else:
            pytest.fail("the production link of alpha cannot be reached with the keyboard")
        page.keyboard.press("Enter")
        page.wait_for_url(f"{base}/ui/models/{story['v2']}")
        trail = page.eval_on_selector_all("#approval-trail tr[data-decision]",
                                          "rs => rs.map(r => [r.dataset.decision, r.querySelector('.actor').textContent])")
        assert trail == [["validated", "carol"], ["approved", "anna"]], trail
        assert "https://idp.test" in page.text_content("#approval-trail")  # the principal, not only a name
        assert page.get_attribute("time", "title").startswith("your local time:")
        visit.shot("model")
        with page.expect_download() as download:
            page.click("#pack")
        pack = tmp_path / "pack.zip"
        download.value.save_as(pack)
        from convergence import governance as gov
        from convergence.governance import auditor

        assert auditor.main(["auditor.py", "pack", str(pack), "--pubkey", gov.ledger.verifier_key()]) == 0

        page.goto(f"{base}/ui/models/{story['v1']}")
        assert page.text_content("#stage") == "retired" and "drift under review" in page.text_content("#kill-timeline")
        visit.shot("model-v1")
        with page.expect_popup() as popup:
            page.click(f"a[href='/ui/drift/{story['report']}/report']")
        report = popup.value
        report.wait_for_load_state()
        report.wait_for_function("document.body.innerText.toLowerCase().includes('drift')")  # drawn by its script
        report.screenshot(path=str(SHOTS / backend / "evidently.png"), full_page=True)
        report.close()

        # time travel: the instant before v2's promotion gives v1, now gives v2, long ago nothing
        page.click("nav a[href='/ui/time-travel']")
        for at, expect in ((story["between"].isoformat(), "v1"), ("now", "v2")):
            page.select_option("#tt-name", "alpha")
            page.fill("#tt-at", at)
            page.press("#tt-at", "Enter")
            page.wait_for_selector("#tt-answer")
            assert page.text_content("#tt-version") == expect
        assert page.eval_on_selector_all("#tt-approvals td.actor", "ts => ts.map(t => t.textContent)") == ["carol", "anna"]
        visit.shot("time-travel")
        page.fill("#tt-at", "2001-01-01T00:00:00Z")
        page.press("#tt-at", "Enter")
        page.wait_for_selector("#tt-answer")
        assert "Nothing of alpha was in production" in page.text_content("#tt-answer")

        page.click("nav a[href='/ui/budgets']")
        assert page.locator("figure.budget svg[role=img]").count() == 1
        visit.shot("budgets")
        page.click("nav a[href='/ui/ledger']")
        assert page.text_content("#chain-status").startswith("Intact")
        visit.shot("ledger")
        page.emulate_media(media="print")  # the print stylesheet: no navigation, no buttons, the record only
        assert not page.is_visible("header nav") and not page.is_visible("button.check")
        assert page.is_visible("#ledger-events")
        visit.shot("ledger-print")
    assert visit.errors == [] and visit.failed == [], (visit.errors, visit.failed)
    writes = {name: [f for f in forms if f[1] != "get" and f[0] != "signout"] for name, forms in visit.forms.items()
              if name != "login"}
    assert writes == {name: [] for name in writes} and all(
        ["signout", "post"] in forms for name, forms in visit.forms.items() if name != "login")
    assert len(list((SHOTS / backend).glob("*.png"))) >= 7


def test_the_in_browser_inclusion_check_catches_an_edited_row(
        console_server: ApiServer, console_story: dict[str, Any], chromium: str, backend: str, raw_sql: Any,
        unprotect: Any) -> None:
    base = console_server.url
    key = api_key("exam-bot", "auditor")
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    # alice's approval: its reason holds quotes, a backslash, U+2028, a newline, a tab and markup, so the browser's
    # JSON.stringify must escape exactly as the ledger's encoder did
    with session_scope(write=False) as s:
        seq = gov.query_events(session=s, action="model.approved", actor="alice")[0].seq
    with browse(chromium, base, SHOTS / backend) as visit:
        page = visit.page
        page.goto(f"{base}/ui/ledger?before={seq + 1}")
        page.fill("#api_key", key)
        page.click("#key-signin button[type=submit]")
        page.wait_for_url(f"{base}/ui/ledger?before={seq + 1}")
        verdict = f"output.verdict[data-seq='{seq}']"
        page.click(f"button.check[data-seq='{seq}']")
        page.wait_for_selector(f"{verdict}[data-result]")
        assert page.get_attribute(verdict, "data-result") == "verified", page.text_content(verdict)
        assert page.text_content(verdict).startswith(f"verified: #{seq} ")
        visit.shot("ledger-verified")

        unprotect()
        raw_sql(f"UPDATE audit_events SET actor = 'mallory' WHERE seq = {seq}")
        page.reload()
        page.click(f"button.check[data-seq='{seq}']")
        page.wait_for_selector(f"{verdict}[data-result]")
        assert page.get_attribute(verdict, "data-result") == "failed"
        assert "changed after it was written" in page.text_content(verdict)
        assert page.text_content("#chain-status").startswith(f"Broken at seq {seq}")
        # a key that is not the ledger's: the same untampered proof is refused on the signature
        page.fill("#pubkey", _other_key())
        page.fill("#check-seq", "1")
        page.press("#check-seq", "Enter")
        page.wait_for_selector("#check-result[data-result]")
        assert page.get_attribute("#check-result", "data-result") == "failed"
        visit.shot("ledger-tampered")
    assert visit.errors == [] and visit.failed == [], (visit.errors, visit.failed)


def _other_key() -> str:
    from convergence.governance import ledger

    name = ledger.verifier_key().split("+", 1)[0]  # the same name, another key
    signer = ledger.Ed25519NoteSigner.from_key(ledger.generate_key(name))
    return signer.verifier_key()


def test_the_auditor_cannot_write_through_the_api_with_the_same_identity(
        console_server: ApiServer, console_story: dict[str, Any], oidc: Any) -> None:
    """The console has no write form; the API answers 403 when the auditor's own token is used directly."""
    from convergence.platform.oidc import device_login
    from tests.platform.api.oidc_provider import AUDIENCE

    token = device_login(issuer=oidc.url, client_id="cvg-cli", audience=AUDIENCE,
                         prompt=lambda grant: oidc.approve_device(grant["verification_uri_complete"], "audrey"))
    headers = bearer(token["access_token"])
    me = httpx.get(console_server.url + "/whoami", headers=headers, timeout=10).json()
    assert me["name"] == "audrey" and me["roles"] == ["auditor"]
    for method, path, body in (("POST", f"/models/{console_story['v1']}/approve", {"reason": "x"}),
                               ("POST", "/model-names/alpha/rollback", {}),
                               ("POST", "/kill-switches/alpha/kill", {"reason": "x"})):
        answer = httpx.request(method, console_server.url + path, json=body, headers=headers, timeout=10)
        assert answer.status_code == 403 and answer.json()["error"] == "Forbidden", (path, answer.text)
    pages = httpx.post(console_server.url + "/ui/", headers=headers, timeout=10)
    assert pages.status_code == 405
