"""Training the trading networks: architectures from the config, the training loop, distillation, latency
and size measurements. The network itself, its artifact and prediction belong to the model contract
(``governance.contract.trading``), re-exported here for the steps that use both halves.

Teacher: a deep, wide MLP over a window of bar features. Student: a one-hidden-layer MLP with a
small fraction of the teacher's parameters, trained on a mix of the teacher's outputs and the true
labels. Labels are scaled to unit variance for training; the scale travels in the artifact.
CUDA is used when ``torch.cuda.is_available()``. The INT8 copy is a statically quantized onnxruntime graph
(``_compile``); torch's deprecated dynamic quantization remains only to read first-wave artifacts. The
helpers below (predict, latency, sizes) answer for a compiled graph as for an eager network.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from convergence.governance.contract import trading as contract

# The model contract's half (architecture, artifact, prediction), named here for the training code that calls
# it beside the training half; the contract module is its one owner.
ARTIFACT_FORMAT, LEGACY_FORMAT = contract.ARTIFACT_FORMAT, contract.LEGACY_FORMAT
build_mlp, from_arch, predict, quantize_int8 = contract.build_mlp, contract.from_arch, contract.predict, contract.quantize_int8
save_artifact, save_model, load_artifact = contract.save_artifact, contract.save_model, contract.load_artifact
read_legacy_artifact = contract.read_legacy_artifact


def pick_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def teacher_arch(n_in: int, cfg: Any) -> dict[str, Any]:
    return {"n_in": n_in, "hidden": [cfg.teacher_hidden] * cfg.teacher_layers, "dropout": cfg.teacher_dropout}


def student_arch(n_in: int, cfg: Any) -> dict[str, Any]:
    return {"n_in": n_in, "hidden": [cfg.student_hidden], "dropout": 0.0}


def n_params(net: Any) -> int:
    if contract.is_onnx(net):
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


def distill_targets(teacher_pred: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Mixing the MSE losses to teacher and label equals MSE to their alpha-weighted mean (plus a constant)."""
    return (alpha * teacher_pred + (1 - alpha) * y).astype(np.float32)


def latency(net: Any, n_in: int, *, batch: int, repeats: int) -> float:
    """Median seconds per row on one CPU thread (the serving budget's unit)."""
    import torch

    if contract.is_onnx(net):
        return net.latency(n_in, batch=batch, repeats=repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = net if contract.is_quantized(net) else net.cpu()
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

    if contract.is_onnx(net):
        return len(net.graph)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.tell()


