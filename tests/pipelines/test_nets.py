"""Networks, distillation, INT8 and artifacts, on a small slice of the real E-mini ticks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convergence.pipelines import _compile as compiled
from convergence.pipelines import _nets as nets
from convergence.pipelines import _trading as T
from convergence.pipelines._data import load_ticks
from convergence.pipelines._features import time_folds
from convergence.pipelines._trading_pipeline import features_for
from convergence.platform.errors import UnsafeArtifact


@pytest.fixture(scope="module")
def trained(request):  # type: ignore[no-untyped-def]
    from convergence.pipelines import parse_config
    from tests.pipelines.conftest import LENIENT_GATES, SMALL

    cfg = parse_config({**SMALL, "gates": LENIENT_GATES})
    fs = features_for(cfg, load_ticks(max_ticks=cfg.data.max_ticks))
    _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    p = T.prepare(fs, train)
    teacher = T.fit_teacher_local(p, train, cfg)
    return cfg, fs, p, train, test, {"teacher": teacher, **T.fit_students(teacher, p, train, cfg)}


def test_student_is_a_small_fraction_of_the_teacher(trained) -> None:
    cfg, *_, models = trained
    assert nets.n_params(models["student"]) < 0.2 * nets.n_params(models["teacher"])
    from convergence.pipelines import parse_config

    default = parse_config({})
    n_in = default.features.window * 13
    full_teacher = nets.from_arch(nets.teacher_arch(n_in, default.model))
    full_student = nets.from_arch(nets.student_arch(n_in, default.model))
    assert nets.n_params(full_student) < 0.01 * nets.n_params(full_teacher)


def test_int8_student_agrees_with_the_float_student_on_held_out_data(trained) -> None:
    cfg, fs, p, train, test, models = trained
    x = p.Xn[test.start:test.stop]
    float_pred, int8_pred = nets.predict(models["student"], x), nets.predict(models["int8"], x)
    # Stated tolerance (the gate's default): every INT8 prediction within 0.05 label standard deviations of
    # the float student's. Predictions here are in units of the training labels' sd.
    assert np.max(np.abs(float_pred - int8_pred)) <= 0.05
    assert np.corrcoef(float_pred, int8_pred)[0, 1] > 0.99
    assert compiled.is_onnx(models["int8"]) and models["int8"].quantized  # onnxruntime's static INT8, not torch.ao


def _save(models, key, path, cfg, fs, p, meta=None):  # type: ignore[no-untyped-def]
    n_in = fs.X.shape[1]
    arch = nets.teacher_arch(n_in, cfg.model) if key == "teacher" else nets.student_arch(n_in, cfg.model)
    return nets.save_model(path, model=models[key], arch=arch, role=key, mean=p.mean, std=p.std, y_scale=p.y_scale,
                           meta=meta or {})


def test_distillation_target_mixes_teacher_and_label() -> None:
    t, y = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(nets.distill_targets(t, y, 0.75), [0.75, 0.25])


@pytest.mark.parametrize("key,quantized", [("teacher", False), ("student", False), ("int8", True)])
def test_artifacts_round_trip(trained, tmp_path: Path, key: str, quantized: bool) -> None:
    cfg, fs, p, train, test, models = trained
    path = _save(models, key, tmp_path / f"{key}.safetensors", cfg, fs, p, {"window": fs.window})
    net, blob = nets.load_artifact(path)
    x = p.Xn[test.start:test.start + 50]
    np.testing.assert_array_equal(nets.predict(net, x), nets.predict(models[key], x))
    assert blob["quantized"] is quantized and blob["meta"]["window"] == fs.window
    np.testing.assert_array_equal(blob["mean"], p.mean)  # numpy again, exactly, for serving


def test_an_int8_artifact_holds_an_int8_graph_and_answers_exactly_as_saved(trained, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from convergence.governance import artifacts

    cfg, fs, p, train, test, models = trained
    path = _save(models, "int8", tmp_path / "int8.safetensors", cfg, fs, p)
    declared = artifacts.read_header(path)
    assert declared.format == compiled.ONNX_FORMAT and declared.tensors["graph"][0] == "U8"
    graph = onnx.load_from_string(compiled.load_artifact(path)[0].graph)
    weights = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    assert any(w.dtype == np.int8 and w.ndim == 2 for w in weights.values())  # INT8 weights, stored as such
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.graph.node}
    assert declared.header["runtime"]["onnxruntime"] and declared.header["runtime"]["opset"] == str(compiled.OPSET)


def test_a_first_wave_artifact_is_read_only_by_the_converter(trained, tmp_path: Path) -> None:
    import torch

    cfg, fs, p, train, test, models = trained
    path = tmp_path / "old.pt"
    arch = nets.student_arch(fs.X.shape[1], cfg.model)
    torch.save({"format": nets.LEGACY_FORMAT, "role": "student", "arch": arch, "quantized": False,
                "state_dict": models["student"].state_dict(), "mean": p.mean, "std": p.std, "y_scale": p.y_scale,
                "meta": {}}, path)
    with pytest.raises(UnsafeArtifact, match="not a safe model artifact"):
        nets.load_artifact(path)  # nothing serves or trains from a pickle
    net, blob = nets.read_legacy_artifact(path)
    assert isinstance(blob["mean"], np.ndarray) and np.array_equal(blob["std"], p.std)
    x = p.Xn[test.start:test.start + 20]
    np.testing.assert_array_equal(nets.predict(net, x), nets.predict(models["student"], x))


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Payload.target),))

    target = ""


def test_an_artifact_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    import torch

    _Payload.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"format": nets.LEGACY_FORMAT, "payload": _Payload()}, path)
    with pytest.raises(UnsafeArtifact, match="not a safe model artifact"):
        nets.load_artifact(path)
    with pytest.raises(UnsafeArtifact, match="plain data"):
        nets.read_legacy_artifact(path)  # the converter reads weights-only: the payload is refused too
    assert not (tmp_path / "pwned").exists()


def test_foreign_files_are_not_artifacts(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))  # safetensors, but not a convergence format
    with pytest.raises(UnsafeArtifact, match="no convergence metadata"):
        nets.load_artifact(path)
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"format": nets.ARTIFACT_FORMAT, "header": "{}"})
    with pytest.raises(UnsafeArtifact, match="does not hold the network"):
        nets.load_artifact(path)


def test_latency_is_measured_per_row(trained) -> None:
    cfg, fs, *_, models = trained
    one = nets.latency(models["student"], fs.X.shape[1], batch=1, repeats=20)
    many = nets.latency(models["student"], fs.X.shape[1], batch=64, repeats=20)
    assert 0 < many < one  # batching amortises the per-call overhead


def test_a_fold_is_deterministic(trained) -> None:
    cfg, fs, *_ = trained
    folds, _ = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    first, second = (T.fold_task(fs, *folds[0], cfg, 0) for _ in range(2))
    assert first == second
    assert set(first) >= {"teacher", "student", "int8", "label_only", "int8_max_gap_sd"}
    assert -1 <= first["student"]["fidelity"] <= 1 and 0 <= first["student"]["hit_rate"] <= 1
