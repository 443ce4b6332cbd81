"""The six Kubeflow steps chained over directories in-process, as the pods would run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.pipelines import STEP_DEPENDENCIES, run_step
from convergence.platform.db import session_scope


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["sqlite"])  # the same registration code runs on PostgreSQL in test_trading_pipeline
def test_step_chain_registers_like_the_local_runner(db_url: str, ray_session, small_config, tmp_path: Path) -> None:
    dirs = {step: tmp_path / step for step in STEP_DEPENDENCIES}
    state = {}
    for step, deps in STEP_DEPENDENCIES.items():
        state = run_step(step, small_config, [dirs[d] for d in deps], dirs[step], actor="kubeflow")
    assert state["gates_passed"] and set(state["versions"]) == {"teacher", "student", "int8"}
    with session_scope(write=False) as s:
        run = gov.get_run(session=s, run_id=state["run_id"])
        assert run.status == "succeeded" and run.created_by == "kubeflow"
        student = gov.get_model(session=s, version_id=state["versions"]["student"])
        assert student.parent_id == state["versions"]["teacher"] and student.run_id == run.id
        assert gov.verify(session=s).ok
    assert (dirs["evaluate_register"] / "evidence.json").exists()
