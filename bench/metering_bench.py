"""Metering overhead: the same pipeline steps with and without energy/compute metering.

    .venv/bin/python bench/metering_bench.py

Steps on the real E-mini ticks, run through the pipeline runner in-process (features, then the
distilled and label-only students and INT8 from a small teacher) — alternately with CVG_METERING
on and off, 5 times each, medians. Metering adds, per step, two meter readings, one usage row and a
budget check (with one active budget, so the check does real work). Prints and writes
bench/results/metering.json. Not a test.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _people import principal

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from convergence import governance as gov
    from convergence.pipelines import _trading as T
    from convergence.pipelines import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._runner import pipeline_run
    from convergence.pipelines._trading_pipeline import features_for
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines, session_scope
    from convergence.platform.energy import Meter
    from convergence.platform.settings import get_settings

    tmp = tempfile.mkdtemp()
    os.environ.update(CVG_HOME=tmp, CVG_DATABASE_URL=f"sqlite:///{tmp}/bench.db")
    get_settings.cache_clear()
    dispose_engines()
    migrate.upgrade()
    bench = principal("bench", "registrant", "finance")
    with session_scope() as s:
        gov.ensure_project(session=s, name="default", principal=bench)
        gov.set_budget(session=s, principal=bench, project="default", metric="kwh", period=time.strftime("%Y"),
                       hard=1e6, soft=1e5)
    cfg = parse_config({"model": {"teacher_hidden": 512, "teacher_layers": 2, "epochs": 3, "student_epochs": 60}})
    ticks = load_ticks()

    def pipeline() -> float:
        t0 = time.perf_counter()
        with pipeline_run(pipeline="bench", params={}, dataset_id=None, principal=bench) as ctx:
            with ctx.step("build_features"):
                fs = features_for(cfg, ticks)
                _, (train, _test) = time_folds(len(fs), 2, 0.2, cfg.features.horizon)
                p = T.prepare(fs, train)
            with ctx.step("train_teacher"):
                teacher = T.fit_teacher_local(p, train, cfg)
            with ctx.step("distill_student"):
                T.fit_students(teacher, p, train, cfg)
            with session_scope() as s:
                gov.finish_run(session=s, principal=bench, run_id=ctx.run_id)
                ctx.finished = True
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"on": [], "off": []}
    pipeline()  # warm-up: imports, caches
    for _ in range(5):
        for mode in ("off", "on"):
            os.environ["CVG_METERING"] = "1" if mode == "on" else "0"
            get_settings.cache_clear()
            times[mode].append(pipeline())
    m = Meter()
    t0 = time.perf_counter()
    for _ in range(200):
        m.start()
        m.stop()
    per_meter_us = (time.perf_counter() - t0) / 200 * 1e6
    reading = m.stop()
    t0 = time.perf_counter()
    for _ in range(50):  # what each step adds besides the meter: a usage row and the budget checks
        with session_scope() as s:
            gov.record_usage(session=s, project="default", reading=reading, step="bench", principal=bench)
            gov.check_during(session=s, project="default", family=None, principal=bench)
    per_record_ms = (time.perf_counter() - t0) / 50 * 1000
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"\npipeline steps, median of 5: metering off {off:.2f} s, on {on:.2f} s → overhead {(on / off - 1):+.2%} "
          f"(goal ≤ 1 %); runs: off {[round(t, 2) for t in times['off']]}, on {[round(t, 2) for t in times['on']]}")
    print(f"per step: meter start+stop {per_meter_us:.0f} µs (scope: {m.scope}) + usage row and budget check "
          f"{per_record_ms:.1f} ms = {(per_meter_us / 1000 + per_record_ms) * 3 / (off * 1000):.2%} of this 3-step pipeline")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metering.json").write_text(json.dumps({"off_s": times["off"], "on_s": times["on"], "overhead": on / off - 1,
                                                   "meter_start_stop_us": per_meter_us,
                                                   "record_and_check_ms": per_record_ms}, indent=2))
    print(f"wrote {out / 'metering.json'}")


if __name__ == "__main__":
    main()
