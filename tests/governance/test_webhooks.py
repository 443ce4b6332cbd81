"""Webhooks against a real HTTP receiver on localhost: down then up, SIGKILLed deliverer, signatures,
replays, dead-letter and redelivery."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import IntegrityError, InvalidInput, PolicyViolation
from convergence.platform.settings import get_settings
from tests.people import person

SECRET = "receiver-secret"


class Receiver:
    """A real HTTP receiver that verifies signatures and processes each event id once (idempotency)."""

    def __init__(self, port: int, secret: str = SECRET, status: int = 200, hang_s: float = 0.0) -> None:
        self.port, self.secret, self.status, self.hang_s = port, secret, status, hang_s
        self.requests: Counter[str] = Counter()
        self.processed: list[str] = []
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                event_id = self.headers["Idempotency-Key"]
                receiver.requests[event_id] += 1
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                if not gov.verify_signature(receiver.secret, dict(self.headers), body):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif receiver.status != 200:
                    self.send_response(receiver.status)
                else:
                    if event_id not in receiver.processed:
                        assert json.loads(body)["id"] == event_id
                        receiver.processed.append(event_id)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_WEBHOOK_BACKOFF_S", "0.05")
    monkeypatch.setenv("CVG_WEBHOOK_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("CVG_WEBHOOK_LEASE_S", "1")
    monkeypatch.setenv("CVG_WEBHOOK_TIMEOUT_S", "3")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _subscribe(url: str) -> None:
    with session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url=url, events=["drift.alert"], secret=SECRET)


def _alerts(n: int) -> None:
    for i in range(n):
        with session_scope() as s:
            gov.enqueue(session=s, event_type="drift.alert", data={"alert_id": i, "message": f"column {i} drifted"})


def _deliveries() -> list[gov.WebhookDelivery]:
    with session_scope(write=False) as s:
        return list(s.execute(select(gov.WebhookDelivery).order_by(gov.WebhookDelivery.id)).scalars())


def test_alerts_raised_while_the_receiver_is_down_arrive_once_when_it_returns(db_url: str, fast_retries) -> None:
    port = free_port()
    _subscribe(f"http://127.0.0.1:{port}/hooks")
    _alerts(3)
    assert gov.deliver_due() == {"delivered": 0, "retry": 3, "dead": 0}  # connection refused
    assert all(d.status == "pending" and d.attempts == 1
               and d.last_error == "delivery failed (connection error)" for d in _deliveries())
    receiver = Receiver(port).start()
    try:
        time.sleep(0.2)  # past the first backoff
        total = gov.deliver_until_idle(deadline_s=10)
    finally:
        receiver.stop()
    assert total["delivered"] == 3 and receiver.bad_signatures == 0
    assert sorted(receiver.processed) == sorted(d.event_id for d in _deliveries())
    assert all(v == 1 for v in receiver.requests.values()) and {d.status for d in _deliveries()} == {"delivered"}


_DELIVERER = "from convergence import governance as gov\ngov.deliver_due()\n"


def test_a_sigkilled_deliverer_loses_nothing(db_url: str, fast_retries, tmp_path) -> None:
    receiver = Receiver(free_port(), hang_s=3.0).start()  # the first request hangs: the deliverer is mid-flight
    try:
        _subscribe(receiver.url)
        _alerts(1)
        script = tmp_path / "deliverer.py"
        script.write_text(_DELIVERER)
        proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy())
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.requests, "the deliverer never reached the receiver"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        [d] = _deliveries()
        assert d.status == "pending" and d.locked_until is not None  # claimed, never recorded
        receiver.hang_s = 0.0
        time.sleep(3.2)  # the lease (1 s) expires and the hung request finishes on the receiver's side
        assert gov.deliver_until_idle(deadline_s=10)["delivered"] == 1
    finally:
        receiver.stop()
    [d] = _deliveries()
    assert d.status == "delivered"
    assert receiver.processed == [d.event_id]  # processed once, though the receiver saw the same id twice
    assert receiver.requests[d.event_id] == 2


def test_the_signature_means_something(db_url: str, fast_retries) -> None:
    wrong = Receiver(free_port(), secret="not-the-secret").start()
    try:
        _subscribe(wrong.url)
        _alerts(1)
        gov.deliver_due()
    finally:
        wrong.stop()
    assert wrong.bad_signatures == 1 and wrong.processed == []
    [d] = _deliveries()
    assert d.last_status == 401 and d.status == "pending"
    body, now = d.body, time.time()
    fresh = {gov.TIMESTAMP_HEADER: str(int(now)), gov.SIGNATURE_HEADER: gov.sign(SECRET, int(now), body)}
    assert gov.verify_signature(SECRET, fresh, body, now=now)
    assert not gov.verify_signature(SECRET, fresh, body + " ", now=now)  # edited body
    old = int(now) - 3600  # a captured delivery replayed an hour later
    replay = {gov.TIMESTAMP_HEADER: str(old), gov.SIGNATURE_HEADER: gov.sign(SECRET, old, body)}
    assert not gov.verify_signature(SECRET, replay, body, now=now)


def test_dead_letter_after_max_attempts_then_redeliver(db_url: str, fast_retries) -> None:
    receiver = Receiver(free_port(), status=500).start()
    try:
        _subscribe(receiver.url)
        _alerts(1)
        for _ in range(20):
            gov.deliver_due()
            if _deliveries()[0].status == "dead":
                break
            time.sleep(0.3)
        [d] = _deliveries()
        assert d.status == "dead" and d.attempts == 4 and d.last_status == 500
        with session_scope(write=False) as s:
            assert [e.action for e in gov.query_events(session=s, action="webhook.*")][-1] == "webhook.dead_lettered"
            assert [x.id for x in gov.list_deliveries(session=s, failed=True)] == [d.id]
        receiver.status = 200
        with session_scope() as s:
            gov.redeliver(session=s, delivery_id=d.id, principal=person("ops"))
        assert gov.deliver_until_idle(deadline_s=10)["delivered"] == 1
        with pytest.raises(PolicyViolation, match="still pending"), session_scope() as s:
            _alerts(1)
            gov.redeliver(session=s, delivery_id=_deliveries()[-1].id, principal=person("ops"))
    finally:
        receiver.stop()
    assert receiver.processed == [d.event_id]  # the same event id as the dead attempts


def test_test_endpoint_and_bad_urls(db_url: str) -> None:
    receiver = Receiver(free_port()).start()
    try:
        assert gov.send_test(receiver.url, SECRET)["ok"] and len(receiver.processed) == 1
    finally:
        receiver.stop()
    down = gov.send_test(receiver.url, SECRET)
    assert not down["ok"] and down["status"] is None
    with pytest.raises(InvalidInput, match="http"), session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url="ftp://x", events=["drift.alert"])


def test_unsubscribe_stops_deliveries(db_url: str) -> None:
    with session_scope() as s:
        sub = gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/hooks", events=["*"], secret=SECRET)
        sub_id = sub.id
    _alerts(2)
    with session_scope() as s:
        gov.unsubscribe(session=s, subscription_id=sub_id, principal=person("ada"))
    _alerts(1)  # nothing is queued for an inactive subscription
    assert [d.status for d in _deliveries()] == ["dead", "dead"]
    assert gov.deliver_due() == {"delivered": 0, "retry": 0, "dead": 0}


def test_secrets_are_sealed_at_rest_and_still_sign(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.governance import _secrets

    receiver = Receiver(free_port()).start()
    try:
        _subscribe(receiver.url)
        _alerts(1)
        assert gov.deliver_due()["delivered"] == 1 and receiver.bad_signatures == 0  # the real secret signed it
    finally:
        receiver.stop()
    with session_scope(write=False) as s:
        stored = s.execute(select(gov.WebhookSubscription.secret)).scalar_one()
    assert stored.startswith("enc:v1:") and SECRET not in stored
    with session_scope(write=False) as s:
        assert all(SECRET not in str(e.payload)
                   for e in s.execute(select(gov.AuditEvent)).scalars())
    monkeypatch.setenv("CVG_SECRET_KEY", "another key altogether, from a secret store")
    get_settings.cache_clear()
    with pytest.raises(IntegrityError, match="cannot be opened with this key"):
        _secrets.unseal(stored)
    assert _secrets.unseal("legacy-plain") == "legacy-plain"  # rows from before sealing still read
    assert _secrets.unseal(_secrets.seal("x" * 100)) == "x" * 100 and len(_secrets.seal("x" * 100)) <= 200
    get_settings.cache_clear()

