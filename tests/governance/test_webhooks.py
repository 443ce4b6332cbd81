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
    shown = [gov.delivery_to_dict(d) for d in _deliveries()]  # what `cvg webhooks list` shows
    assert all(d["next_attempt_at"] is None and d["delivered_at"] for d in shown)  # delivered: nothing is next


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


def _stored_secret() -> str:
    with session_scope(write=False) as s:
        return s.execute(select(gov.WebhookSubscription.secret)).scalar_one()


def _use_key(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    if key is None:
        monkeypatch.delenv("CVG_SECRET_KEY", raising=False)
    else:
        monkeypatch.setenv("CVG_SECRET_KEY", key)
    get_settings.cache_clear()


def _reconciled() -> bool:
    with session_scope(write=False) as s:
        return gov.reconcile(session=s) is None


def test_secrets_are_sealed_at_rest_and_still_sign(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.governance import _secrets

    _use_key(monkeypatch, "a long random key from a secret store")
    receiver = Receiver(free_port()).start()
    try:
        _subscribe(receiver.url)
        _alerts(1)
        assert gov.deliver_due()["delivered"] == 1 and receiver.bad_signatures == 0  # the real secret signed it
    finally:
        receiver.stop()
    stored = _stored_secret()
    assert stored.startswith("enc:v1:") and SECRET not in stored  # the database column is not the plaintext
    with session_scope(write=False) as s:
        assert all(SECRET not in str(e.payload)
                   for e in s.execute(select(gov.AuditEvent)).scalars())
    _use_key(monkeypatch, "another key altogether, from a secret store")
    with pytest.raises(IntegrityError, match="cannot be opened with this key"):
        _secrets.unseal(stored)
    assert _secrets.unseal("legacy-plain") == "legacy-plain"  # rows from before sealing still read
    assert _secrets.unseal(_secrets.seal("x" * 100)) == "x" * 100 and len(_secrets.seal("x" * 100)) <= 200
    get_settings.cache_clear()


def test_without_a_key_the_secret_is_sealed_with_a_0600_key_file_in_home(db_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _use_key(monkeypatch, None)
    _subscribe("http://127.0.0.1:9/hooks")
    key_file = get_settings().home / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and _stored_secret().startswith("enc:v1:")


def test_the_secret_is_shown_once_and_never_listed(db_url: str) -> None:
    with session_scope() as s:
        sub = gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/h", events=["*"])
        shown = sub.plain_secret
    with session_scope(write=False) as s:
        listed = gov.list_subscriptions(session=s, include_inactive=True)
    assert len(shown) == 64 and shown not in str(listed) and "secret" not in listed[0]
    assert shown not in _stored_secret()


def test_a_key_file_replaced_by_cvg_secret_key_still_opens_until_resealed(adopted: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Following `cvg doctor` (set CVG_SECRET_KEY) must not lose the secrets the key file sealed."""
    _use_key(monkeypatch, None)
    receiver = Receiver(free_port()).start()
    try:
        _subscribe(receiver.url)
        before = _stored_secret()
        _use_key(monkeypatch, "the key from the secret store now")
        _alerts(1)
        assert gov.deliver_due()["delivered"] == 1 and receiver.bad_signatures == 0  # opened with the old file
        with session_scope() as s:
            assert gov.reseal_secrets(session=s, principal=person("ada")) == {"resealed": [1], "unopenable": []}
        with session_scope() as s:  # nothing left to do
            assert gov.reseal_secrets(session=s, principal=person("ada")) == {"resealed": [], "unopenable": []}
        (get_settings().home / "secret.key").unlink()
        _alerts(1)
        assert gov.deliver_due()["delivered"] == 1 and receiver.bad_signatures == 0  # the new key alone
    finally:
        receiver.stop()
    assert _stored_secret() != before and _reconciled()
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="webhook.secret_resealed")
    assert event.actor == "ada" and SECRET not in event.payload


def test_only_an_admin_reseals(db_url: str) -> None:
    with session_scope() as s, pytest.raises(PolicyViolation, match="admin"):
        gov.reseal_secrets(session=s, principal=person("ops"))


def test_a_secret_no_key_here_opens_spends_no_attempt(db_url: str, monkeypatch: pytest.MonkeyPatch,
                                                      fast_retries: None) -> None:
    """A pod without the key (a misconfigured CronJob) leaves the delivery, leased, to one with it."""
    _use_key(monkeypatch, "the right key")
    receiver = Receiver(free_port()).start()
    try:
        _subscribe(receiver.url)
        _alerts(1)
        _use_key(monkeypatch, "the wrong key")
        assert gov.deliver_due() == {"delivered": 0, "retry": 1, "dead": 0}
        [d] = _deliveries()
        assert (d.status, d.attempts, d.locked_until is not None) == ("pending", 0, True)
        assert "cannot be opened" in d.last_error and not receiver.requests
        assert gov.deliver_due() == {"delivered": 0, "retry": 0, "dead": 0}  # leased: no busy loop
        _use_key(monkeypatch, "the right key")
        time.sleep(1.1)  # past the lease
        assert gov.deliver_due()["delivered"] == 1 and receiver.bad_signatures == 0
    finally:
        receiver.stop()


def test_migration_0010_seals_plain_secrets_and_the_ledger_still_reconciles(
        empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import insert

    from convergence.governance import _models
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines, get_engine, utcnow

    _use_key(monkeypatch, "the key from the secret store")
    migrate.upgrade("0008")
    with get_engine().begin() as conn:  # a subscription as the code before sealing stored it
        conn.execute(insert(_models.WebhookSubscription.__table__).values(
            url="http://127.0.0.1:9/h", secret=SECRET, event_types=["*"], format="generic", active=True,
            created_at=utcnow(), created_by="ada"))
    dispose_engines()
    migrate.upgrade()
    sealed = _stored_secret()
    assert sealed.startswith("enc:v1:") and SECRET not in sealed and _reconciled()
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="webhook.secret_resealed")
        assert event.actor == "system:migration" and gov.verify(session=s).ok
    from convergence.governance._secrets import unseal

    assert unseal(sealed) == SECRET
    migrate.downgrade("0009")
    from sqlalchemy.orm import Session

    with get_engine().connect() as conn:  # at 0009, below the schema the services accept
        assert conn.execute(select(_models.WebhookSubscription.secret)).scalar_one() == SECRET
        assert gov.reconcile(session=Session(bind=conn)) is None  # opened again, and recorded
    dispose_engines()
    migrate.upgrade()
    assert _stored_secret().startswith("enc:v1:") and _reconciled()
    get_settings.cache_clear()
