"""Inference compilation: a trading network as an ONNX graph run by onnxruntime, in float and statically
quantized INT8 (QDQ, calibrated on training rows), with the evidence that it computes the same function.

The graph is written from the network's own weights (Gemm per Linear, GELU in its exact erf form), so no
exporter or tracer runs; onnxruntime fuses it at its highest optimisation level when a session opens. The
artifact is still a safe artifact (``_safeio``): the serialized graph is one uint8 tensor beside the same
JSON header the eager artifacts carry. ``OnnxModel`` answers the calls the pipeline makes of a network
(predict, latency, size), so walk-forward, scoring and gates treat it like any other model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from convergence.pipelines import _safeio as safeio

ONNX_FORMAT = "convergence.trading.onnx.v1"
OPSET = 17
INPUT, OUTPUT = "x", "y"


def runtime_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "opset": str(OPSET)}


def _providers(device: str) -> list[str]:
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


OPS = frozenset({"Gemm", "Div", "Erf", "Add", "Mul", "Identity", "QuantizeLinear", "DequantizeLinear"})


def check_graph(graph: bytes) -> None:
    """Refuse a graph that is not one this module writes, before onnxruntime sees it: tensors stored outside the
    graph (a path onnxruntime would read), operators of another domain or outside what an MLP needs (custom
    kernels, control flow, subgraphs), or inputs and outputs other than ``x [batch, n]`` → ``y [batch, 1]``."""
    import onnx
    from onnx import TensorProto

    from convergence.platform.errors import UnsafeArtifact

    try:
        model = onnx.load_from_string(graph)
    except Exception:  # noqa: BLE001 - protobuf raises its own types for bytes that are not a model
        raise UnsafeArtifact("the compiled graph is not an ONNX model") from None
    g = model.graph
    tensors = [*g.initializer, *(a.t for n in g.node for a in n.attribute if a.HasField("t"))]
    problems = [f"tensor {t.name[:40]!r} is stored outside the graph" for t in tensors
                if t.data_location == TensorProto.EXTERNAL or t.external_data]
    problems += [f"operator {n.op_type[:40]!r} ({n.domain or 'onnx'})" for n in g.node
                 if n.domain not in ("", "ai.onnx") or n.op_type not in OPS
                 or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)]
    if model.functions or any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
        problems.append("functions or operator sets of another domain")
    if [i.name for i in g.input if i.name not in {t.name for t in g.initializer}] != [INPUT] or \
            [o.name for o in g.output] != [OUTPUT]:
        problems.append(f"inputs/outputs other than {INPUT} → {OUTPUT}")
    if problems:
        raise UnsafeArtifact(f"the compiled graph is not a trading MLP graph: {'; '.join(problems[:3])}",
                             hint="compiled graphs are written by the compile step, never taken as they come")


class OnnxModel:
    """An onnxruntime session over a serialized graph (checked first); callable on standardized float32 rows."""

    def __init__(self, graph: bytes, *, quantized: bool, threads: int = 1, device: str = "cpu",
                 n_params: int = 0) -> None:
        import onnxruntime

        check_graph(graph)
        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        opts.log_severity_level = 3  # warnings about unused initialisers are not the caller's business
        self.graph, self.quantized, self.n_params = graph, quantized, n_params
        self.session = onnxruntime.InferenceSession(graph, sess_options=opts, providers=_providers(device))
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {INPUT: np.ascontiguousarray(X, dtype=np.float32)})[0].ravel()
        if len(out) != len(X):  # one answer per row, in order, or none at all: never another row's
            from convergence.platform.errors import UnsafeArtifact

            raise UnsafeArtifact(f"the compiled graph answered {len(out)} values for {len(X)} rows")
        return out

    def predict(self, X: np.ndarray, batch: int = 4096) -> np.ndarray:
        out = [self(X[start:start + batch]) for start in range(0, len(X), batch)]
        return np.concatenate(out).astype(np.float32) if out else np.empty(0, dtype=np.float32)

    def latency(self, n_in: int, *, batch: int, repeats: int) -> float:
        """Median seconds per row, as ``nets.latency`` measures the eager network (one thread)."""
        x = np.random.default_rng(0).standard_normal((batch, n_in)).astype(np.float32)
        for _ in range(10):
            self(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) / batch


def is_onnx(model: Any) -> bool:
    return isinstance(model, OnnxModel)


# --- the graph ----------------------------------------------------------------------------------------

def _gelu(helper: Any, name: str, x: str, nodes: list[Any]) -> str:
    """GELU as torch computes it by default: x · ½ · (1 + erf(x / √2)); onnxruntime fuses it into one op."""
    nodes += [helper.make_node("Div", [x, "sqrt2"], [f"{name}.d"]),
              helper.make_node("Erf", [f"{name}.d"], [f"{name}.e"]),
              helper.make_node("Add", [f"{name}.e", "one"], [f"{name}.a"]),
              helper.make_node("Mul", [x, f"{name}.a"], [f"{name}.m"]),
              helper.make_node("Mul", [f"{name}.m", "half"], [f"{name}.out"])]
    return f"{name}.out"


def to_onnx(net: Any) -> bytes:
    """The eager MLP (``nets.build_mlp``: Linear, GELU, optional Dropout) as a serialized ONNX graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    from convergence.platform.errors import InvalidInput

    consts = {"sqrt2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), name) for name, v in consts.items()]
    nodes: list[Any] = []
    x, n_in = INPUT, None
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Linear):
            n_in = n_in or layer.in_features
            w, b = (t.detach().cpu().float().numpy() for t in (layer.weight, layer.bias))
            inits += [numpy_helper.from_array(w, f"l{i}.weight"), numpy_helper.from_array(b, f"l{i}.bias")]
            nodes.append(helper.make_node("Gemm", [x, f"l{i}.weight", f"l{i}.bias"], [f"l{i}.out"], name=f"l{i}",
                                          transB=1))
            x = f"l{i}.out"
        elif isinstance(layer, nn.GELU) and layer.approximate == "none":
            x = _gelu(helper, f"g{i}", x, nodes)
        elif not isinstance(layer, nn.Dropout):
            raise InvalidInput(f"layer {i} ({type(layer).__name__}) has no ONNX form here: only Linear, GELU, Dropout")
    nodes.append(helper.make_node("Identity", [x], [OUTPUT]))
    graph = helper.make_graph(nodes, "convergence-trading-mlp", [
        helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="convergence")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


class _Rows:
    """onnxruntime's calibration reader over standardized rows, in batches."""

    def __init__(self, X: np.ndarray, batch: int = 256) -> None:
        self.batches = iter([{INPUT: X[i:i + batch]} for i in range(0, len(X), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - the MinMax calibrator reads once
        pass


def quantize_static(graph: bytes, calibration: np.ndarray) -> bytes:
    """INT8 weights (per channel) and unsigned INT8 activations (QDQ), activation ranges from ``calibration``:
    u8 × s8 is the fast integer kernel on x86 CPUs (signed activations measured slower). The output layer stays
    float: one row of weights that decides the prediction (measured: it cut the largest holdout gap 3.5×)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize

    reader = type("Reader", (_Rows, CalibrationDataReader), {})(np.ascontiguousarray(calibration, np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        model = onnx.load(str(src))
        output_layer = [n.name for n in model.graph.node if n.op_type == "Gemm"][-1:]
        ort_quantize(model, str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                     activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=output_layer)
        return dst.read_bytes()


def compile_net(net: Any, *, n_params: int) -> OnnxModel:
    return OnnxModel(to_onnx(net), quantized=False, n_params=n_params)


def quantize_net(net: Any, calibration: np.ndarray, *, n_params: int) -> OnnxModel:
    return OnnxModel(quantize_static(to_onnx(net), calibration), quantized=True, n_params=n_params)


# --- evidence ------------------------------------------------------------------------------------------

def equivalence(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How closely a compiled graph reproduces its float network on the same rows (label units)."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.std(reference)) or 1.0
    fidelity = float(np.corrcoef(reference, candidate)[0, 1]) if len(reference) > 1 and np.std(candidate) else 0.0
    return {"max_abs_diff": float(diff.max(initial=0.0)), "mean_abs_diff": float(diff.mean()) if len(diff) else 0.0,
            "output_scale": scale, "max_abs_diff_scaled": float(diff.max(initial=0.0)) / scale,
            "fidelity": fidelity, "rows": int(len(reference))}


def check(evidence: dict[str, float], *, quantized: bool, gates: Any, label_sd: float) -> dict[str, Any]:
    """The compile gate (``gates`` is the pipeline's GateConfig): a float graph must reproduce its network to
    ``max_compiled_diff`` of the output's s.d.; an INT8 graph must keep ``min_int8_fidelity`` and stay within
    ``max_int8_gap`` label s.d. of it."""
    if quantized:
        checks = [("INT8 fidelity to the float network", evidence["fidelity"], ">=", gates.min_int8_fidelity),
                  ("INT8 vs float max gap (label sd)", evidence["max_abs_diff"] / (label_sd or 1.0), "<=",
                   gates.max_int8_gap)]
    else:
        checks = [("compiled vs eager max |difference| / output s.d.", evidence["max_abs_diff_scaled"], "<=",
                   gates.max_compiled_diff)]
    results = [{"check": name, "value": value, "op": op, "threshold": limit,
                "passed": bool(value >= limit if op == ">=" else value <= limit)} for name, value, op, limit in checks]
    return {"passed": all(r["passed"] for r in results), "checks": results,
            "failed": [f"{r['check']} = {r['value']:.4g}, needs {r['op']} {r['threshold']}" for r in results
                       if not r["passed"]]}


# --- the artifact --------------------------------------------------------------------------------------

def save_artifact(path: Path, *, model: OnnxModel, arch: dict[str, Any], role: str, mean: np.ndarray,
                  std: np.ndarray, y_scale: float, meta: dict[str, Any]) -> Path:
    """A compiled graph as a safe artifact: the graph's bytes as one uint8 tensor, the rest as JSON."""
    import torch

    tensors = {"graph": torch.frombuffer(bytearray(model.graph), dtype=torch.uint8),
               "mean": torch.from_numpy(np.ascontiguousarray(mean)), "std": torch.from_numpy(np.ascontiguousarray(std))}
    header = {"role": role, "arch": arch, "quantized": model.quantized, "y_scale": float(y_scale), "meta": meta,
              "runtime": {"name": "onnxruntime", **runtime_versions(), "optimization": "ORT_ENABLE_ALL",
                          "quantization": "static QDQ: u8 activations, per-channel s8 weights" if model.quantized else None},
              "n_params": model.n_params}
    return safeio.save(path, fmt=ONNX_FORMAT, header=header, tensors=tensors)


def load_artifact(path: Path, *, threads: int = 1, device: str = "cpu") -> tuple[OnnxModel, dict[str, Any]]:
    """The compiled graph in an onnxruntime session (CUDA when asked and present), with its header."""
    from convergence.platform.errors import UnsafeArtifact

    tensors, header = safeio.load(path, fmt=ONNX_FORMAT)
    try:
        graph = tensors["graph"].numpy().tobytes()
        model = OnnxModel(graph, quantized=bool(header.get("quantized")), threads=threads, device=device,
                          n_params=int(header.get("n_params", 0)))
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
    except UnsafeArtifact:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a graph it cannot load
        raise UnsafeArtifact(f"{Path(path).name} does not hold a graph onnxruntime can run: "
                             f"{type(exc).__name__}") from None
    return model, {**header, "format": ONNX_FORMAT, "mean": mean, "std": std}
