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


ATTACKS = {  # id: (url, what the refusal says)
    "cloud-metadata": ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    "cloud-metadata-https": ("https://169.254.169.254/", "169.254.169.254 is link-local"),
    "postgres-on-loopback": ("http://127.0.0.1:5432/", "127.0.0.1 is loopback"),
    "ssh-on-ipv6-loopback": ("http://[::1]:22/", "::1 is loopback"),
    "private-10": ("http://10.0.0.7/hook", "10.0.0.7 is private"),
    "private-192-168": ("http://192.168.1.1/", "192.168.1.1 is private"),
    "localhost-name": ("http://localhost:8000/", "is loopback (localhost resolves to it)"),
    "decimal-ip": ("http://2130706433/", "127.0.0.1 is loopback (2130706433 resolves to it)"),
    "hex-ip": ("http://0x7f000001/", "127.0.0.1 is loopback"),
    "octal-ip": ("http://0177.0.0.1/", "127.0.0.1 is loopback (0177.0.0.1 resolves to it)"),
    "short-ip": ("http://127.1/", "127.0.0.1 is loopback"),
    "unspecified": ("http://0.0.0.0:80/", "0.0.0.0 is unspecified"),
    "ipv4-mapped-ipv6": ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is loopback"),
    "ipv4-mapped-private": ("http://[::ffff:10.0.0.1]/", "10.0.0.1 is private"),
    "6to4-carrying-loopback": ("http://[2002:7f00:1::1]/", "carries 127.0.0.1, which is loopback"),
    "ipv6-link-local": ("http://[fe80::1]/", "fe80::1 is link-local"),
    "ipv6-site-local": ("http://[fec0::1]/", "fec0::1 is site-local"),
    "ipv6-unique-local": ("http://[fd00::1]/", "fd00::1 is private"),
    "multicast": ("http://224.0.0.1/", "224.0.0.1 is multicast"),
    "cgnat": ("http://100.64.0.1/", "100.64.0.1 is not a public address"),
    "ipv6-unspecified": ("http://[::]/", ":: is unspecified"),
    "broadcast": ("http://255.255.255.255/", "255.255.255.255 is reserved"),
}


@pytest.mark.parametrize("url,why", ATTACKS.values(), ids=ATTACKS.keys())
def test_each_internal_address_is_refused_by_policy(db_url: str, policy: None, url: str, why: str) -> None:
    with pytest.raises(PolicyViolation, match="^refused by policy: ") as refused:
        _subscribe(url)
    assert why in refused.value.message
    with pytest.raises(PolicyViolation, match="refused by policy"):
        gov.send_test(url, "secret")
    with session_scope(write=False) as s:
        assert gov.list_subscriptions(session=s) == []


