"""Where the 1-connection tail goes: `cvg serve trading` with each background task of a replica switched off
in turn, against the raw floor, in one run.

    .venv/bin/python bench/tail_bench.py [--seconds 6] [--probe 6000]

Same set-up as bench/serving_bench.py (the student's shape, SYNTHETIC weights, server on CPU 0, wrk on
CPU 1, one JSON row). Variants change one setting each: the prediction log off (CVG_SERVE_LOG_SAMPLE=0),
the kill-switch poll at its slowest (1 s), both, and the GIL's switch interval at Python's default 5 ms
instead of the replica's 0.5 ms. p99 by wrk and by the client's own timing of sequential
requests. Prints a table and writes bench/results/tail.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "ours, as shipped": {},
    "ours, GIL switch 5 ms (Python's)": {"CVG_SERVE_GIL_SWITCH_MS": "5"},
    "ours, prediction log off": {"CVG_SERVE_LOG_SAMPLE": "0"},
    "ours, kill poll every 1 s": {"CVG_SERVE_KILL_POLL_S": "1.0"},
    "ours, log off + poll 1 s": {"CVG_SERVE_LOG_SAMPLE": "0", "CVG_SERVE_KILL_POLL_S": "1.0"},
}


def main() -> None:
    import serving_bench as sb

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--probe", type=int, default=6000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cvg-tail-bench-"))
    env, artifact, _ = sb.setup_registry(tmp)
    body = json.dumps({"rows": [[0.1] * sb.N_IN]})
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{body}\'\n')
    (tmp / "floor_app.py").write_text(sb.FLOOR_APP.replace("__ARTIFACT__", repr(str(artifact))))
    cases: dict[str, tuple[list[str], dict[str, str], Path | None]] = {
        "floor: Starlette + uvicorn": ([str(sb.BIN / "python"), "-m", "uvicorn", "floor_app:app", "--log-level",
                                        "warning", "--no-access-log"], {}, tmp)}
    for name, extra in VARIANTS.items():
        cases[name] = ([str(sb.BIN / "cvg"), "serve", "trading", "--float"], extra, None)
    results: dict[str, Any] = {}
    for name, (cmd, extra, cwd) in cases.items():
        port = sb.free_port()
        proc = sb.start([*cmd, "--port", str(port)], {**env, **extra}, cwd)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            sb.wait_ready(url, body, proc)
            sb.wrk(url, script, 1, 2)
            results[name] = {"wrk": sb.wrk(url, script, 1, args.seconds), "probe": sb.probe(url, body, args.probe)}
        finally:
            sb.stop(proc)
        r = results[name]
        print(f"{name:<30} {r['wrk']['rps']:>7,.0f} req/s  p50 {r['wrk']['p50_ms']:.2f}  p99 wrk {r['wrk']['p99_ms']:6.2f}"
              f"  probe p50 {r['probe']['p50_ms']:.2f} p99 {r['probe']['p99_ms']:.2f} p99.9 {r['probe']['p999_ms']:.2f} ms",
              flush=True)
    floor = results["floor: Starlette + uvicorn"]
    ours = results["ours, as shipped"]
    print(f"p99 at 1 connection, ours ÷ floor: wrk {ours['wrk']['p99_ms'] / floor['wrk']['p99_ms']:.1f}x, probe "
          f"{ours['probe']['p99_ms'] / floor['probe']['p99_ms']:.1f}x (goal ≤ 3)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tail.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
