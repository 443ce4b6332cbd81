"""``cvg models compile``: a registered eager student becomes onnxruntime children, checked against it on the
holdout of the real ticks its config names, timed, and registered as candidates that need four eyes."""

from __future__ import annotations

from pathlib import Path

from tests.pipelines.conftest import SMALL
from tests.platform.cli.conftest import assert_one_line_error


def _student(tmp_path: Path, config: dict | None) -> int:  # type: ignore[type-arg]
    """A SYNTHETIC-weight student of the real feature width, registered with (or without) its pipeline config."""
    import torch

    from convergence import governance as gov
    from convergence.pipelines import _nets as nets
    from convergence.pipelines import _trading as T
    from convergence.pipelines import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._trading_pipeline import features_for
    from convergence.platform.db import session_scope
    from tests.people import person

    cfg = parse_config(SMALL)
    fs = features_for(cfg, load_ticks(max_ticks=cfg.data.max_ticks))
    _, (train, _) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    p = T.prepare(fs, train)
    torch.manual_seed(3)
    arch = nets.student_arch(fs.X.shape[1], cfg.model)
    path = nets.save_artifact(tmp_path / "student.safetensors", net=nets.from_arch(arch), arch=arch, role="student",
                              quantized=False, mean=p.mean, std=p.std, y_scale=p.y_scale, meta={})
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("quant"), name="cli-trading-student", artifact=path,
                                  family="trading", role="student", params={"config": cfg.to_dict()} if config
                                  else {}).id


def test_compile_registers_checked_children_and_says_what_comes_next(sandbox: str, cvg, tmp_path: Path) -> None:
    student = _student(tmp_path, SMALL)
    assert_one_line_error(cvg("models", "compile", str(student), "--as", "carol"), 4, "registrant")
    done = cvg("models", "compile", str(student), "--as", "quant")
    assert done.code == 0, done.err
    assert "student_onnx: max |diff|" in done.out and "registered as version" in done.out
    assert "validate and approve a child" in done.out
    listed = cvg("models", "list", "--json").json
    children = {m["role"]: m for m in listed if m.get("parent_id") == student}
    assert set(children) == {"compiled", "quantized"}
    assert {m["stage"] for m in children.values()} == {"candidate"}
    assert children["compiled"]["name"] == "cli-trading-student-onnx"
    shown = cvg("models", "show", str(children["compiled"]["id"]), "--json").json
    assert shown["params"]["compiled_from"] == student and shown["params"]["compile_gate"]["passed"]
    assert shown["metrics"]["compiled_max_abs_diff"] >= 0 and shown["metrics"]["latency_batch1_s"] > 0
    lineage = cvg("models", "lineage", str(children["quantized"]["id"]), "--json")
    assert lineage.code == 0 and lineage.json["parent"]["id"] == student
    # only eager trading versions compile, and only with the data they were trained on
    assert_one_line_error(cvg("models", "compile", str(children["compiled"]["id"]), "--as", "quant"), 2,
                          "only eager trading teachers and students compile")


def test_a_version_without_its_pipeline_config_is_refused(sandbox: str, cvg, tmp_path: Path) -> None:
    student = _student(tmp_path, None)
    assert_one_line_error(cvg("models", "compile", str(student), "--as", "quant"), 2, "carries no pipeline config")
