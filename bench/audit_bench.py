"""Audit ledger benchmark: append (one per transaction, batched), verify, and the SHA-256 ceiling.

    .venv/bin/python bench/audit_bench.py [--events 100000] [--no-postgres]

Every figure is measured in this run on this machine, side by side, and reported with its ratio to
the SHA-256 ceiling (hashlib over the very same canonical bytes). Prints a table and writes
bench/results/audit.json. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _people import principal

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("CVG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _fresh(url: str) -> None:
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    os.environ["CVG_DATABASE_URL"] = url
    get_settings.cache_clear()
    dispose_engines()
    migrate.upgrade(url=url)


def _payload(i: int) -> dict:
    return {"model_version": 12, "features": [0.1 * i, -0.2, 3.5], "output": 0.0012 * i, "latency_ms": 0.41}


def bench_backend(label: str, url: str, events: int, single: int) -> dict:
    from convergence.governance import EventIn, Subject, append, append_many, verify
    from convergence.platform.db import session_scope

    _fresh(url)
    bench = principal("bench")
    t0 = time.perf_counter()
    for i in range(single):
        with session_scope() as s:
            append(session=s, principal=bench, action="prediction.logged", subject=Subject("prediction", str(i)),
                   payload=_payload(i))
    single_rate = single / (time.perf_counter() - t0)

    batch = [EventIn(bench, "prediction.logged", Subject("prediction", str(i)), _payload(i)) for i in range(events)]
    t0 = time.perf_counter()
    with session_scope() as s:
        append_many(session=s, events=batch)
    batched_rate = events / (time.perf_counter() - t0)

    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        with session_scope(write=False) as s:
            result = verify(session=s)
        rates.append(result.checked / (time.perf_counter() - t0))
        assert result.ok
    return {"backend": label, "append_single_per_s": single_rate, "append_batched_per_s": batched_rate,
            "verify_per_s": statistics.median(rates), "events_verified": result.checked}


def sha256_ceiling(events: int) -> float:
    from convergence.governance import canonical_payload
    from convergence.governance._ledger import event_bytes

    data = [event_bytes(i, "2026-11-24T08:00:00.000000Z", "bench", "prediction.logged", "prediction", str(i),
                        canonical_payload(_payload(i)), "0" * 64) for i in range(events)]
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for b in data:
            hashlib.sha256(b).hexdigest()
        rates.append(events / (time.perf_counter() - t0))
    return statistics.median(rates)


def cli_help_seconds(runs: int = 5) -> float:
    cvg = str(Path(sys.executable).with_name("cvg"))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([cvg, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pg_db() -> tuple[str, str] | None:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(PG_SERVER)
        name = f"cvg_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database or "postgres",
                             autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name, u.set(database=name).render_as_string(hide_password=False)
    except Exception as exc:  # the benchmark reports what it could measure
        print(f"PostgreSQL not measured: {exc}", file=sys.stderr)
        return None


def _drop_pg(name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    from convergence.platform.db import dispose_engines

    dispose_engines()
    u = make_url(PG_SERVER)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database or "postgres",
                         autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=2_000, help="one-per-transaction appends")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    ceiling = sha256_ceiling(args.events)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CVG_HOME"] = tmp
        rows.append(bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.events, args.single))
        pg = None if args.no_postgres else _pg_db()
        if pg:
            try:
                rows.append(bench_backend("postgres", pg[1], args.events // 2, args.single // 2))
            finally:
                _drop_pg(pg[0])
    help_s = cli_help_seconds()

    print(f"\nSHA-256 ceiling (hashlib over the same canonical bytes): {ceiling:,.0f} events/s")
    print(f"{'backend':<10} {'append 1/txn':>14} {'append batched':>15} {'verify':>12} {'verify/ceiling':>15}")
    for r in rows:
        r["verify_vs_sha256_ceiling"] = r["verify_per_s"] / ceiling
        print(f"{r['backend']:<10} {r['append_single_per_s']:>12,.0f}/s {r['append_batched_per_s']:>13,.0f}/s "
              f"{r['verify_per_s']:>10,.0f}/s {r['verify_vs_sha256_ceiling']:>14.1%}")
    print(f"cvg --help: {help_s * 1000:.0f} ms (median of 5)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {"sha256_ceiling_per_s": ceiling, "backends": rows, "cli_help_s": help_s, "events": args.events,
              "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "audit.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'audit.json'}")


if __name__ == "__main__":
    main()
