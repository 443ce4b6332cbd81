"""The outbound network policy: webhook SSRF attempts each fail safely, and a fuzz campaign over URLs."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from convergence import governance as gov
from convergence.platform import netguard
from convergence.platform.db import session_scope
from convergence.platform.errors import ConvergenceError, InvalidInput, PolicyViolation
from convergence.platform.settings import get_settings
from tests.people import person

LOOPBACK = "127.0.0.0/8,::1/128"


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The default policy: no internal network admitted."""
    monkeypatch.delenv("CVG_WEBHOOK_ALLOW_NETWORKS", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class Recorder:
    """A real HTTP server on loopback that records every request; answers POST with ``status``."""

    def __init__(self, status: int = 200, location: str = "/internal-admin") -> None:
        recorder, self.paths = self, []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.paths.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _subscribe(url: str) -> None:
    with session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url=url, events=["*"], secret="s3cret-value")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:5432/",
                                 "http://[::1]:22/", "http://10.0.0.7/hook", "http://192.168.1.1/",
                                 "http://localhost:8000/", "http://2130706433/", "http://0x7f000001/",
                                 "http://0.0.0.0:80/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/",
                                 "http://224.0.0.1/", "http://100.64.0.1/", "http://[::]/"])
def test_internal_addresses_are_refused_by_policy(db_url: str, policy: None, url: str) -> None:
    with pytest.raises(PolicyViolation, match="refused by policy"):
        _subscribe(url)
    with pytest.raises(PolicyViolation, match="refused by policy"):
        gov.send_test(url, "secret")
    with session_scope(write=False) as s:
        assert gov.list_subscriptions(session=s) == []


def test_credentials_inside_a_url_are_refused_and_never_recorded(db_url: str) -> None:
    with pytest.raises(InvalidInput, match="credentials inside a URL"):
        _subscribe("http://admin:hunter2@127.0.0.1:9/hook")
    with session_scope(write=False) as s:
        payloads = [str(e.payload) for e in s.execute(select(gov.AuditEvent)).scalars()]
    assert not any("hunter2" in p for p in payloads)


def test_the_allowlist_admits_loopback_on_purpose(db_url: str, policy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", LOOPBACK)
    get_settings.cache_clear()
    receiver = Recorder()
    try:
        assert gov.send_test(receiver.url, "secret")["ok"]
    finally:
        receiver.close()
    assert netguard.refusal_reason("10.1.2.3") == "10.1.2.3 is private"  # only what the list names


def test_a_redirect_is_not_followed_and_is_reported_as_a_failed_delivery(db_url: str) -> None:
    receiver = Recorder(status=302)
    try:
        answer = gov.send_test(receiver.url, "secret")
        _subscribe(receiver.url)
        with session_scope() as s:
            gov.enqueue(session=s, event_type="drift.alert", data={"message": "x"})
        gov.deliver_due()
    finally:
        receiver.close()
    assert not answer["ok"] and answer["status"] == 302 and answer["error"] == "delivery failed (status 302)"
    assert receiver.paths == [("POST", "/hook"), ("POST", "/hook")]  # never GET /internal-admin
    with session_scope(write=False) as s:
        delivery = gov.list_deliveries(session=s)[0]
    assert (delivery.status, delivery.last_status, delivery.last_error) == ("pending", 302,
                                                                             "delivery failed (status 302)")


def test_an_error_never_tells_which_internal_port_answers(db_url: str) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    not_http = socket.socket()
    not_http.bind(("127.0.0.1", 0))
    not_http.listen(1)
    port = not_http.getsockname()[1]

    def speak_garbage() -> None:
        conn, _ = not_http.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.close()

    threading.Thread(target=speak_garbage, daemon=True).start()
    try:
        a = gov.send_test(f"http://127.0.0.1:{closed_port}/", "secret")
        b = gov.send_test(f"http://127.0.0.1:{port}/", "secret")
    finally:
        not_http.close()
    assert a["error"] == b["error"] == "delivery failed (connection error)"


def test_delivery_connects_to_the_address_that_was_checked(db_url: str, policy: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name resolves to a public address when checked and to loopback afterwards."""
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80))]])
    connected: list[tuple[str, int]] = []
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "hooks.example":
            return next(answers, [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))])
        return real(host, *args, **kwargs)

    def record(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        connected.append(address)
        raise ConnectionRefusedError("not in a test")

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", record)
    assert netguard.post("http://hooks.example/hook", b"{}", {}, 1.0) == (None, "delivery failed (connection error)")
    assert connected == [("93.184.215.14", 80)]  # the checked address, never a second lookup's loopback
    status, error = netguard.post("http://hooks.example/hook", b"{}", {}, 1.0)  # checked again at send time
    assert status is None and "refused by policy" in error and len(connected) == 1


CAMPAIGN = {"inputs": 0, "accepted": 0}


@st.composite
def _urls(draw):  # type: ignore[no-untyped-def]
    scheme = draw(st.sampled_from(["http", "https", "ftp", "file", "gopher", "HTTP", ""]))
    host = draw(st.one_of(
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1", "0", "0x7f.1",
                         "2130706433", "[::ffff:10.0.0.1]", "[fe80::1%25eth0]", "127.1", "0177.0.0.1", "[::]",
                         "example.invalid", "", "a" * 300]),
        st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
        st.text(max_size=40)))
    userinfo = draw(st.sampled_from(["", "user:pass@", "@", "a@b@"]))
    port = draw(st.sampled_from(["", ":80", ":0", ":65536", ":-1", ":x", ":5432"]))
    path = draw(st.text(max_size=20))
    return f"{scheme}://{userinfo}{host}{port}/{path}"


_REAL_GETADDRINFO = socket.getaddrinfo


def _offline_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Names other than localhost do not resolve here (no DNS off this machine): a stand-in for the internet's
    resolver; IP literals in every spelling still go through the real getaddrinfo."""
    try:
        return _REAL_GETADDRINFO(host, *args, flags=socket.AI_NUMERICHOST, **kwargs)
    except (socket.gaierror, UnicodeError, TypeError):
        if host == "localhost":
            return _REAL_GETADDRINFO(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "no DNS here") from None


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(url=_urls())
def _campaign(url: str) -> None:
    CAMPAIGN["inputs"] += 1
    try:
        target = netguard.check_url(url)
    except (InvalidInput, PolicyViolation) as exc:
        assert "\n" not in exc.message and "pass@" not in exc.message
        return
    except ConvergenceError as exc:  # pragma: no cover - any other error class is a finding
        pytest.fail(f"{url!r}: {type(exc).__name__}")
    CAMPAIGN["accepted"] += 1
    assert netguard.refusal_reason(target.address) is None


def test_fuzzed_urls_are_accepted_only_when_public_or_refused_with_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVG_WEBHOOK_ALLOW_NETWORKS", raising=False)
    get_settings.cache_clear()
    monkeypatch.setattr(socket, "getaddrinfo", _offline_getaddrinfo)
    CAMPAIGN.update(inputs=0, accepted=0)
    _campaign()
    print(f"URL campaign: {CAMPAIGN['inputs']} inputs, {CAMPAIGN['accepted']} accepted (public addresses)")
    assert CAMPAIGN["inputs"] >= 600 and CAMPAIGN["accepted"] <= CAMPAIGN["inputs"]
    get_settings.cache_clear()
