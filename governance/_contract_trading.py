"""The trading family's model contract: the network, its safe artifact (eager weights or a compiled ONNX
graph, one loader), prediction, and the monitoring signature — what serving logs and drift watches.

Pipelines write through this module, serving loads and logs through it, drift reads through it, so a
column means the same thing from training to the drift report. torch and onnxruntime load only inside
the functions that need them; importing this module costs numpy.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from convergence.governance import _contract_io as safeio
from convergence.governance._contract_io import LOG_DTYPE, Signature

ARTIFACT_FORMAT = "convergence.trading.mlp.v2"  # safetensors + JSON header
LEGACY_FORMAT = "convergence.trading.mlp.v1"  # first wave: torch.save, read only to convert
ONNX_FORMAT = "convergence.trading.onnx.v1"  # a compiled graph (uint8 tensor) + the same header
OPSET = 17
INPUT, OUTPUT = "x", "y"


def build_mlp(n_in: int, hidden: list[int], dropout: float = 0.0) -> Any:
    from torch import nn

    layers: list[Any] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.GELU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def from_arch(arch: dict[str, Any]) -> Any:
    return build_mlp(arch["n_in"], list(arch["hidden"]), arch.get("dropout", 0.0))


def predict(net: Any, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    import torch

    if is_onnx(net):
        return net.predict(X, batch)
    device = next(iter(net.parameters()), torch.empty(0)).device if not is_quantized(net) else torch.device("cpu")
    out = []
    with torch.inference_mode():
        for start in range(0, len(X), batch):
            out.append(net(torch.from_numpy(X[start:start + batch]).to(device)).float().cpu().numpy().ravel())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def quantize_int8(net: Any) -> Any:
    """torch's dynamic INT8 (deprecated upstream): only to rebuild first-wave INT8 artifacts for conversion."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the API still does what we need
        return quantize_dynamic(copy.deepcopy(net).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def is_quantized(net: Any) -> bool:
    return any("quantized" in type(m).__module__ for m in net.modules())


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


def _int8_linears(net: Any) -> list[tuple[str, Any]]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return [(name, m) for name, m in net.named_modules() if isinstance(m, DynamicLinear)]


def _tensors(net: Any, quantized: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A network as plain tensors: float weights as they are; an INT8 copy as its int8 weights, their scale and
    zero point, and float biases (what its dynamic quantization holds)."""
    import torch

    if not quantized:
        return {f"net.{k}": v for k, v in copy.deepcopy(net).cpu().state_dict().items()}, {}
    tensors, qparams = {}, {}
    for name, layer in _int8_linears(net):
        weight, bias = layer.weight(), layer.bias()
        if weight.qscheme() != torch.per_tensor_affine:
            raise ValueError(f"layer {name}: only per-tensor INT8 weights are stored, got {weight.qscheme()}")
        tensors[f"int8.{name}.weight"] = weight.int_repr()
        tensors[f"int8.{name}.bias"] = bias.detach() if bias is not None else torch.zeros(weight.shape[0])
        qparams[name] = {"scale": float(weight.q_scale()), "zero_point": int(weight.q_zero_point())}
    return tensors, qparams


def save_artifact(path: Path, *, net: Any, arch: dict[str, Any], role: str, quantized: bool, mean: np.ndarray,
                  std: np.ndarray, y_scale: float, meta: dict[str, Any]) -> Path:
    """A trading network as a safe artifact: safetensors weights, the architecture and the rest as JSON."""
    import torch

    tensors, qparams = _tensors(net, quantized)
    tensors["mean"] = torch.from_numpy(np.ascontiguousarray(mean))
    tensors["std"] = torch.from_numpy(np.ascontiguousarray(std))
    header = {"role": role, "arch": arch, "quantized": quantized, "y_scale": float(y_scale), "meta": meta,
              "int8": qparams}
    return safeio.save(path, fmt=ARTIFACT_FORMAT, header=header, tensors=tensors)


def save_model(path: Path, *, model: Any, arch: dict[str, Any], role: str, mean: np.ndarray, std: np.ndarray,
               y_scale: float, meta: dict[str, Any]) -> Path:
    """Any trading model as its safe artifact: an eager network as weights, a compiled graph as a graph (the
    counterpart of ``load_artifact``, which reads either)."""
    common = {"arch": arch, "role": role, "mean": mean, "std": std, "y_scale": y_scale, "meta": meta}
    if is_onnx(model):
        return save_onnx_artifact(path, model=model, **common)
    return save_artifact(path, net=model, quantized=False, **common)


def _rebuild(tensors: dict[str, Any], header: dict[str, Any]) -> Any:
    import torch

    net = from_arch(header["arch"]).eval()
    if not header.get("quantized"):
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return net
    net = quantize_int8(net)
    for name, layer in _int8_linears(net):
        q = header["int8"][name]
        weight = torch._make_per_tensor_quantized_tensor(tensors[f"int8.{name}.weight"], q["scale"], q["zero_point"])
        layer.set_weight_bias(weight, tensors[f"int8.{name}.bias"])
    return net


def load_artifact(path: Path, *, device: str = "cpu", threads: int = 1) -> tuple[Any, dict[str, Any]]:
    """Rebuild a network (or open a compiled graph in onnxruntime, on ``device`` with ``threads``) and return it
    with its header, mean and std. The file is a safe artifact (``safeio``): tensors and JSON, never code."""
    if safeio.format_of(path) == ONNX_FORMAT:
        return load_onnx_artifact(path, threads=threads, device=device)
    tensors, header = safeio.load(path, fmt=ARTIFACT_FORMAT)
    with safeio.declared(path, "network"):
        net = _rebuild(tensors, header)
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
    return net.eval(), {**header, "format": ARTIFACT_FORMAT, "mean": mean, "std": std}


def _numpy_arrays() -> list[Any]:
    """What a first-wave artifact's mean and std need besides tensors: plain numpy arrays (no subclass, no
    object dtype — the weights-only unpickler still refuses anything else)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float32)),
            type(np.dtype(np.float64))]


