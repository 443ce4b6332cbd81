"""The trading pipeline end to end on a real local Ray, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.pipelines import _nets as nets
from convergence.pipelines import parse_config, run_trading
from convergence.pipelines._runner import pipeline_run
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput
from tests.people import api_key, person
from tests.pipelines.conftest import LENIENT_GATES, SMALL

pytestmark = pytest.mark.ray


def _break_teacher_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile step as it is, except one weight of the teacher's graph is changed after export."""
    import copy

    from convergence.pipelines import _trading as T

    real = T.compile_models

    def compile_with_one_weight_changed(models):  # type: ignore[no-untyped-def]
        broken = copy.deepcopy(models["teacher"])
        with __import__("torch").no_grad():
            broken[0].weight[0, 0] += 1.0
        out = real(models)
        out["teacher_onnx"] = real({**models, "teacher": broken})["teacher_onnx"]
        return out

    monkeypatch.setattr(T, "compile_models", compile_with_one_weight_changed)


def test_full_run_registers_lineage_compiled_graphs_and_evidence(db_url: str, ray_session, small_config,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _break_teacher_graph(monkeypatch)
    said: list[tuple[str, str, str]] = []
    summary = run_trading(small_config, principal=person("solo"), progress=lambda *item: said.append(item))
    # the workers' epochs and losses reach the driver's progress lines: Ray Train's rank 0, the driver's
    # students and every walk-forward fold (a Ray task) told the run's board
    done = {step: detail for step, state, detail in said if state == "done"}
    epochs = small_config.model.epochs
    assert f"epoch {epochs}/{epochs}, loss " in done["train_teacher"]
    assert "student: epoch" in done["distill_student"] and "label_only: epoch" in done["distill_student"]
    assert "fold 0: done" in done["walk_forward"] and "fold 1: done" in done["walk_forward"]
    assert summary["status"] == "succeeded" and set(summary["versions"]) == {"teacher", "student", "int8",
                                                                             "student_onnx"}
    # the broken graph failed its own gate and was left out, saying why; the rest of the run stands
    assert list(summary["not_registered"]) == ["teacher_onnx"]
    assert "compiled vs eager max |difference|" in summary["not_registered"]["teacher_onnx"][0]
    v = summary["versions"]
    with session_scope(write=False) as s:
        teacher, student, int8, onnx = (gov.get_model(session=s, version_id=v[k])
                                        for k in ("teacher", "student", "int8", "student_onnx"))
        assert (teacher.role, student.role, int8.role, onnx.role) == ("teacher", "student", "quantized", "compiled")
        assert student.parent_id == teacher.id and int8.parent_id == student.id and onnx.parent_id == student.id
        assert {m.stage for m in (teacher, student, int8, onnx)} == {"candidate"}  # never promoted automatically
        assert teacher.dataset.sha256 == summary["dataset"]["sha256"] and teacher.dataset.rows == 60_000
        run = gov.get_run(session=s, run_id=summary["run_id"])
        assert run.status == "succeeded" and teacher.run_id == run.id and run.code_version
        lineage = gov.lineage(session=s, version_id=onnx.id)
        assert lineage["parent"]["parent"]["id"] == teacher.id and lineage["run"]["id"] == run.id
        actions = [e.action for e in gov.query_events(session=s, subject=gov.Subject("pipeline_run", str(run.id)))]
        assert actions == ["run.started", "run.succeeded"]
        assert len(gov.query_events(session=s, action="model.registered")) == 4
        assert gov.verify(session=s).ok
        evidence_path = gov.get_artifact_store().fetch(student.params["evidence_uri"],
                                                       sha256=student.params["evidence_sha256"])
        graph, blob = nets.load_artifact(gov.load_artifact(session=s, version_id=int8.id))
        assert blob["quantized"] and blob["meta"]["run_id"] == run.id and blob["runtime"]["name"] == "onnxruntime"
        # the equivalence and speed evidence travel with the version, and its params say where it came from
        assert onnx.metrics["compiled_fidelity"] > 0.9999 and int8.metrics["compiled_fidelity"] > 0.99
        assert onnx.metrics["latency_batch1_s"] > 0 and onnx.params["compiled_from"] == student.id
        assert onnx.params["runtime"]["onnxruntime"] and onnx.params["compile_gate"]["passed"]
    evidence = json.loads(evidence_path.read_text())
    assert len(evidence["walk_forward"]["folds"]) == 2 and evidence["gates"]["passed"]
    assert {"teacher", "student", "int8", "label_only", "student_onnx", "teacher_onnx"} <= set(evidence["holdout"])
    assert evidence["compiled"]["student_onnx"]["gate"]["passed"]
    assert not evidence["compiled"]["teacher_onnx"]["gate"]["passed"]
    assert evidence["split"]["train_label_end"] < evidence["split"]["holdout_start"]
    # a compiled child needs its own four eyes, like any version: its registrant, holding every role, may
    # not approve it; a validator and a different approver may
    from convergence.platform.errors import Forbidden

    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=onnx.id, evidence=evidence_path,
                     reason="equivalence evidence reviewed")
    with pytest.raises(Forbidden, match="registrant"), session_scope() as s:
        gov.approve(session=s, principal=person("solo"), version_id=onnx.id, reason="mine")
    with session_scope() as s:
        assert gov.approve(session=s, principal=person("alice"), version_id=onnx.id, reason="ok").stage == "approved"


