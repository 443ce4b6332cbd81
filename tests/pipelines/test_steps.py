"""The six Kubeflow steps chained over directories in-process, as the pods would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.pipelines import STEP_DEPENDENCIES, run_step
from convergence.platform.db import session_scope
from tests.people import person


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["sqlite"])  # the same registration code runs on PostgreSQL in test_trading_pipeline
def test_step_chain_registers_like_the_local_runner(db_url: str, ray_session, small_config, tmp_path: Path) -> None:
    dirs = {step: tmp_path / step for step in STEP_DEPENDENCIES}
    state = {}
    for step, deps in STEP_DEPENDENCIES.items():
        state = run_step(step, small_config, [dirs[d] for d in deps], dirs[step], principal=person("kubeflow"))
    assert state["gates_passed"] and set(state["versions"]) == {"teacher", "student", "int8", "student_onnx",
                                                                 "teacher_onnx"}  # the compile step ran in the pod
    with session_scope(write=False) as s:
        run = gov.get_run(session=s, run_id=state["run_id"])
        assert run.status == "succeeded" and run.created_by == "kubeflow"
        student = gov.get_model(session=s, version_id=state["versions"]["student"])
        assert student.parent_id == state["versions"]["teacher"] and student.run_id == run.id
        assert gov.verify(session=s).ok
    assert (dirs["evaluate_register"] / "evidence.json").exists()
    handed = {p.suffix for d in dirs.values() for p in d.iterdir() if p.is_file()}
    assert handed <= {".npz", ".json", ".safetensors"}, handed  # data between pods, never a pickle
    _tampering_between_pods_is_refused(dirs, small_config)


def _tampering_between_pods_is_refused(dirs: dict[str, Path], cfg) -> None:  # type: ignore[no-untyped-def]
    """Each step's manifest: a changed, added or missing file in an input directory stops the next step."""
    from convergence.platform.errors import IntegrityError, NotFound

    deps = [dirs[d] for d in STEP_DEPENDENCIES["evaluate_register"]]
    student = dirs["distill_student"] / "student.safetensors"
    original = student.read_bytes()
    student.write_bytes(original[:-4] + b"\x00\x00\x80\x7f")  # one weight becomes +inf
    with pytest.raises(IntegrityError, match="student.safetensors changed after its step"):
        run_step("evaluate_register", cfg, deps, dirs["evaluate_register"], principal=person("kubeflow"))
    student.write_bytes(original)
    (dirs["walk_forward"] / "extra.json").write_text("{}")
    with pytest.raises(IntegrityError, match="added: extra.json"):
        run_step("evaluate_register", cfg, deps, dirs["evaluate_register"], principal=person("kubeflow"))
    (dirs["walk_forward"] / "manifest.json").unlink()
    with pytest.raises(NotFound, match="did the step before this one finish"):
        run_step("evaluate_register", cfg, deps, dirs["evaluate_register"], principal=person("kubeflow"))


def test_a_step_output_that_needs_pickle_is_refused_without_loading(tmp_path: Path) -> None:
    import numpy as np

    from convergence.pipelines._steps import _load_features
    from convergence.platform.errors import IntegrityError

    np.savez(tmp_path / "features.npz", __meta__=np.array("{}"), X=np.array([object()], dtype=object))
    with pytest.raises(IntegrityError, match="plain arrays"):
        _load_features(tmp_path)


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["sqlite"])
def test_language_steps_chain_registers_like_the_local_runner(db_url: str, ray_session, tiny_lm_config,
                                                              tmp_path: Path) -> None:
    from convergence.pipelines._steps import graph

    steps = graph(tiny_lm_config)
    assert list(steps) == ["load_corpus", "tokenize", "train_teacher", "distill_student", "evaluate_register"]
    dirs = {step: tmp_path / step for step in steps}
    state = {}
    for step, deps in steps.items():
        state = run_step(step, tiny_lm_config, [dirs[d] for d in deps], dirs[step], principal=person("kubeflow"))
    assert state["gates_passed"] and set(state["versions"]) == {"teacher", "student"}
    assert set(state["training"]) == {"teacher", "student", "label_only"}  # states merge across inputs
    with session_scope(write=False) as s:
        run = gov.get_run(session=s, run_id=state["run_id"])
        assert run.status == "succeeded" and run.pipeline == "language" and run.created_by == "kubeflow"
        teacher = gov.get_model(session=s, version_id=state["versions"]["teacher"])
        assert teacher.dataset_id == state["tokenizer"]["id"]
        assert gov.verify(session=s).ok
    evidence = json.loads((dirs["evaluate_register"] / "evidence.json").read_text())
    assert evidence["corpus"]["documents"]["train"] == 30 and evidence["tokens"]["train"] > 0
