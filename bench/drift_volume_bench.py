"""Drift at production volume: a drift check over 1,000,000 logged predictions of a trading student (208
features), end to end on SQLite and on PostgreSQL, against (a) the fast path on the same arrays already in
memory and (b) Evidently's DataDriftPreset end to end on the same rows.

    .venv/bin/python bench/drift_volume_bench.py [--rows 1000000] [--backends sqlite,postgres] [--no-evidently]

Real data: the E-mini features of the pipeline's default configuration and a student trained and distilled
with the pipeline's recipe in-process (as bench/compile_bench.py does); its reference profile is the one the
pipeline stores (the model contract's signature: the newest bar's 26 features and the prediction, over the
training rows). The logged traffic is ROWS rows drawn with replacement from the holdout period, each with the
student's own prediction, logged as serving logs them (float32 vectors through ``log_predictions``) over one
hour, beside an hour before and after it that the check must not read. End to end = a fresh Python process
that imports governance and runs ``check_drift`` (the service `cvg drift check` calls: read the window, test
every column, store the report, raise alerts), timed from its start to its exit with its peak RSS (wait4).
Prints a table and writes bench/results/drift_volume.json. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
HOUR = dt.datetime(2026, 12, 1, 12, tzinfo=dt.timezone.utc)
PG_ADMIN = os.environ.get("CVG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def train_student() -> dict[str, Any]:
    """The pipeline's default config on the real ticks: teacher, distilled student, holdout."""
    import torch

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
    student = T.fit_students(teacher, p, train, cfg)["student"]
    torch.set_num_threads(1)
    return {"cfg": cfg, "fs": fs, "p": p, "train": train, "test": test, "net": student}


def _database(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'cvg.db'}"
    import psycopg
    from sqlalchemy.engine import make_url

    u, name = make_url(PG_ADMIN), f"cvg_bench_drift_{os.getpid()}"
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database or "postgres",
                         autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return u.set(database=name).render_as_string(hide_password=False)


def register(url: str, tmp: Path, m: dict[str, Any]) -> int:
    """Migrate, register the student with its reference profile (the pipeline's), four eyes, production."""
    from _people import principal

    from convergence import governance as gov
    from convergence.governance import contract
    from convergence.pipelines import _nets as nets
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines, session_scope
    from convergence.platform.settings import get_settings

    os.environ.update({"CVG_DATABASE_URL": url, "CVG_HOME": str(tmp / "home")})
    dispose_engines()
    get_settings.cache_clear()
    migrate.upgrade(url=url)
    fs, p, train = m["fs"], m["p"], m["train"]
    path = contract.trading.save_artifact(tmp / "student.safetensors", net=m["net"], role="student", quantized=False,
                                          arch=nets.student_arch(fs.X.shape[1], m["cfg"].model), mean=p.mean, std=p.std,
                                          y_scale=p.y_scale, meta={})
    sig = contract.trading.signature(list(fs.feature_names), fs.window)
    reference = contract.trading.reference(m["net"], p.Xn[train.start:train.stop], fs.X[train.start:train.stop],
                                           p.y_scale, sig)
    people = {k: principal(k, role) for k, role in (("bench", "registrant"), ("val", "validator"),
                                                    ("boss", "approver"), ("ops", "operator"), ("monitor", "operator"))}
    evidence = tmp / "evidence.md"
    evidence.write_text("benchmark\n")
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=people["bench"], name="es-trading-student", artifact=path,
                                family="trading", role="student")
        gov.save_profile(session=s, model_version_id=mv.id, data=reference, columns=sig.columns, positions=sig.positions)
        gov.validate(session=s, version_id=mv.id, principal=people["val"], evidence=evidence)
        gov.approve(session=s, version_id=mv.id, principal=people["boss"], reason="bench", safe_output=0.0)
        gov.promote(session=s, version_id=mv.id, principal=people["ops"], reason="bench")
        return mv.id


