"""`cvg webhooks` under the network policy and with sealed secrets, through the real console script."""

from __future__ import annotations

import socket
import threading

from tests.platform.cli.conftest import assert_one_line_error

DEFAULT_POLICY = {"CVG_WEBHOOK_ALLOW_NETWORKS": ""}  # what an installation has: no internal network admitted


def test_internal_addresses_and_credentials_are_one_line_refusals(db_url: str, sandbox: str, cvg) -> None:
    metadata = cvg("webhooks", "subscribe", "http://169.254.169.254/latest/", "--as", "ada", env=DEFAULT_POLICY)
    assert_one_line_error(metadata, 4, "refused by policy: 169.254.169.254 is link-local")
    assert_one_line_error(cvg("webhooks", "test", "http://[::1]:22/", "--secret", "s", "--as", "ada",
                              env=DEFAULT_POLICY), 4, "refused by policy: ::1 is loopback")
    creds = cvg("webhooks", "subscribe", "https://admin:hunter2@hooks.example/x", "--as", "ada")
    assert_one_line_error(creds, 2, "credentials inside a URL are refused")
    assert "hunter2" not in creds.err + creds.out
    events = cvg("audit", "query", "--json")
    assert events.code == 0 and events.json and "hunter2" not in events.out


def test_webhooks_test_says_the_same_of_a_closed_port_and_a_non_http_one(db_url: str, sandbox: str, cvg) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    open_port = listener.getsockname()[1]

    def greet() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"+OK redis-like banner\r\n")
        conn.close()

    threading.Thread(target=greet, daemon=True).start()
    try:
        a = cvg("webhooks", "test", f"http://127.0.0.1:{closed_port}/", "--secret", "s", "--as", "ada")
        b = cvg("webhooks", "test", f"http://127.0.0.1:{open_port}/", "--secret", "s", "--as", "ada")
    finally:
        listener.close()
    assert_one_line_error(a, 6, "delivery failed (connection error)")
    assert a.err.replace(str(closed_port), "PORT") == b.err.replace(str(open_port), "PORT")


def test_the_secret_is_shown_once_then_only_sealed_and_resealed(db_url: str, sandbox: str, cvg) -> None:
    sub = cvg("webhooks", "subscribe", "http://127.0.0.1:9/hook", "--secret", "my-receivers-secret", "--as", "ada")
    assert sub.code == 0 and "my-receivers-secret" in sub.out and "not shown again" in sub.out
    for shown in (cvg("webhooks", "subscriptions"), cvg("webhooks", "subscriptions", "--json"),
                  cvg("audit", "query", "--json")):
        assert shown.code == 0 and "my-receivers-secret" not in shown.out
    assert cvg("webhooks", "reseal", "--as", "ada").out.startswith("0 webhook secrets sealed")
    moved = cvg("webhooks", "reseal", "--as", "ada", "--json", env={"CVG_SECRET_KEY": "from the secret store"})
    assert moved.code == 0 and moved.json == {"resealed": [1], "unopenable": []}
    assert_one_line_error(cvg("webhooks", "reseal", "--as", "ops"), 4, "needs the admin role")
