"""The pipelines on a real two-node Ray cluster: a head and a worker in two network namespaces made here, one CPU
each, the pipeline (`cvg pipelines run`) driving from the head through CVG_RAY_ADDRESS. Where each fold and each
student trained is read from the evidence registered with the versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import api_key
from tests.pipelines._raycluster import HEAD_IP, WORKER_IP, RayCluster, cannot_make_namespaces
from tests.pipelines.conftest import LENIENT_GATES, LENIENT_LM_GATES, SMALL, TINY_LM

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.parametrize("backend", ["sqlite"])]
# SQLite only: PostgreSQL listens on the machine's loopback, which a namespace cannot reach.

CVG = str(Path(sys.executable).with_name("cvg"))
SMALL_TRADING = {**SMALL, "gates": LENIENT_GATES}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    reason = cannot_make_namespaces()
    if reason:
        pytest.skip(f"no two-node Ray cluster here: {reason}")
    made = RayCluster().start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def two_nodes(cluster: RayCluster) -> RayCluster:
    """The cluster with its worker up (a test that killed it leaves it down)."""
    if not cluster.worker_alive():
        cluster.start_worker()
    return cluster


class Driver:
    """`cvg pipelines run FAMILY --json` on the head node, its stdout and stderr in files."""

    def __init__(self, cluster: RayCluster, family: str, overrides: dict[str, Any], where: Path) -> None:
        env = {**os.environ, "CVG_API_KEY": api_key(f"{family}-cluster-sa", "registrant"),
               "CVG_PROGRESS_INTERVAL_S": "0.5"}
        self.out, self.err = where / f"{family}.out", where / f"{family}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = cluster.popen([CVG, "pipelines", "run", family, "--set", json.dumps(overrides), "--json"],
                                      env=env, stdout=out, stderr=err, cwd=cluster.root)

    def wait(self, timeout_s: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the pipeline did not finish in {timeout_s} s:\n{self.stderr()[-3000:]}") from None

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        assert self.proc.returncode == 0, self.stderr()[-3000:]
        return json.loads(self.out.read_text())


def _evidence(version_id: int) -> dict[str, Any]:
    """The evidence stored with a registered version (fetched by URI, its SHA-256 checked)."""
    with session_scope(write=False) as s:
        mv = gov.get_model(session=s, version_id=version_id)
        path = gov.get_artifact_store().fetch(mv.params["evidence_uri"], sha256=mv.params["evidence_sha256"])
    return json.loads(path.read_text())


def test_walk_forward_folds_land_on_both_nodes(db_url: str, two_nodes: RayCluster, tmp_path: Path) -> None:
    driver = Driver(two_nodes, "trading", SMALL_TRADING, tmp_path)
    driver.wait()
    summary = driver.summary()
    assert summary["status"] == "succeeded" and {"teacher", "student"} <= set(summary["versions"])
    folds = _evidence(summary["versions"]["student"])["walk_forward"]["folds"]
    assert [f["fold"] for f in folds] == [0, 1]
    # one CPU per node and two folds at once: one fold on each node, as the evidence says
    assert {f["ray_node"]["node_ip"] for f in folds} == {HEAD_IP, WORKER_IP}
    assert len({f["ray_node"]["node_id"] for f in folds}) == 2
    with session_scope(write=False) as s:
        assert gov.get_run(session=s, run_id=summary["run_id"]).status == "succeeded"
        assert gov.verify(session=s).ok


def test_student_trainings_land_on_both_nodes(db_url: str, two_nodes: RayCluster, tmp_path: Path) -> None:
    driver = Driver(two_nodes, "language", {**TINY_LM, "gates": LENIENT_LM_GATES}, tmp_path)
    driver.wait()
    summary = driver.summary()
    assert summary["status"] == "succeeded" and set(summary["versions"]) == {"teacher", "student"}
    training = _evidence(summary["versions"]["student"])["training"]
    students = [training["student"], training["label_only"]]
    assert students[0]["distilled"] and not students[1]["distilled"]
    assert {t["ray_node"]["node_ip"] for t in students} == {HEAD_IP, WORKER_IP}
    assert len({t["ray_node"]["node_id"] for t in students}) == 2


def test_a_worker_killed_mid_walk_forward_is_survived_or_fails_cleanly(db_url: str, two_nodes: RayCluster,
                                                                      tmp_path: Path) -> None:
    # longer folds than the quick config's, so that a fold is still training on the worker when it is killed
    cfg = {**SMALL_TRADING, "model": {**SMALL["model"], "student_epochs": 40}}
    driver = Driver(two_nodes, "trading", cfg, tmp_path)
    deadline = time.monotonic() + 240
    while not two_nodes.running(two_nodes.worker_ns, "fold_task"):
        assert driver.proc.poll() is None, f"the run ended before the kill:\n{driver.stderr()[-3000:]}"
        assert time.monotonic() < deadline, f"no fold ever ran on the worker:\n{driver.stderr()[-3000:]}"
        time.sleep(0.1)
    killed = two_nodes.kill_worker()
    assert killed and not two_nodes.worker_alive()
    rc = driver.wait()
    with session_scope(write=False) as s:
        runs = s.execute(select(gov.PipelineRun)).scalars().all()
        students = s.execute(select(gov.ModelVersion.id).where(gov.ModelVersion.role == "student")).scalars().all()
        registered = s.execute(select(func.count()).select_from(gov.ModelVersion)).scalar()
        assert gov.verify(session=s).ok
    assert len(runs) == 1
    if rc == 0:  # survived: Ray retried the worker's fold on the head, and the evidence says so
        assert runs[0].status == "succeeded" and len(students) == 1 and registered > 1
        # Ray's notice of the retried task went to stderr: stdout is still the one JSON summary
        assert driver.summary()["run_id"] == runs[0].id
        folds = _evidence(students[0])["walk_forward"]["folds"]
        assert [f["fold"] for f in folds] == [0, 1]
        assert {f["ray_node"]["node_ip"] for f in folds} == {HEAD_IP}
    else:  # failed cleanly: the run recorded as failed, one clear line, nothing registered
        errors = [line for line in driver.stderr().splitlines() if line.strip()]
        assert runs[0].status == "failed" and runs[0].error and registered == 0
        assert errors[-1].startswith("cvg: error: step 'walk_forward' failed")
        assert not any(line.startswith("Traceback") for line in errors)  # no traceback unless CVG_DEBUG asks
