"""`cvg models deploy / rollout / rollback / at` through the real console script: a rollout is started with its
guards, shown with what replicas measured, refused where the rules say so (one line and an exit code each),
visible in the split at an instant, and ended by rollback; `cvg serve --version N` serves exactly N."""

from __future__ import annotations

from pathlib import Path

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.platform.cli.conftest import assert_one_line_error
from tests.serving.conftest import register_trading

NAME = "es-trading-student"


def test_a_canary_from_start_to_rollback(db_url: str, sandbox: str, cvg, tmp_path: Path, evidence_file: Path) -> None:
    prod = register_trading(tmp_path, evidence_file)
    candidate = register_trading(tmp_path, evidence_file, stage="candidate", seed=1)
    newcomer = register_trading(tmp_path, evidence_file, stage="approved", seed=2)
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--as", "ops"), 2, "one of --shadow, --canary PCT")
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--shadow", "--canary", "5", "--as", "ops"), 2,
                          "one of --shadow, --canary PCT")
    assert_one_line_error(cvg("models", "deploy", str(candidate), "--canary", "10", "--as", "ops"), 4,
                          "is candidate; only an approved version can be deployed")
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--canary", "10", "--as", "quant"), 4,
                          "needs the operator role")
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--canary", "0", "--as", "ops"), 2,
                          "a canary needs a share of requests")
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--canary", "10", "--max-error-rate", "7",
                              "--as", "ops"), 2, "guard max_error_rate must be a number ≥ 0 and ≤ 1")
    assert_one_line_error(cvg("models", "rollout", NAME), 3, "has no active shadow or canary")

    started = cvg("models", "deploy", str(newcomer), "--canary", "10", "--max-disagreement", "0.1",
                  "--min-requests", "5", "--reason", "try it on a tenth", "--as", "ops", "--json")
    assert started.code == 0, started.err
    body = started.json
    assert (body["mode"], body["percent"], body["status"], body["production_id"]) == ("canary", 10.0, "active", prod)
    assert body["guards"]["max_disagreement"] == 0.1 and body["guards"]["max_error_rate"] == 0.02
    shown = cvg("models", "rollout", NAME, "--json")
    assert shown.code == 0 and shown.json["measured"]["requests"] == 0 and shown.json["promotable"] is False
    table = cvg("models", "rollout", NAME)
    assert "canary of version" in table.out and "not promotable yet: too few answers" in table.out
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--promote", "--as", "ops"), 4,
                          "held for 0 of the 5 answers")
    assert_one_line_error(cvg("models", "deploy", str(newcomer), "--promote", "--max-p99-ms", "3", "--as", "ops"), 2,
                          "guards are set when the shadow or canary starts")
    at = cvg("models", "at", NAME, "--time", "now")
    assert at.code == 0 and f"split: production 90 %, version {newcomer} as canary 10 %" in at.out
    assert cvg("models", "at", NAME, "--time", "now", "--json").json["split"][1]["deployment_id"] == body["id"]

    ended = cvg("models", "rollback", NAME, "--reason", "not today", "--as", "ops")
    assert ended.code == 0 and f"canary of version {newcomer}" in ended.out and "rolled back by ops" in ended.out
    # a bare rollback right after a rollout ended asks which one was meant (a guard may have ended it first)
    assert_one_line_error(cvg("models", "rollback", NAME, "--as", "ops"), 4, "nothing is being rolled out now")
    assert_one_line_error(cvg("models", "rollback", NAME, "--rollout", "--as", "ops"), 3,
                          "has no active shadow or canary")
    assert_one_line_error(cvg("models", "rollback", NAME, "--production", "--as", "ops"), 4,
                          "is the first production version")
    assert_one_line_error(cvg("models", "rollback", NAME, "--production", "--rollout", "--as", "ops"), 2,
                          "exclude each other")
    events = cvg("audit", "query", "--action", "deployment.*", "--json").json
    assert [e["action"] for e in events] == ["deployment.started", "deployment.rolled_back"]
    assert events[0]["payload"]["reason"] == "try it on a tenth" and events[1]["payload"]["reason"] == "not today"
    with session_scope(write=False) as s:
        assert gov.get_model(session=s, version_id=prod).stage == "production"


def test_serve_follows_rollouts_unless_pinned_to_a_version(db_url: str, sandbox: str, cvg, tmp_path: Path,
                                                           evidence_file: Path) -> None:
    live = register_trading(tmp_path, evidence_file)
    follows = cvg("serve", "trading", "--dry-run", "--float")
    pinned = cvg("serve", "trading", "--version", str(live), "--dry-run")
    assert follows.code == pinned.code == 0, (follows.err, pinned.err)
    assert follows.json["env"]["CVG_SERVE_FOLLOW_ROLLOUTS"] == "true"
    assert pinned.json["env"]["CVG_SERVE_FOLLOW_ROLLOUTS"] == "false"
