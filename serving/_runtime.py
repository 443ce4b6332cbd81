"""What every serving replica runs beside its model: the kill-switch watcher, the batched prediction
logger, and Prometheus metrics.

All three keep database work off the request path: the watcher polls the kill switches a few times a
second into memory, and the logger queues rows and writes them in batches from a background thread.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import logging
import queue
import random
import threading
import time
from collections import defaultdict
from typing import Any

from convergence.platform.errors import ConvergenceError

log = logging.getLogger("convergence.serving")


class Ids:
    """Prediction ids: a random 64-bit prefix per process and a counter (uuid4 cost 2 µs a row, this 0.2)."""

    def __init__(self) -> None:
        import itertools
        import secrets

        self.prefix, self.counter = secrets.token_hex(8), itertools.count()

    def take(self, n: int) -> list[str]:
        return [f"{self.prefix}-{next(self.counter):019d}" for _ in range(n)]


class KillWatcher(threading.Thread):
    """Polls ``kill_switches`` and the rollouts; ``state(name)`` answers from memory. A failed poll keeps the
    last state."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="cvg-kill-watcher", daemon=True)
        self.interval_s, self.stop = interval_s, threading.Event()
        self.states: dict[str, dict[str, Any]] = {}
        self.rollouts: dict[str, dict[str, Any]] = {}
        self.polled = threading.Event()

    def poll(self) -> None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        with session_scope(write=False) as s:
            self.states = gov.kill_states(session=s)
            try:  # the kill switches come first: nothing about a rollout may stop them from being read
                self.rollouts = gov.rollout.states(session=s)
            except Exception:  # noqa: BLE001 - keep the last known rollouts, and say why
                log.exception("rollout poll failed; keeping the last known rollouts")
        self.polled.set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except ConvergenceError as exc:  # the database is away: keep serving on the last known state
                log.warning("kill-switch poll failed: %s", exc)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad poll
                log.exception("kill-switch poll failed")
            self.stop.wait(self.interval_s)

    def state(self, name: str) -> dict[str, Any] | None:
        return self.states.get(name)


class PredictionLogger(threading.Thread):
    """Queues each request's (prediction ids, time, features, outputs, latency) and writes the rows in
    batches, one transaction per flush, off the request path. ``sample`` is the share of requests logged.

    A flush builds and binds its rows in small pieces with a short sleep between them: that work holds the
    GIL, and a request waiting for it behind a whole batch was the 1-connection tail (bench/tail_bench.py)."""

    def __init__(self, model_version_id: int, *, sample: float, flush_s: float, max_rows: int = 2048,
                 piece_rows: int = 16, pause_s: float = 0.0002) -> None:
        super().__init__(name="cvg-prediction-log", daemon=True)
        self.model_version_id, self.sample, self.flush_s, self.max_rows = model_version_id, sample, flush_s, max_rows
        self.piece_rows, self.pause_s = piece_rows, pause_s
        self.queue: queue.SimpleQueue[tuple[list[str], dt.datetime, Any, Any, float, bool, bool]] = queue.SimpleQueue()
        self.stop, self.written, self.failed = threading.Event(), 0, 0
        self.pending: list[tuple[str, dt.datetime, Any, float, float, bool, bool]] = []

    def add(self, ids: list[str], features: Any, outputs: Any, latency_ms: float, *, killed: bool = False,
            shadow: bool = False) -> None:
        """One request's rows (ids, a features matrix or list of lists, outputs); expanded off the request path.
        ``killed``: the outputs are a kill switch's safe output, logged for the record and flagged; ``shadow``:
        computed for comparison and never returned."""
        if killed or self.sample >= 1.0 or random.random() < self.sample:
            self.queue.put((ids, dt.datetime.now(dt.timezone.utc), features, outputs, latency_ms, killed, shadow))

    def _piece(self, most: int) -> list[tuple[str, dt.datetime, Any, float, float, bool, bool]]:
        """Up to ``most`` rows: the ones left over from the last request taken, then from the queue."""
        rows, self.pending = self.pending, []
        with contextlib.suppress(queue.Empty):
            while len(rows) < most:
                ids, ts, features, outputs, latency, killed, shadow = self.queue.get_nowait()
                rows.extend((pid, ts, features[i], float(outputs[i]), latency, killed, shadow)
                            for i, pid in enumerate(ids))
        rows, self.pending = rows[:most], rows[most:]
        return rows

    def flush(self) -> int:
        """Write what is queued (at most ``max_rows``) in one transaction; returns the rows written."""
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        rows = self._piece(min(self.piece_rows, self.max_rows))
        if not rows:
            return 0  # no transaction (and no SQLite write lock) for nothing
        taken = len(rows)  # rows taken from the queue: written with the transaction, or counted as lost
        try:
            with session_scope() as s:
                while rows:
                    gov.log_predictions(session=s, model_version_id=self.model_version_id, rows=rows)
                    time.sleep(self.pause_s)  # a real sleep releases the GIL to a waiting request
                    rows = self._piece(min(self.piece_rows, self.max_rows - taken)) if taken < self.max_rows else []
                    taken += len(rows)
        except ConvergenceError as exc:  # keep serving; the rows are counted as lost, never half-written
            self.failed += taken
            log.warning("prediction log: %d rows not written: %s", taken, exc)
            return 0
        except Exception:  # noqa: BLE001 - a row the database refuses must not end the thread (and the log)
            self.failed += taken
            log.exception("prediction log: %d rows not written", taken)
            return 0
        self.written += taken
        return taken

    def run(self) -> None:
        while not self.stop.wait(self.flush_s):
            while self.flush() == self.max_rows and not self.stop.wait(0.002):
                pass
        while self.flush() or self.pending:
            pass


