"""The cvg CLI end to end, through the real console script, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from convergence import governance as gov
from tests.platform.cli.conftest import assert_one_line_error


def test_help_teaches(cvg) -> None:
    top = cvg("--help")
    assert top.code == 0 and all(word in top.out for word in ("db", "models", "audit", "doctor", "demo"))
    sub = cvg("models", "approve", "--help")
    assert sub.code == 0 and "registrant" in sub.out and "--reason" in sub.out


def test_the_whole_governance_story_through_the_cli(db_url: str, sandbox: str, cvg, model_file: Path, evidence_file: Path,
                                                    tmp_path: Path) -> None:
    reg = cvg("models", "register", "alpha", "--artifact", str(model_file), "--family", "trading", "--role",
              "student", "--metrics", '{"ic": 0.05}', "--as", "solo", "--json")
    assert reg.code == 0, reg.err
    vid = str(reg.json["id"])
    assert reg.json["stage"] == "candidate" and reg.json["created_by"] == "solo"

    assert cvg("models", "validate", vid, "--evidence", str(evidence_file), "--as", "carol").code == 0
    # solo holds the approver role too: separation of duties on the principal, not the role, refuses it
    assert_one_line_error(cvg("models", "approve", vid, "--reason", "mine", "--as", "Solo"), 4,
                          "rule approver-not-registrant")
    approved = cvg("models", "approve", vid, "--reason", "policy met", "--json", env={"CVG_ACTOR": "alice"})
    assert approved.code == 0 and approved.json["stage"] == "approved"
    assert cvg("models", "promote", vid, "--as", "ops").code == 0

    listed = cvg("models", "list", "--json")
    assert [(m["id"], m["stage"]) for m in listed.json] == [(int(vid), "production")]
    table = cvg("models", "list")
    assert "alpha" in table.out and "production" in table.out

    lineage = cvg("models", "lineage", vid, "--json").json
    assert [a["actor"] for a in lineage["approvals"]] == ["carol", "alice"]
    assert "approved by alice" in cvg("models", "lineage", vid).out
    history = cvg("models", "history", "alpha", "--json").json
    assert [h["to"] for h in history] == ["candidate", "validated", "approved", "production"]
    at = cvg("models", "at", "alpha", "--time", "now", "--json")
    assert at.json["id"] == int(vid)

    refused = cvg("audit", "query", "--action", "model.approve_refused", "--json").json
    assert [(e["actor"], e["subject_id"]) for e in refused] == [("solo", vid)]
    assert refused[0]["payload"]["rule"] == "approver-not-registrant"
    assert refused[0]["payload"]["principal"]["auth"] == "sandbox" and refused[0]["payload"]["principal"]["sandbox"]
    assert len(cvg("audit", "query", "--subject", f"model_version:{vid}", "--json").json) == 5

    cp = cvg("audit", "checkpoint", "--as", "auditor", "--json")
    assert cp.code == 0 and len(cp.json["head_hash"]) == 64
    verified = cvg("audit", "verify", "--json")
    assert verified.code == 0 and verified.json["ok"] and verified.json["head_seq"] == cp.json["seq"] + 1
    assert cvg("audit", "verify", "--from-checkpoint", str(cp.json["id"]), "--json").json["checked"] == 1

    export = tmp_path / "audit.jsonl"
    assert cvg("audit", "export", "--format", "jsonl", "--output", str(export)).code == 0
    offline = subprocess.run([sys.executable, "-I", str(Path(gov.__file__).with_name("auditor.py")), str(export)],
                             capture_output=True, text=True)
    assert offline.returncode == 0 and "chain intact" in offline.stdout
    stdout_export = cvg("audit", "export", "--format", "csv")
    assert stdout_export.out.splitlines()[0].startswith("seq,ts,actor,action")


def test_bad_input_is_one_line_and_an_exit_code(db_url: str, sandbox: str, cvg, model_file: Path) -> None:
    assert_one_line_error(cvg("models", "show", "99"), 3, "no model version with id 99")
    assert_one_line_error(cvg("models", "at", "alpha", "--time", "last tuesday"), 2, "is not a time")
    assert_one_line_error(cvg("audit", "query", "--since", "13/45/2026"), 2, "is not a time")
    assert_one_line_error(cvg("models", "register", "a", "--artifact", str(model_file), "--family", "trading",
                              "--role", "student", "--metrics", "{oops", "--as", "bob"), 2, "not valid JSON")
    assert_one_line_error(cvg("models", "register", "a", "--artifact", str(model_file), "--family", "trading",
                              "--role", "student"), 4, "needs the registrant or validator role")
    assert_one_line_error(cvg("audit", "query", "--subject", "nocolon"), 2, "TYPE:ID")
    assert_one_line_error(cvg("audit", "export", "--format", "xml"), 2, "format: Input should be 'jsonl'")
    assert_one_line_error(cvg("db", "downgrade", "base"), 2, "--yes")
    usage = cvg("models", "show", "not-a-number")
    assert usage.code == 2 and "Traceback" not in usage.err


def test_unreachable_database(cvg, tmp_path: Path) -> None:
    env = {"CVG_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none", "CVG_HOME": str(tmp_path)}
    assert_one_line_error(cvg("models", "list", env=env), 6, "is unavailable")
    doctor = cvg("doctor", "--json", env=env)
    assert doctor.code == 6
    database = next(c for c in doctor.json if c["name"] == "database")
    assert not database["ok"] and database["fix"]


def test_database_not_at_head(empty_db_url: str, cvg) -> None:
    assert_one_line_error(cvg("models", "list"), 6, "run `cvg db upgrade`")
    doctor = cvg("doctor", "--json")
    assert doctor.code == 6 and next(c for c in doctor.json if c["name"] == "database")["fix"] == "run `cvg db upgrade`"
    up = cvg("db", "upgrade", "--json")
    assert up.code == 0 and up.json["at_head"]
    assert cvg("db", "check", "--json").json["at_head"]
    assert cvg("db", "current", "--json").json["current"] == up.json["head"]
    ok = cvg("doctor", "--json")
    assert ok.code == 0 and all(c["ok"] for c in ok.json if c["required"])
    assert {c["name"] for c in ok.json} >= {"database", "ray", "gpu", "helm"}
    down = cvg("db", "downgrade", "base", "--yes", "--json")
    assert down.code == 0 and down.json["current"] is None


def test_verify_exits_5_and_names_the_seq(db_url: str, sandbox: str, backend: str, cvg, model_file: Path, raw_sql) -> None:
    for _ in range(3):
        assert cvg("models", "register", "a", "--artifact", str(model_file), "--family", "trading", "--role",
                   "teacher", "--as", "bob").code == 0
    target = cvg("audit", "verify", "--json").json["head_seq"] - 1
    if backend == "postgres":
        raw_sql("ALTER TABLE audit_events DISABLE TRIGGER USER")
    else:
        raw_sql("DROP TRIGGER audit_events_no_update")
    raw_sql(f"UPDATE audit_events SET actor = 'mallory' WHERE seq = {target}")
    assert_one_line_error(cvg("audit", "verify"), 5, f"broken at seq {target}: hash mismatch")
    data = json.loads(cvg("audit", "verify", "--json").out)
    assert data["first_bad_seq"] == target and not data["ok"]


def test_doctor_reports_the_language_corpora(db_url: str, sandbox: str, cvg, tmp_path: Path) -> None:
    present = next(c for c in cvg("doctor", "--json").json if c["name"] == "language data")
    assert present["ok"] and "convergence-data" in present["detail"]
    gone = cvg("doctor", "--json", env={"CVG_CORPUS_DIR": str(tmp_path)})
    missing = next(c for c in gone.json if c["name"] == "language data")
    assert not missing["ok"] and "State of the Union" in missing["detail"] and "bootstrap" in missing["fix"]


def test_a_home_without_a_database_is_said_not_silently_filled(cvg, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A new shell whose CVG_HOME holds nothing: every command says where it looked and how to start, and
    creates nothing; `cvg db upgrade` (or the demo) is what creates the database."""
    monkeypatch.delenv("CVG_DATABASE_URL", raising=False)
    env = {"CVG_HOME": str(tmp_path / "new"), "CVG_DATABASE_URL": ""}
    db = tmp_path / "new" / "convergence.db"
    for args in (("models", "list"), ("audit", "verify"), ("whoami",)):
        assert_one_line_error(cvg(*args, env=env), 6, f"there is no database at {db}: nothing was created")
    doctor = cvg("doctor", "--json", env=env)
    assert doctor.code == 6 and next(c for c in doctor.json if c["name"] == "database")["detail"].startswith(
        f"no database at {db}")
    assert not db.exists()
    assert cvg("db", "upgrade", env=env).code == 0 and db.exists()
    assert cvg("db", "check", "--json", env=env).json["at_head"]


def test_version_says_what_is_installed(cvg) -> None:
    from importlib.metadata import version

    done = cvg("--version")
    assert done.code == 0 and done.out.strip() == f"cvg (convergence) {version('convergence')}"