def log_traffic(version: int, m: dict[str, Any], rows: int) -> np.ndarray:
    """Log ``rows`` holdout rows over HOUR (and 5 % of that in each neighbouring hour); the window's watched
    columns as float32, in memory, for the in-memory baseline."""
    from convergence import governance as gov
    from convergence.governance import contract
    from convergence.platform.db import session_scope

    fs, p, test = m["fs"], m["p"], m["test"]
    y_all = (contract.trading.predict(m["net"], p.Xn[test.start:test.stop]) * p.y_scale).astype(np.float32)
    watched = [q for q in contract.trading.signature(list(fs.feature_names), fs.window).positions if q >= 0]
    rng = np.random.default_rng(0)
    current = np.empty((rows, len(watched) + 1), np.float32)
    for start, n, hour, keep in ((HOUR, rows, 0, True), (HOUR, rows // 20, -1, False), (HOUR, rows // 20, 1, False)):
        at0 = start + dt.timedelta(hours=hour)
        for lo in range(0, n, 50_000):
            k = min(50_000, n - lo)
            idx = rng.integers(0, test.stop - test.start, k)
            X = fs.X[test.start + idx].astype(np.float32)
            y = y_all[idx]
            stamps = [at0 + dt.timedelta(seconds=3599.0 * (lo + i) / n) for i in range(k)]
            batch = [(f"{hour}-{lo + i}", stamps[i], X[i], float(y[i]), 0.2) for i in range(k)]
            with session_scope() as s:
                gov.log_predictions(session=s, model_version_id=version, rows=batch)
            if keep:
                current[lo:lo + k, :-1], current[lo:lo + k, -1] = X[:, watched], y
    return current


def end_to_end(url: str, home: Path, evidently: bool) -> dict[str, Any]:
    """A fresh process runs the check (imports included); wall time from spawn to exit and its peak RSS."""
    code = (
        "import datetime as dt, json, sys, time\n"
        "def hwm():  # this process's own peak (ru_maxrss would carry the forking parent's over exec)\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "    return int(line.split()[1]) / 1024\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from _people import principal\n"
        "from convergence import governance as gov\n"
        "from convergence.platform.db import session_scope\n"
        f"since = dt.datetime.fromisoformat({HOUR.isoformat()!r})\n"
        "people = principal('monitor', 'operator')\n"
        "t0 = time.perf_counter()\n"
        "with session_scope() as s:\n"
        "    report, alerts = gov.check_drift(session=s, principal=people,\n"
        "        name='es-trading-student', since=since, until=since + dt.timedelta(hours=1),\n"
        f"        evidently={evidently})\n"
        "    out = {'rows': report.rows, 'verdicts': {c: r['drifted'] for c, r in report.columns.items()},\n"
        "           'evidently': {c: r.get('evidently_drifted') for c, r in report.columns.items()},\n"
        "           'statistics': {c: r['statistic'] for c, r in report.columns.items()}}\n"
        "out['service_s'] = time.perf_counter() - t0  # read, test, store, commit: after start-up and imports\n"
        "out['peak_rss_mb'] = hwm()\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "CVG_DATABASE_URL": url, "CVG_HOME": str(home)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"the check failed: {done.stderr[-2000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def in_memory(url: str, current: np.ndarray) -> dict[str, Any]:
    """(a): the fast path alone, on the window's arrays already in memory (profile read beforehand)."""
    from convergence import governance as gov
    from convergence.governance._drift import fast_drift
    from convergence.platform.db import session_scope

    with session_scope(write=False) as s:
        profile = s.query(gov.ReferenceProfile).one()
        stats, columns = profile.stats, list(profile.columns)
    fast_drift(stats, columns, current[:1000])  # imports and first-call costs out of the measurement
    t0 = time.perf_counter()
    results = fast_drift(stats, columns, current)
    return {"seconds": time.perf_counter() - t0, "verdicts": {c: r["drifted"] for c, r in results.items()},
            "statistics": {c: r["statistic"] for c, r in results.items()}}


def run(backend: str, m: dict[str, Any], rows: int, evidently: bool) -> dict[str, Any]:
    from convergence.platform.db import dispose_engines

    tmp = Path(tempfile.mkdtemp(prefix=f"cvg-drift-volume-{backend}-"))
    url = _database(backend, tmp)
    version = register(url, tmp, m)
    t0 = time.perf_counter()
    current = log_traffic(version, m, rows)
    logged_s = time.perf_counter() - t0
    dispose_engines()
    fast = end_to_end(url, tmp / "home", evidently=False)
    base = in_memory(url, current)
    del current
    out = {"backend": backend, "rows": fast["rows"], "log_s": logged_s, "end_to_end": fast, "in_memory": base,
           "ratio_to_in_memory": fast["service_s"] / base["seconds"],
           "process_ratio_to_in_memory": fast["seconds"] / base["seconds"],
           "same_verdicts_as_in_memory": fast["verdicts"] == base["verdicts"],
           "max_statistic_gap": max(abs(fast["statistics"][c] - base["statistics"][c]) for c in base["statistics"])}
    if evidently:
        full = end_to_end(url, tmp / "home", evidently=True)
        out.update(evidently=full, evidently_over_fast=full["service_s"] / fast["service_s"],
                   same_verdicts_as_evidently=fast["verdicts"] == full["evidently"])
    dispose_engines()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--no-evidently", dest="evidently", action="store_false")
    args = parser.parse_args()
    t0 = time.perf_counter()
    m = train_student()
    print(f"student trained in {time.perf_counter() - t0:.0f} s ({m['fs'].X.shape[1]} features)")
    results = []
    for backend in args.backends.split(","):
        r = run(backend, m, args.rows, args.evidently)
        results.append(r)
        e = r["end_to_end"]
        print(f"\n{backend}: {r['rows']:,} rows logged in {r['log_s']:.0f} s; drift check {e['service_s']:.2f} s "
              f"(the service: read, test, store; the process with Python's start-up and imports {e['seconds']:.2f} s), "
              f"peak RSS {e['peak_rss_mb']:.0f} MB; in-memory fast path {r['in_memory']['seconds']:.2f} s → "
              f"{r['ratio_to_in_memory']:.2f}× (goal ≤ 3×; the process {r['process_ratio_to_in_memory']:.1f}×); "
              f"same verdicts {r['same_verdicts_as_in_memory']}, "
              f"largest statistic gap {r['max_statistic_gap']:.2g}")
        if "evidently" in r:
            print(f"  with Evidently's report {r['evidently']['service_s']:.1f} s (peak RSS "
                  f"{r['evidently']['peak_rss_mb']:.0f} MB) → the fast check is {r['evidently_over_fast']:.1f}× faster "
                  f"(goal ≥ 10×); same verdicts as Evidently: {r['same_verdicts_as_evidently']}")
        print("  drifted:", sorted(c for c, d in e["verdicts"].items() if d))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift_volume.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'drift_volume.json'}")


if __name__ == "__main__":
    main()
