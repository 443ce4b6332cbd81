"""Walk-forward on a real two-node Ray cluster vs one node: the speed-up and the parallel efficiency.

    .venv/bin/python bench/ray_cluster_bench.py [--repeats 3] [--folds 4]      # as root

The nodes are a Ray head and a worker in two network namespaces joined by a veth pair (the tests' cluster,
tests/pipelines/_raycluster.py), one CPU each, on this machine. The driver runs on the head and times
``walk_forward`` on the real E-mini ticks with the pipeline's default configuration: first with the head
alone, then after the worker joins; each after one untimed cold run (Ray starts workers that import torch).
Efficiency = speed-up / 2. Prints a table and writes bench/results/ray_cluster.json. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "RESULT "  # the driver's answer line: Ray's driver may print notices on stdout too


def drive(repeats: int, folds: int) -> None:
    """On the head node: join the cluster (CVG_RAY_ADDRESS) and time walk-forward ``repeats`` times."""
    import ray

    from convergence.pipelines import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._runner import connect_ray
    from convergence.pipelines._trading_pipeline import features_for, walk_forward

    cfg = parse_config({"eval": {"folds": folds}})
    fs = features_for(cfg, load_ticks())
    connect_ray()
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    t0 = time.perf_counter()
    walk_forward(fs, cfg)  # cold: worker processes start and import torch
    cold = time.perf_counter() - t0
    times, placed = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = walk_forward(fs, cfg)
        times.append(time.perf_counter() - t0)
        placed.append([r["ray_node"]["node_ip"] for r in results])
    ray.shutdown()
    print(MARK + json.dumps({"nodes": nodes, "rows": len(fs), "cold_s": cold, "times_s": times, "fold_nodes": placed}))


def _measure(cluster, repeats: int, folds: int) -> dict:  # type: ignore[no-untyped-def]
    """One driver on the head node, as a subprocess; its answer line."""
    proc = cluster.popen([sys.executable, str(Path(__file__).resolve()), "--drive", "--repeats", str(repeats),
                          "--folds", str(folds)], env=dict(os.environ), cwd=cluster.root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=1800)
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the driver failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed walk-forwards per cluster size (median kept)")
    parser.add_argument("--folds", type=int, default=4, help="walk-forward folds (even: two nodes share them evenly)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.repeats, args.folds)
        return
    sys.path.append(str(ROOT))  # appended, never first: the repository root would shadow the standard `platform`
    from tests.pipelines._raycluster import RayCluster, cannot_make_namespaces

    reason = cannot_make_namespaces()
    if reason:
        raise SystemExit(f"cannot build the two-node cluster here: {reason}")
    cluster = RayCluster().start(worker=False)
    try:
        one = _measure(cluster, args.repeats, args.folds)
        cluster.start_worker()
        two = _measure(cluster, args.repeats, args.folds)
    finally:
        cluster.stop()
    t1, t2 = statistics.median(one["times_s"]), statistics.median(two["times_s"])
    speedup = t1 / t2
    efficiency = speedup / 2
    spread = sorted({ip for run in two["fold_nodes"] for ip in run})

    print(f"\nwalk-forward, {args.folds} folds over {one['rows']:,} rows (default config), 1 CPU per node, "
          f"median of {args.repeats} warm runs\n")
    print(f"{'cluster':<10} {'nodes':>5} {'median s':>9} {'runs s':>22} {'cold s':>7}")
    for name, r, t in (("one node", one, t1), ("two nodes", two, t2)):
        runs = ", ".join(f"{x:.1f}" for x in r["times_s"])
        print(f"{name:<10} {r['nodes']:>5} {t:>9.2f} {runs:>22} {r['cold_s']:>7.1f}")
    print(f"\nspeed-up {speedup:.2f}x, parallel efficiency {efficiency:.0%} (speed-up / 2 nodes, medians); "
          f"folds ran on {', '.join(spread)}; load average at the end {os.getloadavg()[0]:.1f}")

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_cluster.json").write_text(json.dumps({
        "folds": args.folds, "repeats": args.repeats, "rows": one["rows"], "cpus_per_node": 1,
        "one_node": one, "two_nodes": two, "one_node_median_s": t1, "two_nodes_median_s": t2,
        "speedup": speedup, "efficiency": efficiency, "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        indent=2))
    print(f"wrote {out / 'ray_cluster.json'}")


if __name__ == "__main__":
    main()
