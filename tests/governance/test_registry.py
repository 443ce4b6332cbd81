"""Registry with lineage: registration, datasets, parents, artifact integrity, crash atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.governance import AuditEvent, ModelVersion
from convergence.platform.db import session_scope
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound
from tests.artifacts import synthetic_artifact
from tests.governance.conftest import verify_now
from tests.people import person


def _register(model_file: Path, **kw):  # type: ignore[no-untyped-def]
    args = {"principal": person("bob"), "name": "alpha", "artifact": model_file, "family": "trading", "role": "teacher"}
    args.update(kw)
    with session_scope() as s:
        return gov.register_model(session=s, **args)


def test_register_records_version_lineage_and_audit(db_url: str, model_file: Path, tmp_path: Path) -> None:
    data = tmp_path / "ticks.csv"
    data.write_text("ts,price,volume\n1,100.0,3\n2,100.25,1\n3,100.0,7\n")
    teacher = _register(model_file, dataset=str(data), metrics={"ic": 0.05}, params={"layers": 4})
    student_file = synthetic_artifact(tmp_path / "student.safetensors")
    student = _register(student_file, name="alpha-student", role="student", parent_id=teacher.id,
                        dataset=str(data))
    assert (teacher.version, teacher.stage, student.parent_id) == (1, "candidate", teacher.id)
    assert teacher.artifact_sha256 == gov.sha256_file(model_file)[0]
    with session_scope(write=False) as s:
        ds = gov.get_dataset(session=s, dataset_id=teacher.dataset_id)
        assert (ds.rows, ds.schema["columns"]) == (3, ["ts", "price", "volume"])
        assert student.dataset_id == teacher.dataset_id  # same content: one dataset row
        events = gov.query_events(session=s, subject=gov.Subject("model_version", str(teacher.id)))
        assert [e.action for e in events] == ["model.registered"]
        assert events[0].payload_obj["artifact_sha256"] == teacher.artifact_sha256
        assert events[0].payload_obj["dataset_sha256"] == ds.sha256
    again = _register(model_file)
    assert again.version == 2


def test_dataset_by_sha_and_run_lineage(db_url: str, model_file: Path) -> None:
    sha = "ab" * 32
    with session_scope() as s:
        run = gov.start_run(session=s, principal=person("ci"), pipeline="trading", params={"horizon": 5})
    with session_scope() as s:
        gov.finish_run(session=s, principal=person("ci"), run_id=run.id)
    mv = _register(model_file, dataset=sha, run_id=run.id)
    with session_scope(write=False) as s:
        tree = gov.lineage(session=s, version_id=mv.id)
    assert tree["dataset"]["sha256"] == sha
    assert tree["run"]["status"] == "succeeded" and tree["run"]["code_version"].startswith(("git:", "convergence=="))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"family": "crypto"}, InvalidInput, "family must be one of"),
    ({"role": "oracle"}, InvalidInput, "role must be one of"),
    ({"name": "bad name!"}, InvalidInput, "not valid"),
    ({"metrics": {"sharpe": float("nan")}}, InvalidInput, "finite"),
    ({"metrics": {"sharpe": 10**400}}, InvalidInput, "too large"),  # no float holds it (once a 500)
    ({"metrics": {"sharpe": "high"}}, InvalidInput, "must be a number"),
    ({"parent_id": 424242}, NotFound, "no model version with id 424242"),
    ({"dataset": "not-a-file-nor-sha"}, InvalidInput, "--dataset"),
    ({"artifact": Path("/definitely/missing.bin")}, NotFound, "no such file"),
])
def test_bad_registrations_leave_nothing(db_url: str, model_file: Path, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        _register(model_file, **kwargs)
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar() == 0
        assert s.execute(select(func.count()).select_from(AuditEvent)).scalar() == 0


def test_parent_rules(db_url: str, model_file: Path, language_model_file: Path, tmp_path: Path) -> None:
    teacher = _register(model_file)
    with pytest.raises(InvalidInput, match="language model cannot descend"):
        _register(language_model_file, name="lm", family="language", role="student", parent_id=teacher.id)
    student = _register(model_file, name="s", role="student", parent_id=teacher.id)
    with pytest.raises(InvalidInput, match="a teacher cannot have a student as parent"):
        _register(model_file, name="t2", role="teacher", parent_id=student.id)


def test_loading_checks_the_artifact_hash(db_url: str, model_file: Path) -> None:
    mv = _register(model_file)
    with session_scope(write=False) as s:
        path = gov.load_artifact(session=s, version_id=mv.id)
        assert path.read_bytes() == model_file.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="SHA-256"), session_scope(write=False) as s:
        gov.load_artifact(session=s, version_id=mv.id)
    path.unlink()
    with pytest.raises(NotFound, match="missing"), session_scope(write=False) as s:
        gov.load_artifact(session=s, version_id=mv.id)


_KILL_ME = """
import sys, time
from pathlib import Path
from convergence import governance as gov
import convergence.governance._registry as registry
from convergence.platform.db import session_scope