class UsageRecorder(threading.Thread):
    """Every ``interval_s`` (and at shutdown) records the replica's compute and energy with the number of
    predictions served, so budgets can report kWh and CPU-seconds per 1,000 predictions by model version."""

    def __init__(self, model_version_id: int, family: str, predictions: Any, interval_s: float) -> None:
        super().__init__(name="cvg-serving-usage", daemon=True)
        self.model_version_id, self.family, self.predictions, self.interval_s = (model_version_id, family,
                                                                                  predictions, interval_s)
        self.stop, self.seen = threading.Event(), 0
        self.meter: Any = None

    def record(self) -> None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope
        from convergence.platform.energy import Meter

        if self.meter is None:
            self.meter = Meter().start()
            return
        reading, self.meter = self.meter.stop(), Meter().start()
        total = int(self.predictions())
        delta, self.seen = total - self.seen, total
        with session_scope() as s:
            gov.record_usage(session=s, project="default", reading=reading, model_version_id=self.model_version_id,
                             family=self.family, predictions=delta,
                             principal=gov.identity.system_principal(session=s, name="serving"))

    def run(self) -> None:
        self.record()
        while not self.stop.wait(self.interval_s):
            with contextlib.suppress(ConvergenceError):  # the database is away: the next interval covers it
                self.record()


class Metrics:
    """Counters, gauges and histograms in the Prometheus text format (no global registry to collide with)."""

    LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self, prefix: str = "cvg_serving") -> None:
        self.prefix = prefix
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.hists: dict[str, tuple[tuple[float, ...], list[int], list[float]]] = {}
        self.lock = threading.Lock()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self.lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def total(self, name: str) -> float:
        """The sum of a counter over all its labels."""
        with self.lock:
            return sum(v for (n, _), v in self.counters.items() if n == name)

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def observe(self, name: str, value: float, buckets: tuple[float, ...]) -> None:
        with self.lock:
            bounds, counts, total = self.hists.setdefault(name, (buckets, [0] * (len(buckets) + 1), [0.0]))
            counts[bisect.bisect_left(bounds, value)] += 1
            total[0] += value

    def render(self) -> str:
        p, lines = self.prefix, []
        with self.lock:
            for (name, labels), value in sorted(self.counters.items()):
                label = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{p}_{name}{{{label}}} {value:g}" if label else f"{p}_{name} {value:g}")
            for name, value in sorted(self.gauges.items()):
                lines.append(f"{p}_{name} {value:g}")
            for name, (bounds, counts, total) in sorted(self.hists.items()):
                running = 0
                for bound, count in zip(bounds, counts, strict=False):
                    running += count
                    lines.append(f'{p}_{name}_bucket{{le="{bound:g}"}} {running}')
                running += counts[-1]
                lines += [f'{p}_{name}_bucket{{le="+Inf"}} {running}', f"{p}_{name}_sum {total[0]:g}",
                          f"{p}_{name}_count {running}"]
        return "\n".join(lines) + "\n"
