"""`cvg pipelines` through the real console script: errors, compile, and steps over directories."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.platform.cli.conftest import assert_one_line_error


def test_pipeline_input_errors(db_url: str, sandbox: str, cvg, tmp_path: Path) -> None:
    assert_one_line_error(cvg("pipelines", "run", "language", "--as", "q", "--set",
                              '{"student": {"d_model": 512, "layers": 2, "heads": 2}}'), 2,
                          "must be smaller than the teacher")
    assert_one_line_error(cvg("pipelines", "run", "language", "--as", "q", "--set", '{"tokeniser": {}}'), 2,
                          "tokeniser: unknown key")
    assert_one_line_error(cvg("pipelines", "step", "language", "load_data", "--out", str(tmp_path), "--as", "q"), 2,
                          "unknown step 'load_data'; steps: load_corpus, tokenize")
    assert_one_line_error(cvg("pipelines", "run", "crypto", "--as", "q"), 2, "unknown pipeline family")
    assert_one_line_error(cvg("pipelines", "run", "trading", "--as", "q", "--set", '{"modle": 1}'), 2,
                          "modle: unknown key")
    assert_one_line_error(cvg("pipelines", "run", "trading", "--as", "q", "--set", "{oops"), 2, "not valid JSON")
    assert_one_line_error(cvg("pipelines", "run", "trading", "--as", "q", "--config", str(tmp_path / "none.toml")),
                          3, "no config file")
    assert_one_line_error(cvg("pipelines", "step", "trading", "sing", "--out", str(tmp_path), "--as", "q"), 2,
                          "unknown step")


def test_compile_writes_a_spec(cvg, tmp_path: Path) -> None:
    out = tmp_path / "trading.yaml"
    result = cvg("pipelines", "compile", "trading", "-o", str(out), "--image", "img:1")
    assert result.code == 0, result.err
    doc = yaml.safe_load(out.read_text())
    assert doc["pipelineInfo"]["name"] == "convergence-trading"
    assert all(e["container"]["image"] == "img:1" for e in doc["deploymentSpec"]["executors"].values())


def test_compile_language(cvg, tmp_path: Path) -> None:
    out = tmp_path / "language.yaml"
    result = cvg("pipelines", "compile", "language", "-o", str(out), "--image", "img:1")
    assert result.code == 0, result.err
    doc = yaml.safe_load(out.read_text())
    assert doc["pipelineInfo"]["name"] == "convergence-language"
    assert {e["container"]["command"][3] for e in doc["deploymentSpec"]["executors"].values()} == {"language"}


def test_steps_over_directories(db_url: str, sandbox: str, cvg, tmp_path: Path) -> None:
    """The first two Kubeflow steps, exactly as a component runs them."""
    config = json.dumps({"data": {"max_ticks": 20_000}, "eval": {"folds": 2}})
    load, feats = tmp_path / "load", tmp_path / "features"
    first = cvg("pipelines", "step", "trading", "load_data", "--config-json", config, "--out", str(load), "--as", "kfp")
    assert first.code == 0, first.err
    state = json.loads((load / "state.json").read_text())
    assert state["dataset"]["rows"] == 20_000 and state["run_id"] >= 1
    second = cvg("pipelines", "step", "trading", "build_features", "--config-json", config, "--in", str(load),
                 "--out", str(feats), "--as", "kfp")
    assert second.code == 0, second.err
    assert (feats / "features.npz").stat().st_size > 0
    assert json.loads((feats / "state.json").read_text())["run_id"] == state["run_id"]
    assert_one_line_error(cvg("pipelines", "step", "trading", "build_features", "--config-json", config,
                              "--out", str(tmp_path / "x"), "--as", "kfp"), 2, "reads 1 input dir")
    runs = cvg("pipelines", "runs", "--json")
    assert runs.json[0]["id"] == state["run_id"] and runs.json[0]["status"] == "running"