mode, flag, artifact = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if mode == "pause":
    real_append = registry.append
    def append_then_hang(**kw):
        event = real_append(**kw)
        if kw["action"] == "model.registered":
            kw["session"].flush()
            flag.write_text("inside")  # the version row and its event are written, not committed
            time.sleep(120)
        return event
    registry.append = append_then_hang
with session_scope(write=False) as s:  # bob is seeded into every test database
    row = gov.identity.find_principal(session=s, issuer="https://idp.test", subject="bob")
    bob = gov.identity.to_principal(row, auth=gov.identity.AuthContext("oidc"), session=s)
n = 0
while True:
    with session_scope() as s:
        gov.register_model(session=s, principal=bob, name="crashy", artifact=artifact, family="trading", role="student")
    n += 1
    flag.write_text(f"committed {n}")
"""


def _assert_registry_and_audit_agree() -> int:
    with session_scope(write=False) as s:
        versions = {str(i) for i in s.execute(select(ModelVersion.id)).scalars()}
        events = {e.subject_id for e in gov.query_events(session=s, action="model.registered", limit=100_000)}
    assert versions == events
    assert verify_now().ok
    return len(versions)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pause", "loop"])
def test_sigkill_mid_registration_leaves_no_orphan(db_url: str, model_file: Path, tmp_path: Path, mode: str) -> None:
    script, flag = tmp_path / "kill_me.py", tmp_path / "flag"
    script.write_text(_KILL_ME)
    proc = subprocess.Popen([sys.executable, str(script), mode, str(flag), str(model_file)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    wanted = "inside" if mode == "pause" else "committed 5"
    while time.monotonic() < deadline and not (flag.exists() and flag.read_text().startswith(wanted)):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.02)
    assert flag.exists(), "the child never reached the point to kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    count = _assert_registry_and_audit_agree()
    assert count == 0 if mode == "pause" else count >= 5
    # the database is usable afterwards: the lock died with the process
    mv = _register(model_file, name="after-crash")
    assert mv.version == 1


def test_only_a_service_account_records_who_asked_for_a_run(db_url: str) -> None:
    from convergence.platform.errors import Forbidden

    trigger = {"kind": "manual", "requested_by": {"id": person("alice").id, "name": "alice"}}
    quinn, runner = person("quinn"), person("k8s-runner", "registrant", kind="service")
    with pytest.raises(Forbidden, match="recorded by the system") as refused, session_scope() as s:
        gov.start_run(session=s, principal=quinn, pipeline="trading", params={"trigger": trigger})
    assert refused.value.rule == "trigger-by-system"
    with session_scope() as s:  # a person's own drift retraining names its alerts, not someone else
        gov.start_run(session=s, principal=quinn, pipeline="trading",
                      params={"trigger": {"kind": "drift", "alert_ids": [1]}})
        gov.start_run(session=s, principal=runner, pipeline="trading", params={"trigger": trigger})
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="pipeline.run_refused")
        assert [r.status for r in gov.list_runs(session=s)] == ["running", "running"]
    assert event.payload_obj["rule"] == "trigger-by-system"
