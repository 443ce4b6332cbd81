"""`cvg serve` through the real console script: what may serve is decided before BentoML starts (one
line and an exit code for a refusal), and the kill switch commands are audited."""

from __future__ import annotations

from pathlib import Path

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.platform.cli.conftest import assert_one_line_error
from tests.serving.conftest import register_trading


def test_only_approved_versions_with_intact_artifacts_may_serve(db_url: str, sandbox: str, cvg, tmp_path: Path,
                                                                evidence_file: Path) -> None:
    assert_one_line_error(cvg("serve", "trading", "--dry-run"), 3, "no model called 'es-trading-student'")
    candidate = register_trading(tmp_path, evidence_file, stage="candidate")
    assert_one_line_error(cvg("serve", "trading", "--dry-run"), 4, "has no version in production (stages: candidate)")
    assert_one_line_error(cvg("serve", "trading", "--version", str(candidate), "--dry-run"), 4,
                          f"version {candidate} (es-trading-student v1) is candidate")
    live = register_trading(tmp_path, evidence_file)
    ok = cvg("serve", "trading", "--dry-run", "--float")
    assert ok.code == 0, ok.err
    assert ok.json["version_id"] == live and ok.json["env"]["CVG_SERVE_VERSION"] == str(live)
    assert ok.json["command"][1:3] == ["serve", "convergence.serving._service:Trading"]
    assert_one_line_error(cvg("serve", "language", "--version", str(live), "--dry-run"), 2, "is a trading model")
    with session_scope() as s:
        path = Path(gov.get_model(session=s, version_id=live).artifact_uri.removeprefix("file://"))
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"tampered")
    assert_one_line_error(cvg("serve", "trading", "--dry-run"), 5, "has SHA-256")
    register_trading(tmp_path, evidence_file)  # promoting a new version retires the old one
    assert_one_line_error(cvg("serve", "trading", "--version", str(live), "--dry-run"), 4, "is retired")


def test_kill_resume_status(db_url: str, sandbox: str, cvg, tmp_path: Path, evidence_file: Path) -> None:
    register_trading(tmp_path, evidence_file)
    assert_one_line_error(cvg("serve", "kill", "nope", "--reason", "x", "--as", "risk"), 3, "no model called 'nope'")
    assert_one_line_error(cvg("serve", "kill", "es-trading-student", "--reason", " ", "--as", "risk"), 2,
                          "needs a reason")
    assert_one_line_error(cvg("serve", "resume", "es-trading-student", "--as", "risk"), 2, "is not killed")
    assert_one_line_error(cvg("serve", "kill", "es-trading-student", "--reason", "x", "--safe-output", "9.99e37",
                              "--as", "risk"), 2, "unexpected extra argument")  # the value is never chosen here
    assert_one_line_error(cvg("serve", "kill", "es-trading-student", "--reason", "x", "--as", "ops"), 4,
                          "needs the risk role")
    killed = cvg("serve", "kill", "es-trading-student", "--reason", "fat finger", "--safe-output",
                 "--as", "risk", "--json")
    assert killed.code == 0 and {k: killed.json[k] for k in ("model", "killed", "reason", "safe_output")} == {
        "model": "es-trading-student", "killed": True, "reason": "fat finger", "safe_output": 0.0}
    status = cvg("serve", "status", "--json").json["kill_switches"]
    assert status[0]["killed"] and status[0]["actor"] == "risk"
    assert cvg("serve", "resume", "es-trading-student", "--as", "risk2").code == 0
    assert not cvg("serve", "status", "--json").json["kill_switches"][0]["killed"]
    events = cvg("audit", "query", "--subject", "model:es-trading-student", "--json").json
    assert [e["action"] for e in events][-2:] == ["serving.killed", "serving.resumed"]