def test_failed_gates_register_nothing_and_say_why(db_url: str, ray_session) -> None:
    cfg = parse_config({**SMALL, "gates": {**LENIENT_GATES, "min_speedup": 1e9}})
    summary = run_trading(cfg, principal=person("quant"))
    assert summary["status"] == "gates_failed" and summary["versions"] == {}
    assert any("latency at batch 1" in reason for reason in summary["gates"]["failed"])
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.ModelVersion)).scalar() == 0
        run = gov.get_run(session=s, run_id=summary["run_id"])
        assert run.status == "gates_failed" and "latency at batch 1" in run.error
        assert gov.verify(session=s).ok


def test_bad_data_fails_the_step_with_a_clear_error(db_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "ticks.csv"
    csv.write_text("DateTime,Price,Volume\n" + "".join(f"2024-01-02 09:30:{i:02d},100.{i % 4},1\n" for i in range(60)))
    cfg = parse_config({"data": {"source": "csv", "path": str(csv)}, "features": {"horizon": 500}})
    with pytest.raises(InvalidInput, match="too few"):
        run_trading(cfg, principal=person("quant"))
    with session_scope(write=False) as s:
        runs = list(s.execute(select(gov.PipelineRun)).scalars())
        assert [r.status for r in runs] == ["failed"] and "too few" in runs[0].error


def test_a_stale_run_is_marked_failed_by_the_next_start(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    with session_scope() as s:
        dead = gov.start_run(session=s, principal=person("quant"), pipeline="trading")
    monkeypatch.setenv("CVG_STALE_AFTER_S", "0.2")
    get_settings.cache_clear()
    time.sleep(0.3)
    with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant")) as ctx:
        ctx.finished = True
    with session_scope(write=False) as s:
        run = gov.get_run(session=s, run_id=dead.id)
        assert run.status == "failed" and run.error.startswith("stale")
    get_settings.cache_clear()


@pytest.mark.slow
def test_sigkill_mid_run_leaves_nothing_half_registered(db_url: str, tmp_path: Path) -> None:
    """A real `cvg pipelines run` killed mid-training; the next start marks it failed."""
    cfg = {**SMALL, "model": {**SMALL["model"], "epochs": 200}, "gates": LENIENT_GATES}
    env = {**os.environ, "CVG_HEARTBEAT_INTERVAL_S": "0.5", "CVG_API_KEY": api_key("pipelines-sa", "registrant")}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("cvg")), "pipelines", "run", "trading",
                             "--set", json.dumps(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    beat = None
    while time.monotonic() < deadline and beat is None:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.5)
        with session_scope(write=False) as s:
            run = s.execute(select(gov.PipelineRun)).scalars().first()
            if run is not None and run.heartbeat_at and run.heartbeat_at > run.started_at:
                beat = run.id
    assert beat is not None, "the run never started beating"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the driver and any Ray processes it started
    proc.wait(timeout=30)
    from convergence.platform.settings import get_settings

    os.environ["CVG_STALE_AFTER_S"] = "1"
    get_settings.cache_clear()
    try:
        time.sleep(1.5)
        with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant")) as ctx:
            ctx.finished = True
    finally:
        del os.environ["CVG_STALE_AFTER_S"]
        get_settings.cache_clear()
    with session_scope(write=False) as s:
        assert gov.get_run(session=s, run_id=beat).status == "failed"
        assert s.execute(select(func.count()).select_from(gov.ModelVersion)).scalar() == 0
        assert gov.verify(session=s).ok


@pytest.mark.parametrize("backend", ["sqlite"])  # one backend: it is a second full run
def test_drift_retraining_run_links_alert_run_and_candidate(db_url: str, ray_session, small_config,
                                                           evidence_file: Path) -> None:
    import datetime as dt
    import uuid

    import numpy as np

    first = run_trading(small_config, principal=person("quant"))
    student = first["versions"]["student"]
    with session_scope() as s:
        profile = s.execute(select(gov.ReferenceProfile).where(gov.ReferenceProfile.model_version_id == student)).scalar_one()
        assert profile.columns[-1] == "output" and len(profile.columns) == 14 and profile.rows > 100
        gov.validate(session=s, version_id=student, principal=person("val"), evidence=evidence_file)
        gov.approve(session=s, version_id=student, principal=person("boss"), reason="ok")
        gov.promote(session=s, version_id=student, principal=person("ops"))
        # SYNTHETIC traffic: the reference's feature vectors shifted far away, logged as if served
        width = max(profile.positions) + 1
        now = dt.datetime.now(dt.timezone.utc)
        rows = [(str(uuid.uuid4()), now, list(np.full(width, 50.0 + i % 7)), 5.0, 0.2) for i in range(300)]
        gov.log_predictions(session=s, model_version_id=student, rows=rows)
    with session_scope() as s:
        report, alerts = gov.check_drift(session=s, name="es-trading-student", since=now - dt.timedelta(minutes=1),
                                         until=now + dt.timedelta(minutes=1), principal=person("retrainer"),
                                         evidently=False)
        alert_ids = [a.id for a in alerts]
    assert report.drifted and alert_ids
    from convergence.pipelines import retrain_after_alerts

    result = retrain_after_alerts(name="es-trading-student", alert_ids=alert_ids, principal=person("retrainer"),
                                  cfg=small_config)
    with session_scope(write=False) as s:
        new_student = gov.get_model(session=s, version_id=result["versions"]["student"])
        assert new_student.stage == "candidate"  # validation and approval still required
        tree = gov.lineage(session=s, version_id=new_student.id)
        assert tree["run"]["trigger"] == {"kind": "drift", "alert_ids": alert_ids, "model": "es-trading-student"}
        assert gov.query_events(session=s, action="drift.retrain_requested")[0].payload_obj["alert_ids"] == alert_ids
