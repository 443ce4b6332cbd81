"""Trading models benchmark: teacher vs distilled student vs INT8 student vs label-only student, and
walk-forward on Ray vs the same folds one after another.

    .venv/bin/python bench/trading_bench.py

Real data (the E-mini ticks in mlfinpy), the pipeline's default configuration, one run, everything
side by side on this machine. The teacher is trained in-process with the pipeline's settings (the
pipeline trains it with Ray Train; the model is the same shape and recipe). Prints a table and writes
bench/results/trading.json. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch

    from convergence.pipelines import _trading as T
    from convergence.pipelines import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._runner import connect_ray
    from convergence.pipelines._trading_pipeline import features_for, measure, walk_forward

    cfg = parse_config({"eval": {"latency_repeats": 1000}})
    fs = features_for(cfg, load_ticks())
    _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    p = T.prepare(fs, train)
    torch.set_num_threads(os.cpu_count() or 1)
    teacher = T.fit_teacher_local(p, train, cfg)
    models = {"teacher": teacher, **T.fit_students(teacher, p, train, cfg)}
    holdout = T.score(models, fs, p, test, cfg)
    latency, size = measure(models, fs.X.shape[1], cfg.eval.latency_repeats)

    connect_ray()
    t0 = time.perf_counter()
    walk_forward(fs, cfg, parallel=True)  # cold: Ray starts worker processes, each imports torch
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    parallel = walk_forward(fs, cfg, parallel=True)  # warm workers, as on a long-lived cluster
    t_parallel = time.perf_counter() - t0
    t0 = time.perf_counter()
    sequential = walk_forward(fs, cfg, parallel=False)
    t_sequential = time.perf_counter() - t0
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    ray.shutdown()
    workers = min(cpus, cfg.eval.folds)
    same = all(a["student"] == b["student"] for a, b in zip(parallel, sequential))

    print(f"\nE-mini ticks: {fs.bars:,} volume bars, {len(fs):,} rows; holdout {len(test):,} rows\n")
    print(f"{'model':<11} {'params':>10} {'bytes':>10} {'b=1 µs':>8} {'b=64 µs/row':>12} {'OOS mse×1e8':>12} "
          f"{'IC':>7} {'fidelity':>9}")
    for k in ("teacher", "student", "int8", "label_only"):
        h = holdout[k]
        print(f"{k:<11} {size[k]['params']:>10,} {size[k]['bytes']:>10,} {latency[k]['batch1_s'] * 1e6:>8.1f} "
              f"{latency[k]['batch64_row_s'] * 1e6:>12.2f} {h['mse'] * 1e8:>12.3f} {h['ic']:>7.3f} "
              f"{h.get('fidelity', 1.0):>9.3f}")
    speedup = latency["teacher"]["batch1_s"] / latency["student"]["batch1_s"]
    loss_ratio = holdout["student"]["mse"] / holdout["teacher"]["mse"]
    print(f"\nstudent vs teacher at batch 1: {speedup:.1f}x faster (goal ≥ 5x); OOS loss ratio {loss_ratio:.3f} "
          f"(goal ≤ 1.03); fidelity {holdout['student']['fidelity']:.3f} (goal ≥ 0.95)")
    print(f"distilled vs label-only student OOS mse: {holdout['student']['mse'] / holdout['label_only']['mse']:.3f} "
          "(≤ 1 means distillation helped)")
    print(f"INT8 vs float student at batch 1: {latency['student']['batch1_s'] / latency['int8']['batch1_s']:.2f}x, "
          f"at batch 64: {latency['student']['batch64_row_s'] / latency['int8']['batch64_row_s']:.2f}x")
    efficiency = t_sequential / (t_parallel * workers)
    print(f"walk-forward, {cfg.eval.folds} folds: sequential {t_sequential:.1f} s, Ray {t_parallel:.1f} s on {cpus} CPUs "
          f"→ speed-up {t_sequential / t_parallel:.2f}x, parallel efficiency {efficiency:.0%} (goal ≥ 80%); "
          f"identical results: {same}; the first (cold-worker) Ray run took {t_cold:.1f} s")

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "trading.json").write_text(json.dumps({
        "rows": len(fs), "bars": fs.bars, "holdout": holdout, "latency": latency, "size": size,
        "speedup_batch1": speedup, "loss_ratio": loss_ratio, "walk_forward": {
            "sequential_s": t_sequential, "ray_s": t_parallel, "ray_cold_s": t_cold, "cpus": cpus, "efficiency": efficiency,
            "identical": same}, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2, default=float))
    print(f"wrote {out / 'trading.json'}")


if __name__ == "__main__":
    main()