def _resolving(monkeypatch: pytest.MonkeyPatch, name: str, *answers: str) -> None:
    """``name`` resolves to ``answers`` in turn (the last one from then on); other names as usual."""
    real, queue = socket.getaddrinfo, list(answers)

    def fake(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != name:
            return real(host, port, *args, **kwargs)
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port or 80))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_a_public_looking_name_that_resolves_to_loopback_is_refused(db_url: str, policy: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _resolving(monkeypatch, "hooks.partner.example", "127.0.0.1")
    with pytest.raises(PolicyViolation, match=r"127.0.0.1 is loopback \(hooks.partner.example resolves to it\)"):
        _subscribe("https://hooks.partner.example/convergence")


def test_a_name_with_one_internal_address_among_public_ones_is_refused(policy: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def two(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "mixed.example":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", two)
    with pytest.raises(PolicyViolation, match="10.1.2.3 is private"):
        netguard.check_url("http://mixed.example/")


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://example.com/",
                                 "http:///nohost", "http://example.com:0/", "http://example.com:99999/",
                                 "http://exa mple.com/", "javascript:alert(1)"])
def test_what_is_not_an_http_url_is_invalid_input(url: str) -> None:
    with pytest.raises(InvalidInput):
        netguard.check_url(url)


@pytest.mark.parametrize("url", ["http://admin:hunter2@127.0.0.1:9/hook", "http://hunter2@127.0.0.1:9/",
                                 "http://:hunter2@127.0.0.1:9/", "http://a%40b:hunter2@127.0.0.1:9/",
                                 "https://hunter2@hooks.example/", "http://127.0.0.1:9\\@hunter2/"])
def test_credentials_inside_a_url_are_refused_and_never_recorded(db_url: str, url: str) -> None:
    with pytest.raises(InvalidInput, match="credentials inside a URL") as refused:
        _subscribe(url)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(InvalidInput, match="credentials inside a URL"):
        gov.send_test(url, "secret")
    with session_scope() as s, pytest.raises(PolicyViolation):  # a refused non-admin: the refusal is audited
        gov.subscribe(session=s, principal=person("ops"), url=url, events=["*"])
    with session_scope(write=False) as s:
        payloads = [str(e.payload) for e in s.execute(select(gov.AuditEvent)).scalars()]
    assert payloads and not any("hunter2" in p for p in payloads)


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


def test_a_path_outside_ascii_is_sent_percent_encoded_not_a_crash() -> None:
    receiver = Recorder()
    try:
        status, error = netguard.post(receiver.url + "/é?q=ü", b"{}", {}, 2.0)
    finally:
        receiver.close()
    assert (status, error) == (200, None) and receiver.paths == [("POST", "/hook/%C3%A9?q=%C3%BC")]


def _tls_files(tmp_path, name: str):  # type: ignore[no-untyped-def]
    """A test CA and a server certificate for ``name`` it signed: (CA file, certificate chain, key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):  # type: ignore[no-untyped-def]
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                            critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_pem = cert("test CA", ca_key, "test CA", ca_key, True).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "server.pem").write_bytes(cert(name, key, "test CA", ca_key, False)
                                          .public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    return tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"


@pytest.mark.parametrize("certified", ["hooks.partner.example", "someone-else.example"])
def test_https_goes_to_the_checked_address_with_sni_and_the_name_verified(
        tmp_path, monkeypatch: pytest.MonkeyPatch, certified: str) -> None:
    import ssl

    ca, chain, key = _tls_files(tmp_path, certified)
    seen: dict[str, object] = {}
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain, key)

    def sni(sock: object, name: str | None, ctx: object) -> None:
        seen["sni"] = name

    server_context.sni_callback = sni
    receiver = Recorder()
    receiver.server.socket = server_context.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    _resolving(monkeypatch, "hooks.partner.example", "127.0.0.1")  # loopback is admitted in tests
    real_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: real_context(cafile=str(ca)))
    try:
        answer = netguard.post(f"https://hooks.partner.example:{port}/hook", b"{}", {}, 3.0)
    finally:
        receiver.close()
    assert seen.get("sni") == "hooks.partner.example"  # SNI names the URL's host, not the address
    if certified == "hooks.partner.example":
        assert answer == (200, None) and receiver.paths == [("POST", "/hook")]
    else:  # the certificate is checked against the URL's host name: someone else's is refused
        assert answer == (None, "delivery failed (connection error)") and receiver.paths == []


def test_the_host_header_names_the_url_host_while_the_socket_goes_to_the_checked_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hosts: list[str] = []
    receiver = Recorder()
    original = receiver.server.RequestHandlerClass.parse_request

    def parse(handler):  # type: ignore[no-untyped-def]
        ok = original(handler)
        hosts.append(handler.headers.get("Host"))
        return ok

    monkeypatch.setattr(receiver.server.RequestHandlerClass, "parse_request", parse)
    port = receiver.server.server_address[1]
    _resolving(monkeypatch, "hooks.partner.example", "127.0.0.1")
    try:
        assert netguard.post(f"http://hooks.partner.example:{port}/hook", b"{}", {}, 3.0) == (200, None)
    finally:
        receiver.close()
    assert hosts == [f"hooks.partner.example:{port}"]


def test_a_checkpoint_fetched_by_url_takes_the_same_policy_and_no_redirect(policy: None,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.governance import _anchors
    from convergence.platform.errors import Unavailable

    with pytest.raises(PolicyViolation, match="169.254.169.254 is link-local"):
        _anchors.fetch("http://169.254.169.254/latest/meta-data/", get_settings())
    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", LOOPBACK)
    get_settings.cache_clear()
    receiver = Recorder(status=302)
    try:
        with pytest.raises(Unavailable, match="status 302"):
            _anchors.fetch(receiver.url, get_settings())
    finally:
        receiver.close()
    assert receiver.paths == [("GET", "/hook")]  # never GET /internal-admin
    with pytest.raises(Unavailable, match=r"cannot fetch http://127.0.0.1:\d+/: connection error$"):
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        _anchors.fetch(f"http://127.0.0.1:{port}/", get_settings())


def test_a_fetched_document_is_read_only_up_to_its_limit() -> None:
    from convergence.platform.errors import Unavailable

    big = ThreadingHTTPServer(("127.0.0.1", 0), _Serving)
    threading.Thread(target=big.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{big.server_address[1]}/"
    try:
        assert netguard.fetch(url, limit=len(_Serving.body)) == _Serving.body
        with pytest.raises(Unavailable, match="larger than 1,000 bytes"):
            netguard.fetch(url, limit=1000)
    finally:
        big.shutdown()
        big.server_close()


class _Serving(BaseHTTPRequestHandler):
    body = b"checkpoint\n" * 1000

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


# --- the fuzz campaign: URLs through the check, through subscribe, and paths through a real delivery ----------

CAMPAIGN = {"inputs": 0, "accepted": 0, "subscribed": 0, "posted": 0}
HOSTS = ["127.0.0.1", "localhost", "LOCALHOST", "localhost.", "[::1]", "169.254.169.254", "10.0.0.1", "0", "0x7f.1",
         "2130706433", "017700000001", "[::ffff:10.0.0.1]", "[::ffff:7f00:1]", "[fe80::1%25eth0]", "127.1",
         "0177.0.0.1", "127.0.0.1.", "[::]", "[2002:7f00:1::1]", "[fec0::1]", "100.64.0.1", "[64:ff9b::a9fe:a9fe]",
         "8.8.8.8", "[2606:4700::1111]", "93.184.215.14", "example.invalid", "", "a" * 300, "127.0.0.1%00",
         "[::1]:80@8.8.8.8", "8.8.8.8#@127.0.0.1", "127.0.0.1\\@8.8.8.8"]


@st.composite
def _urls(draw):  # type: ignore[no-untyped-def]
    # weighted towards well-formed parts, so that many URLs reach the address check and some are accepted
    scheme = draw(st.sampled_from(["http"] * 4 + ["https"] * 3 + ["HTTPS", "hTtP", "ftp", "file", "gopher",
                                                                  "javascript", ""]))
    host = draw(st.one_of(
        st.sampled_from(HOSTS),
        st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
        st.ip_addresses(network="8.0.0.0/7").map(str), st.ip_addresses(network="2606:4700::/32").map(lambda ip: f"[{ip}]"),
        st.integers(0, 2**32 - 1).map(str),  # the decimal spelling of an IPv4 address
        st.text(max_size=40)))
    userinfo = "" if draw(st.integers(0, 9)) < 7 else draw(st.one_of(
        st.sampled_from(["user:pass@", "@", "a@b@", ":pass@", "%40@"]), st.text(max_size=10).map(lambda t: t + "@")))
    port = draw(st.sampled_from([""] * 6 + [":80", ":443", ":0", ":65536", ":-1", ":x", ":5432", ":08080", ": 80"]))
    path = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)
                if draw(st.integers(0, 9)) < 7 else st.text(max_size=20))
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


def _public(address: str) -> bool:
    """The oracle, written apart from the policy: a globally reachable unicast address, carrying no other."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    inner = [ip.ipv4_mapped, ip.sixtofour] if isinstance(ip, ipaddress.IPv6Address) else []
    return all(each.is_global and not each.is_multicast and not getattr(each, "is_site_local", False)
               for each in [ip, *(i for i in inner if i is not None)])


def _accepted_safely(url: str, target: netguard.Target) -> None:
    from urllib.parse import urlsplit

    CAMPAIGN["accepted"] += 1
    assert "@" not in urlsplit(url).netloc and target.scheme in ("http", "https")
    resolved = {info[4][0] for info in _offline_getaddrinfo(target.host, target.port)}
    assert target.address in resolved and all(_public(a) for a in resolved), url


def _one_clear_error(url: str, call) -> None:  # type: ignore[no-untyped-def]
    """``call(url)`` is accepted for a public address or refused with one line of the error tree."""
    CAMPAIGN["inputs"] += 1
    try:
        target = call(url)
    except (InvalidInput, PolicyViolation) as exc:
        assert "\n" not in exc.message and "pass@" not in exc.message
        return
    except ConvergenceError as exc:  # pragma: no cover - any other error class is a finding
        pytest.fail(f"{url!r}: {type(exc).__name__}")
    _accepted_safely(url, target if isinstance(target, netguard.Target) else netguard.check_url(url))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(url=_urls())
def _check_campaign(url: str) -> None:
    _one_clear_error(url, netguard.check_url)


def _subscribed(url: str) -> str:
    with session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url=url, events=["*"], secret="s")
    CAMPAIGN["subscribed"] += 1
    return url


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(url=_urls())
def _subscribe_campaign(url: str) -> None:
    _one_clear_error(url, _subscribed)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(suffix=st.text(max_size=30))
