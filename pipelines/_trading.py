"""The trading pipeline's steps: data → features → teacher (Ray Train) → distilled student → INT8 →
walk-forward folds (parallel Ray tasks) → compiled graphs → holdout scores → gates.

Each step is a plain function of plain inputs, so the local Ray runner, ``cvg pipelines step``
(what Kubeflow's components run) and the tests all call the same code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from convergence.pipelines import _compile as compiled
from convergence.pipelines import _nets as nets
from convergence.pipelines import _progress as progress
from convergence.pipelines._boundary import bounded
from convergence.pipelines._config import TradingConfig
from convergence.pipelines._features import FeatureSet, standardize
from convergence.pipelines._metrics import equity_curve, evaluate, pearson, periods_per_year
from convergence.pipelines._runner import fit_on_ray_train, ray_node, report_checkpoint

STEPS = ("load_data", "build_features", "train_teacher", "distill_student", "walk_forward", "compile", "evaluate",
         "gate")
COMPILED = {"student_onnx": ("student", "compiled"), "teacher_onnx": ("teacher", "compiled"),
            "int8": ("student", "quantized")}  # key → (the eager network it reproduces, its registry role)


@dataclasses.dataclass
class Prepared:
    """Standardized inputs and unit-variance labels for one train/test split."""

    Xn: np.ndarray
    yt: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    y_scale: float


def prepare(fs: FeatureSet, train: range) -> Prepared:
    mean, std = standardize(fs.X, train)
    y_scale = float(fs.y[train.start:train.stop].std()) or 1.0
    return Prepared(((fs.X - mean) / std).astype(np.float32), (fs.y / y_scale).astype(np.float32), mean, std, y_scale)


def fit_teacher_local(p: Prepared, train: range, cfg: TradingConfig, *, on_epoch: Any = None) -> Any:
    import torch

    torch.manual_seed(cfg.seed)
    teacher = nets.from_arch(nets.teacher_arch(p.Xn.shape[1], cfg.model))
    m = cfg.model
    nets.fit(teacher, p.Xn[train.start:train.stop], p.yt[train.start:train.stop], epochs=m.epochs,
             batch_size=m.batch_size, lr=m.lr, weight_decay=m.weight_decay, seed=cfg.seed, device=nets.pick_device(),
             on_epoch=on_epoch)
    return teacher.cpu().eval()


def fit_students(teacher: Any, p: Prepared, train: range, cfg: TradingConfig, *, board: Any = None,
                 step: str = "distill_student", who: str = "") -> dict[str, Any]:
    """The distilled student, the same network on labels only (the control), and the INT8 copy (an onnxruntime
    graph, calibrated on the last training rows). Each epoch's loss goes to ``board`` (progress)."""
    import torch

    m, n_in = cfg.model, p.Xn.shape[1]
    X, yt = p.Xn[train.start:train.stop], p.yt[train.start:train.stop]
    teacher_pred = nets.predict(teacher, X)
    out = {}
    for name, target in (("student", nets.distill_targets(teacher_pred, yt, m.distill_alpha)), ("label_only", yt)):
        torch.manual_seed(cfg.seed + 1)  # both students start from the same weights: only the target differs
        net = nets.from_arch(nets.student_arch(n_in, m))
        nets.fit(net, X, target, epochs=m.student_epochs, batch_size=m.batch_size, lr=m.student_lr,
                 weight_decay=1e-4, seed=cfg.seed + 1,
                 on_epoch=progress.per_epoch(board, step, total=m.student_epochs, who=who or name,
                                             unit=f"{name} epoch" if who else "epoch"))
        out[name] = net.cpu().eval()
    out["int8"] = compiled.quantize_net(out["student"], X[-cfg.compile.calibration_rows:],
                                        n_params=nets.n_params(out["student"]))
    return out


def compile_models(models: dict[str, Any], only: str | None = None) -> dict[str, Any]:
    """The float student and teacher (or ``only`` one of them) as onnxruntime graphs; the INT8 graph comes with
    the students."""
    return {key: compiled.compile_net(models[parent], n_params=nets.n_params(models[parent]))
            for key, (parent, role) in COMPILED.items() if role == "compiled" and (only is None or parent == only)}


def compile_evidence(models: dict[str, Any], p: Prepared, test: range, cfg: TradingConfig,
                     label_sd: float) -> dict[str, Any]:
    """Each compiled graph against the eager network it came from, on the holdout, and its gate's verdict."""
    sl = slice(test.start, test.stop)
    out = {}
    for key, (parent, role) in COMPILED.items():
        if key in models and parent in models:
            eq = compiled.equivalence(nets.predict(models[parent], p.Xn[sl]) * p.y_scale,
                                      nets.predict(models[key], p.Xn[sl]) * p.y_scale)
            out[key] = {"parent": parent, "role": role, "equivalence": eq,
                        "gate": compiled.check(eq, quantized=role == "quantized", gates=cfg.gates, label_sd=label_sd)}
    return out


def score(models: dict[str, Any], fs: FeatureSet, p: Prepared, test: range, cfg: TradingConfig) -> dict[str, Any]:
    """Out-of-sample metrics of every model on ``test``, fidelity to the teacher, and the INT8 gap."""
    sl = slice(test.start, test.stop)
    ppy = periods_per_year(fs.times)
    preds = {name: nets.predict(net, p.Xn[sl]) * p.y_scale for name, net in models.items()}
    result: dict[str, Any] = {name: evaluate(pred, fs.y[sl], fs.next_ret[sl], cost_bps=cfg.eval.cost_bps,
                                             periods_per_year=ppy) for name, pred in preds.items()}
    if "teacher" in preds:
        for name in ("student", "label_only", "int8"):
            if name in preds:
                result[name]["fidelity"] = pearson(preds[name], preds["teacher"])
    if "int8" in preds and "student" in preds:
        label_sd = float(fs.y[sl].std()) or 1.0
        result["int8_max_gap_sd"] = float(np.max(np.abs(preds["int8"] - preds["student"]))) / label_sd
    result["rows"] = len(test)
    return result


