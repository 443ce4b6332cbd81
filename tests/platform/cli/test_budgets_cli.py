"""`cvg budgets` through the real console script."""

from __future__ import annotations

import datetime as dt

from tests.platform.cli.conftest import assert_one_line_error

MONTH = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")


def test_budget_lifecycle_and_errors(db_url: str, sandbox: str, cvg, model_file) -> None:
    # a first registration creates the default project
    assert cvg("models", "register", "m", "--artifact", str(model_file), "--family", "trading", "--role", "student",
               "--as", "quant").code == 0
    created = cvg("budgets", "set", "--metric", "kwh", "--period", MONTH, "--hard", "2", "--soft", "1", "--as", "fin",
                  "--json")
    assert created.code == 0 and created.json["pending_change_id"] is None
    raised = cvg("budgets", "set", "--metric", "kwh", "--period", MONTH, "--hard", "5", "--as", "fin", "--json")
    change = raised.json["pending_change_id"]
    assert raised.json["hard"] == 2.0 and change
    assert_one_line_error(cvg("budgets", "approve", str(change), "--as", "fin"), 4, "cannot approve")
    assert cvg("budgets", "approve", str(change), "--as", "cfo").code == 0
    shown = cvg("budgets", "show", "--json").json
    assert shown["budgets"][0]["hard"] == 5.0 and shown["budgets"][0]["soft"] == 1.0
    assert "used / hard" in cvg("budgets", "show").out
    assert cvg("budgets", "report", "--by", "step", "--json").json == []
    assert_one_line_error(cvg("budgets", "set", "--metric", "kwh", "--period", "2026-13", "--hard", "1", "--as", "fin"),
                          2, "period '2026-13' is not valid")
    assert_one_line_error(cvg("budgets", "set", "--metric", "kwh", "--period", MONTH, "--hard", "0", "--as", "fin"),
                          2, "hard limit must be positive")
    assert_one_line_error(cvg("budgets", "set", "--project", "ghost", "--metric", "kwh", "--period", MONTH, "--hard",
                              "1", "--as", "fin"), 3, "no project called 'ghost'")
    assert_one_line_error(cvg("budgets", "report", "--by", "colour"), 2, "by: Input should be 'run'")
