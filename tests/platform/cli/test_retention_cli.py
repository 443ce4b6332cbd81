"""`cvg retention` through the real console script: show, set under the minimum refused in one line, a dry
run that deletes nothing, apply by an operator, JSON for scripts."""

from __future__ import annotations

from tests.platform.cli.conftest import assert_one_line_error


def test_show_set_and_apply(db_url: str, sandbox: str, cvg) -> None:
    shown = cvg("retention", "show", "--json")
    assert shown.code == 0 and {r["class"] for r in shown.json} == {"prediction_log", "drift_reports", "usage",
                                                                     "artifacts"}
    table = cvg("retention", "show")
    assert table.code == 0 and "prediction_log" in table.out and "default" in table.out
    assert_one_line_error(cvg("retention", "set", "usage", "30", "--reason", "cheaper", "--as", "ada"), 2,
                          "at least 183 days")
    assert_one_line_error(cvg("retention", "set", "usage", "400", "--reason", "policy", "--as", "ops"), 4,
                          "needs the admin role")
    assert_one_line_error(cvg("retention", "set", "audit_events", "4000", "--reason", "x", "--as", "ada"), 2,
                          "should be 'prediction_log'")
    done = cvg("retention", "set", "usage", "400", "--reason", "desk policy", "--as", "ada", "--json")
    assert done.code == 0 and done.json["days"] == 400 and done.json["minimum_days"] == 183
    dry = cvg("retention", "apply", "--dry-run", "--json")
    assert dry.code == 0 and dry.json["dry_run"] and dry.json["classes"]["usage"]["days"] == 400
    applied = cvg("retention", "apply", "--as", "ops")
    assert applied.code == 0 and "deleted" in applied.out and "audit events are never" in applied.out
    events = cvg("audit", "query", "--action", "retention.applied", "--json").json
    assert [e["actor"] for e in events] == ["ops"]