def fold_task(fs: FeatureSet, train: range, test: range, cfg: TradingConfig, fold: int,
              board: Any = None) -> dict[str, Any]:
    """One walk-forward fold, end to end on one thread (a Ray task, or a loop iteration); tells ``board`` its
    epochs and when it is done, and records which Ray node ran it."""
    import torch

    torch.set_num_threads(1)
    who = f"fold {fold}"
    p = prepare(fs, train)
    teacher = fit_teacher_local(p, train, cfg, on_epoch=progress.per_epoch(
        board, "walk_forward", total=cfg.model.epochs, who=who, unit="teacher epoch"))
    models = {"teacher": teacher, **fit_students(teacher, p, train, cfg, board=board, step="walk_forward", who=who)}
    out = score(models, fs, p, test, cfg)
    sl = slice(test.start, test.stop)  # the student's equity over the fold, for the model card's plot
    out["equity"] = equity_curve(nets.predict(models["student"], p.Xn[sl]) * p.y_scale, fs.next_ret[sl],
                                 cost_bps=cfg.eval.cost_bps)
    progress.tell(board, "walk_forward", "done", who)
    out.update(fold=fold, train=[train.start, train.stop], test=[test.start, test.stop],
               train_end=str(fs.label_end[train.stop - 1]), test_start=str(fs.times[test.start]), ray_node=ray_node())
    return out


bounded_fold_task = bounded("walk_forward")(fold_task)


# --- the teacher on Ray Train ----------------------------------------------------------------------

def _teacher_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: data-parallel (DDP) over a strided shard, checkpoint per epoch."""
    import torch
    from ray import train
    from ray.train.torch import get_device, prepare_model

    torch.set_num_threads(max(1, config["threads"]))
    torch.manual_seed(config["seed"])
    ctx = train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    X, y = config["X"][rank::world], config["y"][rank::world]
    net = prepare_model(nets.from_arch(config["arch"]))
    device = get_device()
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    gen = torch.Generator().manual_seed(config["seed"] + rank)
    xs, ys = torch.from_numpy(X), torch.from_numpy(y.reshape(-1, 1))
    steps = -(-len(config["X"]) // (world * config["batch_size"]))  # equal step counts keep DDP in lockstep
    for epoch in range(config["epochs"]):
        net.train()
        order = torch.randperm(len(xs), generator=gen)
        total, seen = 0.0, 0
        for s in range(steps):
            idx = order[(s * config["batch_size"]) % len(xs):][:config["batch_size"]]
            xb, yb = xs[idx].to(device), ys[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(xb), yb)
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        if rank == 0:
            progress.tell(config.get("board"), "train_teacher", f"epoch {epoch + 1}/{config['epochs']}, "
                          f"loss {total / max(seen, 1):.4g}")
        report_checkpoint({"epoch": epoch, "loss": total / max(seen, 1)}, net, rank)


def train_teacher_ray(p: Prepared, train: range, cfg: TradingConfig, storage: Path, run_name: str, *,
                      board: Any = None) -> tuple[Any, dict[str, Any]]:
    """Train the teacher with Ray Train's TorchTrainer; return it (CPU) and the last reported metrics. Rank 0
    tells ``board`` each epoch's loss."""
    arch = nets.teacher_arch(p.Xn.shape[1], cfg.model)
    m = cfg.model
    state, metrics = fit_on_ray_train(
        _teacher_loop, {"X": p.Xn[train.start:train.stop], "y": p.yt[train.start:train.stop], "arch": arch,
                        "epochs": m.epochs, "batch_size": m.batch_size, "lr": m.lr, "weight_decay": m.weight_decay,
                        "seed": cfg.seed, "threads": 1, "board": board},
        workers=m.workers, storage=storage, run_name=run_name)
    teacher = nets.from_arch(arch)
    teacher.load_state_dict(state)
    return teacher.eval(), metrics


# --- gates ----------------------------------------------------------------------------------------

def gate(holdout: dict[str, Any], latencies: dict[str, dict[str, float]], cfg: TradingConfig) -> dict[str, Any]:
    """Check the thresholds in ``cfg.gates``; every check is reported, passed or not."""
    g = cfg.gates
    speedup = latencies["teacher"]["batch1_s"] / max(latencies["student"]["batch1_s"], 1e-12)
    loss_ratio = holdout["student"]["mse"] / max(holdout["teacher"]["mse"], 1e-30)
    checks = [
        ("student fidelity to teacher", holdout["student"]["fidelity"], ">=", g.min_fidelity),
        ("student / teacher out-of-sample loss", loss_ratio, "<=", g.max_loss_ratio),
        ("teacher / student latency at batch 1", speedup, ">=", g.min_speedup),
    ]  # the compiled graphs (INT8 included) have gates of their own: one that fails is not registered
    results = [{"check": name, "value": value, "op": op, "threshold": limit,
                "passed": bool(value >= limit if op == ">=" else value <= limit)} for name, value, op, limit in checks]
    return {"passed": all(r["passed"] for r in results), "checks": results,
            "failed": [f"{r['check']} = {r['value']:.4g}, needs {r['op']} {r['threshold']}" for r in results
                       if not r["passed"]]}
