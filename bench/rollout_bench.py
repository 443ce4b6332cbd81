"""Rollout benchmark: what a shadow and a 10 % canary cost the serving replica, against production alone, in
the same run on the same server.

    .venv/bin/python bench/rollout_bench.py [--seconds 8] [--rounds 2]

One `cvg serve trading --float` (the student's shape, 208 features → 32 → 1, SYNTHETIC weights: speed does not
depend on them) pinned to CPU 0, `wrk` pinned to CPU 1 with 64 connections, one JSON row per request and a new
`x-request-key` per request (so a canary takes its share). The server stays up; the rollout changes under it
through the registry, as in production: production alone, then a shadow of an approved second version (scored
after every answer, compared, logged), then that version as a 10 % canary, and production alone again; the
whole sequence ``--rounds`` times. Ratios are against the mean of the production-alone runs. Writes
bench/results/rollout.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _people import principal  # noqa: E402
from serving_bench import BIN, N_IN, free_port, start, stop, wait_ready, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

KEYED_LUA = """counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '__BODY__'
request = function()
  counter = counter + 1
  wrk.headers["x-request-key"] = "client-" .. counter
  return wrk.format()
end
"""


def registry(tmp: Path) -> tuple[dict[str, str], int]:
    """A SQLite registry with the production student and an approved second version (other weights)."""
    import os

    env = {"CVG_HOME": str(tmp / "home"), "CVG_DATABASE_URL": f"sqlite:///{tmp / 'cvg.db'}",
           "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(tmp / "bentoml")}
    os.environ.update(env)
    import numpy as np
    import torch

    from convergence import governance as gov
    from convergence.pipelines import _nets as nets
    from convergence.platform import migrate
    from convergence.platform.db import session_scope

    migrate.upgrade()
    people = {"bench": principal("bench", "registrant"), "val": principal("val", "validator"),
              "boss": principal("boss", "approver"), "ops": principal("ops", "operator")}
    arch = {"n_in": N_IN, "hidden": [32], "dropout": 0.0}
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=N_IN), rng.uniform(0.5, 2, N_IN)
    ids = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = nets.save_artifact(tmp / f"student-{seed}.safetensors", net=nets.from_arch(arch), role="student",
                                  arch=arch, quantized=False, mean=mean, std=std, y_scale=0.01,
                                  meta={"synthetic": True, "seed": seed})
        with session_scope() as s:
            mv = gov.register_model(session=s, principal=people["bench"], name="es-trading-student", artifact=path,
                                    family="trading", role="student")
            gov.validate(session=s, version_id=mv.id, principal=people["val"], evidence=tmp / "evidence.md")
            gov.approve(session=s, version_id=mv.id, principal=people["boss"], reason="bench", safe_output=0.0)
            if seed == 0:
                gov.promote(session=s, version_id=mv.id, principal=people["ops"], reason="bench")
            ids.append(mv.id)
    return env, ids[1]


def set_rollout(url: str, newcomer: int, mode: str | None) -> None:
    """Start ``mode`` (shadow, canary at 10 %) of the newcomer, or end whatever runs; wait until the server
    serves it."""
    import httpx

    from convergence import governance as gov
    from convergence.platform.db import session_scope

    ops = principal("ops", "operator")
    with session_scope() as s:
        gov.rollout.rollback(session=s, principal=ops, name="es-trading-student", reason="bench")
        if mode is not None:
            gov.rollout.deploy(session=s, principal=ops, version_id=newcomer, mode=mode,
                               percent=10 if mode == "canary" else None, min_requests=1, reason="bench")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rollout = httpx.get(url + "/info", timeout=5).json()["trading"].get("rollout")
        if (rollout or {}).get("mode") == mode:
            return
        time.sleep(0.1)
    raise SystemExit(f"the server did not take the {mode} in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvg-rollout-bench-"))
    (tmp / "evidence.md").write_text("benchmark models (synthetic weights)\n")
    env, newcomer = registry(tmp)
    body = json.dumps({"rows": [[0.1] * N_IN]})
    script = tmp / "keyed.lua"
    script.write_text(KEYED_LUA.replace("__BODY__", body))
    port = free_port()
    proc = start([str(BIN / "cvg"), "serve", "trading", "--float", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    runs: dict[str, list[dict[str, Any]]] = {"production alone": [], "with a shadow": [], "canary at 10 %": []}
    try:
        wait_ready(url + "/predict", body, proc)
        wrk(url + "/predict", script, 64, 2)  # warm-up
        for _ in range(args.rounds):
            for name, mode in (("production alone", None), ("with a shadow", "shadow"), ("canary at 10 %", "canary"),
                               ("production alone", None)):
                set_rollout(url, newcomer, mode)
                wrk(url + "/predict", script, 64, 2)
                result = wrk(url + "/predict", script, 64, args.seconds)
                if mode is not None:
                    import httpx

                    info = httpx.get(url + "/info", timeout=5).json()["trading"]
                    result["rollout"] = info.get("rollout")
                runs[name].append(result)
                print(f"  {name}: {result['rps']:,.0f} req/s, p99 {result['p99_ms']:.2f} ms, "
                      f"non-2xx {result['non_2xx']}", flush=True)
        set_rollout(url, newcomer, None)
    finally:
        stop(proc)
    base_rps = statistics.mean(r["rps"] for r in runs["production alone"])
    base_p99 = statistics.mean(r["p99_ms"] for r in runs["production alone"])
    summary = {}
    for name, results in runs.items():
        rps, p99 = statistics.mean(r["rps"] for r in results), statistics.mean(r["p99_ms"] for r in results)
        summary[name] = {"rps": round(rps, 1), "p99_ms": round(p99, 3), "throughput_ratio": round(rps / base_rps, 3),
                         "p99_ratio": round(p99 / base_p99, 3), "runs": results}
    print("\n| 64 connections, one row | req/s | p99 ms | throughput vs production alone | p99 vs production alone |")
    print("|---|---:|---:|---:|---:|")
    for name, row in summary.items():
        print(f"| {name} | {row['rps']:,.0f} | {row['p99_ms']:.2f} | {row['throughput_ratio']:.2f}× | "
              f"{row['p99_ratio']:.2f}× |")
    out = ROOT / "bench" / "results" / "rollout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "summary": summary}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