def read_legacy_artifact(path: Path) -> tuple[Any, dict[str, Any]]:
    """A first-wave ``torch.save`` artifact, read weights-only (never code), for ``cvg models convert`` alone:
    nothing serves or trains from one."""
    import torch

    from convergence.platform.errors import UnsafeArtifact

    try:
        with torch.serialization.safe_globals(_numpy_arrays()):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not data of its format
        raise UnsafeArtifact(f"{Path(path).name} is not a first-wave trading artifact of plain data: "
                             f"{type(exc).__name__}", hint="artifacts are data, never code") from None
    if not isinstance(blob, dict) or blob.get("format") != LEGACY_FORMAT:
        raise UnsafeArtifact(f"{Path(path).name} is not a {LEGACY_FORMAT} artifact")
    blob["mean"], blob["std"] = (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                                 for v in (blob["mean"], blob["std"]))
    net = from_arch(blob["arch"]).eval()
    if blob["quantized"]:
        net = quantize_int8(net)
    net.load_state_dict(blob["state_dict"])
    return net.eval(), blob


def save_onnx_artifact(path: Path, *, model: OnnxModel, arch: dict[str, Any], role: str, mean: np.ndarray,
                       std: np.ndarray, y_scale: float, meta: dict[str, Any]) -> Path:
    """A compiled graph as a safe artifact: the graph's bytes as one uint8 tensor, the rest as JSON."""
    import torch

    tensors = {"graph": torch.frombuffer(bytearray(model.graph), dtype=torch.uint8),
               "mean": torch.from_numpy(np.ascontiguousarray(mean)), "std": torch.from_numpy(np.ascontiguousarray(std))}
    header = {"role": role, "arch": arch, "quantized": model.quantized, "y_scale": float(y_scale), "meta": meta,
              "runtime": {"name": "onnxruntime", **runtime_versions(), "optimization": "ORT_ENABLE_ALL",
                          "quantization": "static QDQ: s8 activations, per-channel s8 weights" if model.quantized else None},
              "n_params": model.n_params}
    return safeio.save(path, fmt=ONNX_FORMAT, header=header, tensors=tensors)


def load_onnx_artifact(path: Path, *, threads: int = 1, device: str = "cpu") -> tuple[OnnxModel, dict[str, Any]]:
    """The compiled graph in an onnxruntime session (CUDA when asked and present), with its header."""
    tensors, header = safeio.load(path, fmt=ONNX_FORMAT)
    with safeio.declared(path, "graph"):
        graph = tensors["graph"].numpy().tobytes()
        model = OnnxModel(graph, quantized=bool(header.get("quantized")), threads=threads, device=device,
                          n_params=int(header.get("n_params", 0)))
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
    return model, {**header, "format": ONNX_FORMAT, "mean": mean, "std": std}


# --- the monitoring signature ---------------------------------------------------------------------

def signature(feature_names: list[str], window: int) -> Signature:
    """The trading log: each request row as the network takes it (``window`` bars of ``feature_names``, oldest
    first, raw) and the prediction; drift watches the newest bar's features and the prediction."""
    lagged = [f"{name}@-{lag}" for lag in range(window - 1, 0, -1) for name in feature_names]
    return Signature(logged=(*lagged, *feature_names), output="prediction", watched=tuple(feature_names))


def log_rows(X: np.ndarray) -> np.ndarray:
    """What serving logs for a batch of request rows: the rows themselves, as ``LOG_DTYPE``."""
    return np.asarray(X, dtype=LOG_DTYPE)


def reference(net: Any, Xn: np.ndarray, X: np.ndarray, y_scale: float, sig: Signature) -> np.ndarray:
    """A reference profile's data for ``net``: the watched columns of the raw rows ``X`` (``Xn`` standardized, as
    the network takes them) and the network's predictions, in the signature's column order."""
    output = predict(net, Xn) * y_scale
    watched = [p for p in sig.positions if p >= 0]
    return np.column_stack([X[:, watched].astype(np.float64), output.astype(np.float64)])
