"""Kubeflow compilation: the spec loads back with the expected components, inputs and dependencies.
(No KFP server can run here; submission is tested against an address where nothing listens.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from convergence.pipelines import STEP_DEPENDENCIES, compile_pipeline, parse_config, submit_pipeline
from convergence.platform.errors import InvalidInput, Unavailable


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("kfp") / "trading.yaml"
    compile_pipeline(parse_config({"eval": {"folds": 3}}), path, "registry.example/convergence:9.9")
    return path, yaml.safe_load(path.read_text())


def test_components_run_the_cli_in_the_image(spec) -> None:
    _, doc = spec
    executors = doc["deploymentSpec"]["executors"]
    assert len(executors) == len(STEP_DEPENDENCIES)
    for step in STEP_DEPENDENCIES:
        container = executors[f"exec-{step.replace('_', '-')}"]["container"]
        assert container["image"] == "registry.example/convergence:9.9"
        assert container["command"] == ["cvg", "pipelines", "step", "trading", step]
        assert container["args"].count("--in") == len(STEP_DEPENDENCIES[step])


def test_dependencies_and_inputs_match_the_steps(spec) -> None:
    _, doc = spec
    tasks = doc["root"]["dag"]["tasks"]
    for step, deps in STEP_DEPENDENCIES.items():
        task = tasks[step.replace("_", "-")]
        assert sorted(task.get("dependentTasks", [])) == sorted(d.replace("_", "-") for d in deps)
        assert set(task["inputs"]["parameters"]) == {"config_json"}  # who acts is the pod's service account
        assert set(task["inputs"].get("artifacts", {})) == set(deps)
    default = doc["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert '"folds": 3' in default


def test_spec_loads_back_as_a_component(spec) -> None:
    from kfp import components

    path, _ = spec
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "convergence-trading"
    assert set(loaded.component_spec.inputs) == {"config_json"}


def test_bad_output_name_and_unreachable_server(tmp_path: Path, spec) -> None:
    with pytest.raises(InvalidInput, match=".yaml"):
        compile_pipeline(parse_config({}), tmp_path / "x.txt", "img")
    path, _ = spec
    with pytest.raises(Unavailable, match="did not accept"):
        submit_pipeline(path, host="http://127.0.0.1:9")


def test_language_pipeline_compiles_its_own_graph(tmp_path: Path) -> None:
    from convergence.pipelines._language_pipeline import DEPENDS

    path = compile_pipeline(parse_config({"train": {"teacher_steps": 50}}, "language"), tmp_path / "lm.yaml", "img:2")
    doc = yaml.safe_load(path.read_text())
    assert doc["pipelineInfo"]["name"] == "convergence-language"
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {s.replace("_", "-") for s in DEPENDS}
    for step, deps in DEPENDS.items():
        container = doc["deploymentSpec"]["executors"][f"exec-{step.replace('_', '-')}"]["container"]
        assert container["command"] == ["cvg", "pipelines", "step", "language", step]
        assert sorted(tasks[step.replace("_", "-")].get("dependentTasks", [])) == sorted(d.replace("_", "-") for d in deps)
    config = doc["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert '"teacher_steps": 50' in config
