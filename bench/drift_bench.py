"""Drift benchmark: the fast path vs Evidently's DataDriftPreset on the same data, and webhook deliveries/s.

    .venv/bin/python bench/drift_bench.py [--rows 1000000]

SYNTHETIC data (a benchmark, not a model): 20 numeric columns, a reference and a current window of
--rows rows each, half of the current columns shifted by 0.3 sd. Both methods see the same frames;
their per-column verdicts are compared. The profile (reference quantiles) is built once, at
registration in real use, and timed separately. Prints and writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _people import principal

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def drift(rows: int) -> dict:
    import pandas as pd

    from convergence.governance._drift import column_stats, evidently_report, fast_drift

    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(20)]
    ref = rng.normal(0, 1, (rows, 20))
    cur = rng.normal(0, 1, (rows, 20))
    cur[:, :10] += 0.3
    t0 = time.perf_counter()
    stats = {c: column_stats(ref[:, i]) for i, c in enumerate(cols)}
    t_profile = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = fast_drift(stats, cols, cur)
    t_fast = time.perf_counter() - t0
    ref_df, cur_df = pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, _, evid = evidently_report(ref_df, cur_df, Path(tmp))
        t_evidently = time.perf_counter() - t0
    same = {c: fast[c]["drifted"] for c in cols} == evid
    return {"rows": rows, "columns": 20, "profile_s": t_profile, "fast_s": t_fast, "evidently_s": t_evidently,
            "speedup": t_evidently / t_fast, "same_verdicts": same,
            "drifted_fast": sum(fast[c]["drifted"] for c in cols), "drifted_evidently": sum(evid.values())}


def webhooks(n: int) -> dict:
    from convergence import governance as gov
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines, session_scope
    from convergence.platform.settings import get_settings

    tmp = tempfile.mkdtemp()
    os.environ.update(CVG_HOME=tmp, CVG_DATABASE_URL=f"sqlite:///{tmp}/bench.db")
    get_settings.cache_clear()
    dispose_engines()
    migrate.upgrade()
    admin = principal("bench-admin", "admin")
    with gov.ReferenceReceiver("bench-secret") as receiver:
        with session_scope() as s:
            gov.subscribe(session=s, principal=admin, url=receiver.url, events=["drift.alert"], secret="bench-secret")
            for i in range(n):
                gov.enqueue(session=s, event_type="drift.alert", data={"i": i})
        t0 = time.perf_counter()
        counts = gov.deliver_until_idle(deadline_s=600)
        elapsed = time.perf_counter() - t0
        accepted = len(receiver.events)
    return {"deliveries": n, "delivered": counts["delivered"], "accepted_by_receiver": accepted,
            "seconds": elapsed, "per_s": counts["delivered"] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=1000)
    args = parser.parse_args()
    d = drift(args.rows)
    print(f"\n{d['rows']:,} rows x 20 columns vs a {d['rows']:,}-row reference:")
    print(f"  fast path {d['fast_s']:.2f} s   Evidently DataDriftPreset {d['evidently_s']:.1f} s   → {d['speedup']:.0f}x "
          f"(goal ≥ 5x); same per-column verdicts: {d['same_verdicts']} ({d['drifted_fast']} vs "
          f"{d['drifted_evidently']} drifted); reference profile built once in {d['profile_s']:.2f} s")
    w = webhooks(args.deliveries)
    print(f"webhooks: {w['delivered']:,} signed deliveries to a local receiver in {w['seconds']:.2f} s = "
          f"{w['per_s']:,.0f}/s (SQLite outbox, one deliverer); receiver accepted {w['accepted_by_receiver']:,}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps({"drift": d, "webhooks": w}, indent=2))
    print(f"wrote {out / 'drift.json'}")


if __name__ == "__main__":
    main()