def _post_campaign(base: str, suffix: str) -> None:
    CAMPAIGN["inputs"] += 1
    status, error = netguard.post(base + suffix, b"{}", {}, 2.0)  # a failure is an answer, never an exception
    if status == 200:
        CAMPAIGN["posted"] += 1
        assert error is None
    else:  # a suffix that makes it no URL (a space, a control character): refused before anything is sent
        assert status is None and error and "\n" not in error and error.startswith("a URL must be"), (suffix, error)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_fuzzed_urls_are_accepted_only_when_public_or_refused_with_one_clear_error(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    started = time.perf_counter()
    CAMPAIGN.update(inputs=0, accepted=0, subscribed=0, posted=0)
    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", LOOPBACK)  # paths through a real delivery to loopback
    get_settings.cache_clear()
    receiver = Recorder()
    try:
        _post_campaign(receiver.url)
    finally:
        receiver.close()
    monkeypatch.delenv("CVG_WEBHOOK_ALLOW_NETWORKS")  # and the default policy for the URLs
    get_settings.cache_clear()
    monkeypatch.setattr(socket, "getaddrinfo", _offline_getaddrinfo)
    _check_campaign()
    _subscribe_campaign()
    with session_scope(write=False) as s:  # nothing internal was stored
        assert all(_public(netguard.check_url(sub["url"]).address) for sub in gov.list_subscriptions(session=s))
    print(f"URL campaign: {CAMPAIGN['inputs']} inputs ({CAMPAIGN['accepted']} accepted, all public; "
          f"{CAMPAIGN['subscribed']} subscribed; {CAMPAIGN['posted']} paths delivered) "
          f"in {time.perf_counter() - started:.1f} s")
    assert CAMPAIGN["inputs"] >= 2000 and CAMPAIGN["posted"] > 0 and CAMPAIGN["subscribed"] > 0
    get_settings.cache_clear()
