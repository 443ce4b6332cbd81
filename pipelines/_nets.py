"""The trading networks, their training loops, distillation, INT8 quantization and artifacts.

Teacher: a deep, wide MLP over a window of bar features. Student: a one-hidden-layer MLP with a
small fraction of the teacher's parameters, trained on a mix of the teacher's outputs and the true
labels. Labels are scaled to unit variance for training; the scale travels in the artifact.
CUDA is used when ``torch.cuda.is_available()``. The INT8 copy is a statically quantized onnxruntime graph
(``_compile``); torch's deprecated dynamic quantization remains only to read first-wave artifacts. The
helpers below (predict, latency, sizes) answer for a compiled graph as for an eager network.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convergence.pipelines import _compile as compiled
from convergence.pipelines import _safeio as safeio

ARTIFACT_FORMAT = "convergence.trading.mlp.v2"  # safetensors + JSON header
LEGACY_FORMAT = "convergence.trading.mlp.v1"  # first wave: torch.save, read only to convert


def pick_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def teacher_arch(n_in: int, cfg: Any) -> dict[str, Any]:
    return {"n_in": n_in, "hidden": [cfg.teacher_hidden] * cfg.teacher_layers, "dropout": cfg.teacher_dropout}


def student_arch(n_in: int, cfg: Any) -> dict[str, Any]:
    return {"n_in": n_in, "hidden": [cfg.student_hidden], "dropout": 0.0}


def from_arch(arch: dict[str, Any]) -> Any:
    return build_mlp(arch["n_in"], list(arch["hidden"]), arch.get("dropout", 0.0))


def n_params(net: Any) -> int:
    if compiled.is_onnx(net):
        return net.n_params
    return sum(p.numel() for p in net.parameters())


def fit(net: Any, X: np.ndarray, target: np.ndarray, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float, seed: int, device: Any = None,
        on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Plain minibatch Adam on MSE; deterministic for a seed on CPU. Returns the loss per epoch (and hands each
    to ``on_epoch(index, loss)``, the progress line's source)."""
    import torch

    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    net.to(device).train()
    xs, ts = torch.from_numpy(X), torch.from_numpy(target.reshape(-1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for start in range(0, len(xs), batch_size):
            idx = order[start:start + batch_size]
            xb, tb = xs[idx].to(device, non_blocking=True), ts[idx].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(xb), tb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(xs))
        if on_epoch is not None:
            on_epoch(len(losses) - 1, losses[-1])
    net.eval()
    return losses


def predict(net: Any, X: np.ndarray, batch: int = 4096) -> np.ndarray:
    import torch

    if compiled.is_onnx(net):
        return net.predict(X, batch)
    device = next(iter(net.parameters()), torch.empty(0)).device if not _is_quantized(net) else torch.device("cpu")
    out = []
    with torch.inference_mode():
        for start in range(0, len(X), batch):
            out.append(net(torch.from_numpy(X[start:start + batch]).to(device)).float().cpu().numpy().ravel())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def distill_targets(teacher_pred: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Mixing the MSE losses to teacher and label equals MSE to their alpha-weighted mean (plus a constant)."""
    return (alpha * teacher_pred + (1 - alpha) * y).astype(np.float32)


def quantize_int8(net: Any) -> Any:
    """torch's dynamic INT8 (deprecated upstream): only to rebuild first-wave INT8 artifacts for conversion."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the API still does what we need
        return quantize_dynamic(copy.deepcopy(net).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def _is_quantized(net: Any) -> bool:
    return any("quantized" in type(m).__module__ for m in net.modules())


def latency(net: Any, n_in: int, *, batch: int, repeats: int) -> float:
    """Median seconds per row on one CPU thread (the serving budget's unit)."""
    import torch

    if compiled.is_onnx(net):
        return net.latency(n_in, batch=batch, repeats=repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = net if _is_quantized(net) else net.cpu()
        x = torch.randn(batch, n_in)
        times = []
        with torch.inference_mode():
            for _ in range(10):
                net(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t0)
        return statistics.median(times) / batch
    finally:
        torch.set_num_threads(threads)


def serialized_bytes(net: Any) -> int:
    import torch

    if compiled.is_onnx(net):
        return len(net.graph)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.tell()


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
    if compiled.is_onnx(model):
        return compiled.save_artifact(path, model=model, **common)
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
    from convergence.platform.errors import UnsafeArtifact

    if safeio.format_of(path) == compiled.ONNX_FORMAT:
        return compiled.load_artifact(path, threads=threads, device=device)
    tensors, header = safeio.load(path, fmt=ARTIFACT_FORMAT)
    try:
        net = _rebuild(tensors, header)
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # weights that do not fit the declared arch
        raise UnsafeArtifact(f"{Path(path).name} does not hold the network its header declares: "
                             f"{type(exc).__name__}") from None
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
