"""`cvg drift` and `cvg webhooks` through the real console script."""

from __future__ import annotations

from tests.platform.cli.conftest import assert_one_line_error


def test_drift_and_webhook_errors(db_url: str, sandbox: str, cvg) -> None:
    assert_one_line_error(cvg("drift", "check", "ghost", "--as", "mon"), 3, "no model called 'ghost'")
    assert_one_line_error(cvg("drift", "check", "ghost", "--as", "mon", "--window", "soon"), 2, "is not a time")
    assert_one_line_error(cvg("drift", "show", "42"), 3, "no drift report with id 42")
    assert_one_line_error(cvg("webhooks", "subscribe", "not-a-url", "--as", "ada"), 2, "a URL must be http(s)://")
    assert_one_line_error(cvg("webhooks", "subscribe", "http://127.0.0.1:9/hook", "--as", "ops"), 4,
                          "needs the admin role")
    assert_one_line_error(cvg("webhooks", "test", "http://127.0.0.1:9/x", "--secret", "s", "--as", "ada"), 6,
                          "did not accept")
    assert_one_line_error(cvg("webhooks", "redeliver", "5", "--as", "ops"), 3, "no webhook delivery with id 5")
    sub = cvg("webhooks", "subscribe", "http://127.0.0.1:9/hook", "--events", "drift.alert,budget.alert", "--as",
              "ada", "--json")
    assert sub.code == 0 and sub.json["events"] == ["budget.alert", "drift.alert"] and len(sub.json["secret"]) == 64
    assert cvg("webhooks", "list", "--json").json == []
    listed = cvg("webhooks", "subscriptions", "--json").json
    assert [(s["id"], s["url"]) for s in listed] == [(sub.json["id"], "http://127.0.0.1:9/hook")]
    assert "secret" not in listed[0]
    assert_one_line_error(cvg("webhooks", "unsubscribe", "999", "--as", "ada"), 3, "no webhook subscription")
    assert cvg("webhooks", "unsubscribe", str(sub.json["id"]), "--as", "ada").code == 0
    assert cvg("webhooks", "deliver", "--json", "--as", "ops").json == {"delivered": 0, "retry": 0, "dead": 0}
