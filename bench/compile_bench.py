"""Compiled students benchmark: eager PyTorch vs the onnxruntime graph vs the static INT8 graph, for the
distilled student and the teacher, at batch 1 and 64; then serving the eager student vs its compiled graph.

    .venv/bin/python bench/compile_bench.py [--seconds 6] [--no-serving]

Real data (the E-mini ticks in mlfinpy) and the pipeline's default configuration: the teacher is trained
in-process with the pipeline's recipe, the students distilled as the pipeline does, the graphs built by the
compile step (`pipelines/_compile.py`). Latency is the median per row on one thread, each variant measured
in interleaved rounds (median of 5 rounds of 300 calls) so drift of this shared machine hits all alike.
Equivalence is measured on the holdout. Serving: `cvg serve trading --float` (the eager student) vs
`cvg serve trading` (the measured default, the compiled graph), pinned to CPU 0 with `wrk` on CPU 1, as
bench/serving_bench.py does. Prints tables and writes bench/results/compile.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _latencies(models: dict[str, Any], n_in: int, rounds: int = 5, repeats: int = 300) -> dict[str, dict[str, float]]:
    from convergence.pipelines import _nets as nets

    runs: dict[str, dict[int, list[float]]] = {k: {1: [], 64: []} for k in models}
    for _ in range(rounds):
        for key, model in models.items():
            for batch in (1, 64):
                runs[key][batch].append(nets.latency(model, n_in, batch=batch, repeats=repeats if batch == 1
                                                     else repeats // 4))
    return {k: {"batch1_us": statistics.median(v[1]) * 1e6, "batch64_row_us": statistics.median(v[64]) * 1e6}
            for k, v in runs.items()}


def models_bench() -> tuple[dict[str, Any], Any]:
    import torch

    from convergence.pipelines import _compile as compiled
    from convergence.pipelines import _nets as nets
    from convergence.pipelines import _trading as T
    from convergence.pipelines import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._trading_pipeline import features_for

    cfg = parse_config({})
    fs = features_for(cfg, load_ticks())
    _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    p = T.prepare(fs, train)
    torch.set_num_threads(os.cpu_count() or 1)
    teacher = T.fit_teacher_local(p, train, cfg)
    students = T.fit_students(teacher, p, train, cfg)
    calibration = p.Xn[train.stop - cfg.compile.calibration_rows:train.stop]
    models = {"student eager": students["student"],
              "student onnxruntime": compiled.compile_net(students["student"], n_params=0),
              "student onnxruntime INT8": students["int8"],
              "teacher eager": teacher,
              "teacher onnxruntime": compiled.compile_net(teacher, n_params=0),
              "teacher onnxruntime INT8": compiled.quantize_net(teacher, calibration, n_params=0)}
    torch.set_num_threads(1)
    latency = _latencies(models, fs.X.shape[1])
    holdout = p.Xn[test.start:test.stop]
    result: dict[str, Any] = {"rows_holdout": len(holdout), "models": {}}
    for key, model in models.items():
        eager = models[key.split()[0] + " eager"]
        eq = compiled.equivalence(nets.predict(eager, holdout), nets.predict(model, holdout))
        result["models"][key] = {**latency[key], **{k: eq[k] for k in ("max_abs_diff_scaled", "fidelity")}}
    return result, (students["student"], p, cfg, fs)


def serving_bench(student: Any, p: Any, cfg: Any, fs: Any, seconds: int) -> dict[str, Any]:
    """The eager student and its compiled graph, each registered, approved and served by `cvg serve trading`."""
    import serving_bench as sb
    from _people import principal

    from convergence import governance as gov
    from convergence.pipelines import _compile as compiled
    from convergence.pipelines import _nets as nets
    from convergence.platform import migrate
    from convergence.platform.db import session_scope

    tmp = Path(tempfile.mkdtemp(prefix="cvg-compile-bench-"))
    env = {"CVG_HOME": str(tmp / "home"), "CVG_DATABASE_URL": f"sqlite:///{tmp / 'cvg.db'}",
           "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(tmp / "bentoml")}
    os.environ.update(env)
    migrate.upgrade()
    common = {"arch": nets.student_arch(fs.X.shape[1], cfg.model), "mean": p.mean, "std": p.std,
              "y_scale": p.y_scale, "meta": {}}
    eager_path = nets.save_artifact(tmp / "student.safetensors", net=student, role="student", quantized=False, **common)
    graph = compiled.compile_net(student, n_params=nets.n_params(student))
    graph_path = compiled.save_artifact(tmp / "student-onnx.safetensors", model=graph, role="compiled", **common)
    people = {k: principal(k, role) for k, role in (("bench", "registrant"), ("val", "validator"),
                                                    ("boss", "approver"), ("ops", "operator"))}
    evidence = tmp / "evidence.md"
    evidence.write_text("benchmark\n")
    with session_scope() as s:
        eager = gov.register_model(session=s, principal=people["bench"], name="es-trading-student", artifact=eager_path,
                                   family="trading", role="student", metrics={"latency_batch1_s": 1.0})
        child = gov.register_model(session=s, principal=people["bench"], name="es-trading-student-onnx",
                                   artifact=graph_path, family="trading", role="compiled", parent_id=eager.id,
                                   metrics={"latency_batch1_s": 0.5},
                                   params={"compile_gate": {"passed": True}, "compiled_from": eager.id})
        for mv in (eager, child):
            gov.validate(session=s, version_id=mv.id, principal=people["val"], evidence=evidence)
            gov.approve(session=s, version_id=mv.id, principal=people["boss"], reason="bench", safe_output=0.0)
        gov.promote(session=s, version_id=eager.id, principal=people["ops"], reason="bench")
    row = json.dumps({"rows": [fs.X[0].astype(float).round(6).tolist()]})
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{row}\'\n')
    results: dict[str, Any] = {}
    for name, args in (("eager student (--float)", ["--float"]), ("compiled graph (the default)", [])):
        port = sb.free_port()
        proc = sb.start([str(sb.BIN / "cvg"), "serve", "trading", *args, "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            sb.wait_ready(url, row, proc)
            results[name] = {}
            for conns in (1, 64):
                sb.wrk(url, script, conns, 2)
                results[name][f"c{conns}"] = sb.wrk(url, script, conns, seconds)
            results[name]["probe"] = sb.probe(url, row, 4000)
        finally:
            sb.stop(proc)
    return results


def _median_us(fn: Any, repeats: int = 200) -> float:
    import time

    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def language_probe(prefix: int = 64) -> dict[str, Any]:
    """Why generation stays on PyTorch: the default student's shape (2 × 96, context 128, vocab 4,096,
    SYNTHETIC weights), one new token after a prefix of ``prefix``: PyTorch's KV-cached step against a full
    forward over the prefix, in PyTorch and as an ONNX graph in onnxruntime (exported without a cache)."""
    import numpy as np
    import onnxruntime
    import torch

    from convergence.pipelines import _lm as lm

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = lm.build(lm.arch(vocab=4096, context=128, d_model=96, layers=2, heads=2)).eval()
    idx = torch.randint(0, 4096, (1, prefix))
    with torch.inference_mode():
        cache: list[Any] = []
        model(idx[:, :-1], cache=cache)
        step_pos = torch.tensor([prefix - 1])

        def cached_step() -> None:  # a fresh copy of the cache each time: the step must not grow it
            model(idx[:, -1:], positions=step_pos, cache=list(cache))

        out: dict[str, Any] = {"prefix": prefix, "torch_cached_step_us": _median_us(cached_step),
                               "torch_full_forward_us": _median_us(lambda: model(idx))}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lm.onnx"
        try:
            torch.onnx.export(model, (idx,), str(path), dynamo=False, input_names=["idx"], output_names=["logits"],
                              dynamic_axes={"idx": {1: "t"}}, opset_version=17)
        except Exception as exc:  # noqa: BLE001 - the probe reports what the exporter said
            out["onnx_export"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            return out
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        opts.log_severity_level = 3
        sess = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"idx": idx.numpy().astype(np.int64)}
        with torch.inference_mode():
            diff = float(np.max(np.abs(sess.run(None, feed)[0] - model(idx).numpy())))
        out.update(onnx_export="ok", onnx_full_forward_us=_median_us(lambda: sess.run(None, feed)),
                   onnx_max_abs_diff=diff)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--no-serving", action="store_true")
    args = parser.parse_args()
    result, (student, p, cfg, fs) = models_bench()
    print(f"{'model':28} {'batch 1 µs':>11} {'batch 64 µs/row':>16} {'max|Δ|/s.d.':>12} {'fidelity':>9}")
    for key, r in result["models"].items():
        print(f"{key:28} {r['batch1_us']:11.1f} {r['batch64_row_us']:16.2f} {r['max_abs_diff_scaled']:12.2e} "
              f"{r['fidelity']:9.5f}")
    m = result["models"]
    result["ratios"] = {
        "student onnxruntime / eager, batch 1": m["student eager"]["batch1_us"] / m["student onnxruntime"]["batch1_us"],
        "student onnxruntime / eager, batch 64": m["student eager"]["batch64_row_us"]
        / m["student onnxruntime"]["batch64_row_us"],
        "student INT8 / onnxruntime float, batch 64": m["student onnxruntime"]["batch64_row_us"]
        / m["student onnxruntime INT8"]["batch64_row_us"],
        "teacher onnxruntime / eager, batch 64": m["teacher eager"]["batch64_row_us"]
        / m["teacher onnxruntime"]["batch64_row_us"],
        "teacher INT8 / onnxruntime float, batch 64": m["teacher onnxruntime"]["batch64_row_us"]
        / m["teacher onnxruntime INT8"]["batch64_row_us"]}
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:.2f}x")
    result["language"] = language_probe()
    print("language student, one token after 64:", {k: round(v, 1) if isinstance(v, float) else v
                                                    for k, v in result["language"].items()})
    if not args.no_serving:
        result["serving"] = serving_bench(student, p, cfg, fs, args.seconds)
        for name, r in result["serving"].items():
            print(f"{name:30} c1 {r['c1']['rps']:7.0f} req/s p99 {r['c1']['p99_ms']:6.2f} ms (probe "
                  f"{r['probe']['p99_ms']:.2f} ms) | c64 {r['c64']['rps']:7.0f} req/s p99 {r['c64']['p99_ms']:6.1f} ms "
                  f"non-2xx {r['c64']['non_2xx']}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
