"""Verifiable-ledger benchmark: batched append with the Merkle tree and periodic signing against today's
batched append (the tree switched off) in the same run; inclusion and consistency proofs over a million events.

    .venv/bin/python bench/ledger_bench.py [--events 1000000] [--append-events 200000] [--no-postgres]

Prints a table and writes bench/results/ledger.json. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _people import principal
from audit_bench import _drop_pg, _fresh, _payload, _pg_db

ROOT = Path(__file__).resolve().parent.parent
SIGN_EVERY = 10_000  # the default CVG_LEDGER_CHECKPOINT_EVENTS


def _append(events: int, *, tree: bool, sign: bool) -> float:
    """Events per second of batched appends in transactions of 10,000 events (the same for every variant, so
    the ratio measures the tree and the signing only), optionally without the tree, optionally with a signed
    and published checkpoint in each transaction."""
    from convergence.governance import EventIn, Subject, _merkle, append_many, ledger
    from convergence.platform.db import session_scope

    bench, auditor = principal("bench"), principal("bench-auditor", "auditor")
    real_extend = _merkle.extend
    if not tree:
        _merkle.extend = lambda **_: None  # today's append: the chain only
    try:
        t0 = time.perf_counter()
        done = 0
        while done < events:
            n = min(SIGN_EVERY, events - done)
            batch = [EventIn(bench, "prediction.logged", Subject("prediction", str(done + i)), _payload(done + i))
                     for i in range(n)]
            with session_scope() as s:
                append_many(session=s, events=batch)
                if sign:
                    ledger.checkpoint(session=s, principal=auditor)
            done += n
        return events / (time.perf_counter() - t0)
    finally:
        _merkle.extend = real_extend


def _timed(fn, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1 if len(times) >= 100 else -1]


def _proofs(size: int, runs: int) -> dict:
    """Proof and verification times against the tree of ``size`` events (the whole ledger)."""
    from convergence.governance import ledger
    from convergence.governance.auditor import leaf_hash, verify_consistency, verify_inclusion
    from convergence.platform.db import session_scope

    rng = random.Random(7)
    out = {}
    with session_scope(write=False) as s:
        root = ledger.root(session=s, size=size)
        seqs = [rng.randint(1, size) for _ in range(runs)]
        it = iter(seqs)
        out["inclusion_proof_s"] = _timed(lambda: ledger.inclusion(session=s, seq=next(it), size=size), runs)
        proof = ledger.inclusion(session=s, seq=seqs[0], size=size)
        leaf, path = leaf_hash(bytes.fromhex(proof.event_hash)), [bytes.fromhex(p) for p in proof.proof]
        assert verify_inclusion(seqs[0] - 1, size, leaf, path, root)
        out["inclusion_verify_s"] = _timed(lambda: verify_inclusion(seqs[0] - 1, size, leaf, path, root), runs)
        olds = iter([rng.randint(1, 1000) for _ in range(runs)])
        out["consistency_proof_s"] = _timed(lambda: ledger.consistency(session=s, old_size=next(olds), new_size=size),
                                            runs)
        c = ledger.consistency(session=s, old_size=999, new_size=size)
        cpath = [bytes.fromhex(p) for p in c.proof]
        assert verify_consistency(999, size, cpath, bytes.fromhex(c.old_root), root)
        out["consistency_verify_s"] = _timed(
            lambda: verify_consistency(999, size, cpath, bytes.fromhex(c.old_root), root), runs)
        out["proof_hashes"] = len(proof.proof)
    return out


def bench_backend(label: str, url: str, events: int, append_events: int, runs: int) -> dict:
    _fresh(url)
    row: dict = {"backend": label}
    row["append_chain_only_per_s"] = _append(append_events, tree=False, sign=False)
    _fresh_again(url)
    row["append_tree_signed_per_s"] = _append(append_events, tree=True, sign=True)
    row["append_ratio"] = row["append_tree_signed_per_s"] / row["append_chain_only_per_s"]
    _fresh_again(url)
    print(f"[{label}] building a ledger of {events:,} events…", file=sys.stderr)
    _append(events, tree=True, sign=False)
    row.update(_proofs(events, runs))
    row["events"] = events
    return row


def _fresh_again(url: str) -> None:
    """A new ledger, with a new home: its published checkpoints must not meet the last ledger's (a fork)."""
    from convergence.platform.db import dispose_engines

    dispose_engines()
    os.environ["CVG_HOME"] = tempfile.mkdtemp(dir=os.environ["CVG_HOME"])
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).unlink()
        _fresh(url)
    else:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, hide_parameters=True)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        _fresh(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="ledger size for the proofs")
    parser.add_argument("--append-events", type=int, default=200_000, help="events per append measurement")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CVG_HOME"] = tmp
        rows.append(bench_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.events, args.append_events, args.runs))
        pg = None if args.no_postgres else _pg_db()
        if pg:
            try:
                rows.append(bench_backend("postgres", pg[1], args.events, args.append_events, args.runs))
            finally:
                _drop_pg(pg[0])
    print(f"\n{'backend':<9} {'append chain':>13} {'+tree+signing':>14} {'ratio':>6} {'incl. proof p50/p99':>21} "
          f"{'verify p50':>11} {'cons. proof p50/p99':>21} {'verify p50':>11}")
    for r in rows:
        ip, iv, cp, cv = (r["inclusion_proof_s"], r["inclusion_verify_s"], r["consistency_proof_s"],
                          r["consistency_verify_s"])
        print(f"{r['backend']:<9} {r['append_chain_only_per_s']:>11,.0f}/s {r['append_tree_signed_per_s']:>12,.0f}/s "
              f"{r['append_ratio']:>6.2f} {ip[0] * 1e3:>9.2f}/{ip[1] * 1e3:.2f} ms {iv[0] * 1e6:>8.1f} µs "
              f"{cp[0] * 1e3:>9.2f}/{cp[1] * 1e3:.2f} ms {cv[0] * 1e6:>8.1f} µs")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {"backends": rows, "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "ledger.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'ledger.json'}")


if __name__ == "__main__":
    main()
