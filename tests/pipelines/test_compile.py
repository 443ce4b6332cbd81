"""Compiled graphs are data too: a graph the compile step did not write is refused before onnxruntime opens it,
and a graph never answers another row's value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convergence.pipelines import _compile as compiled
from convergence.pipelines import _nets as nets
from convergence.platform.errors import InvalidInput, UnsafeArtifact


@pytest.fixture(scope="module")
def graph() -> bytes:
    import torch

    torch.manual_seed(0)
    return compiled.to_onnx(nets.from_arch({"n_in": 8, "hidden": [4], "dropout": 0.0}).eval())


def _edit(graph: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    import onnx

    model = onnx.load_from_string(graph)
    change(model)
    return model.SerializeToString()


def _external(model) -> None:  # type: ignore[no-untyped-def]
    from onnx import TensorProto

    weight = model.graph.initializer[3]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../.local/share/convergence/ledger.key"


def _custom_op(model) -> None:  # type: ignore[no-untyped-def]
    model.graph.node[0].domain = "com.example.evil"


def _loop(model) -> None:  # type: ignore[no-untyped-def]
    model.graph.node[1].op_type = "Loop"


def _second_output(model) -> None:  # type: ignore[no-untyped-def]
    from onnx import helper

    model.graph.output.append(helper.make_tensor_value_info("l0.weight", 1, None))


@pytest.mark.parametrize("change,fragment", [
    (_external, "stored outside the graph"), (_custom_op, "com.example.evil"), (_loop, "'Loop'"),
    (_second_output, "inputs/outputs other than x → y"),
])
def test_a_graph_the_compile_step_did_not_write_is_refused_unopened(graph: bytes, change, fragment: str,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    opened = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a))
    with pytest.raises(UnsafeArtifact, match=fragment):
        compiled.OnnxModel(_edit(graph, change), quantized=False)
    with pytest.raises(UnsafeArtifact, match="not an ONNX model"):
        compiled.OnnxModel(b"\x08\x01garbage" * 10, quantized=False)
    assert opened == []  # onnxruntime never saw them


def test_a_graph_the_compile_step_wrote_opens_and_answers_one_value_per_row(graph: bytes,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = compiled.OnnxModel(graph, quantized=False)
    assert model(np.zeros((5, 8), np.float32)).shape == (5,)
    monkeypatch.setattr(model.session, "run", lambda *a: [np.zeros((4, 1), np.float32)])
    with pytest.raises(UnsafeArtifact, match="answered 4 values for 5 rows"):
        model(np.zeros((5, 8), np.float32))


def test_only_the_layers_an_mlp_has_export(tmp_path: Path) -> None:
    from torch import nn

    with pytest.raises(InvalidInput, match="layer 1 \\(ReLU\\) has no ONNX form"):
        compiled.to_onnx(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1)))
