"""A replica's side of a governed rollout: the versions it serves (arms), the deterministic split, the guards'
measurements, and the thread that follows the deployments table.

The production arm answers every request a canary does not take. A shadow's answers and production's answers
to canary requests are computed after the answer went out (tasks on the event loop, bounded so a slow newcomer
never queues up behind production) and compared there. A broken guard stops this replica's newcomer at once and
rolls the deployment back in the database, which every other replica reads at its next poll.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from typing import Any

import numpy as np

from convergence.platform.errors import ConvergenceError

log = logging.getLogger("convergence.serving")

KEY_HEADER = "x-request-key"  # a client's own key for the split: one key, one version


class Arm:
    """One version a replica serves: its model, batcher and prediction log, and what each answer says of it."""

    def __init__(self, loaded: Any, batcher: Any, logger: Any, route: str) -> None:
        self.loaded, self.batcher, self.logger = loaded, batcher, logger
        self.relabel(route)

    def relabel(self, route: str) -> None:
        """``production`` or ``canary``: written into every answer's head and headers, fixed here once."""
        e = self.loaded.extra
        self.route = route
        self.head = {"model": self.loaded.name, "version": self.loaded.version, "version_id": self.loaded.version_id,
                     "artifact_sha256": e.get("sha256"), "approval_seq": e.get("approval_seq"), "route": route}
        import json

        self.head_json = json.dumps(self.head)[:-1]  # the start of a /predict answer, written directly
        self.headers = {"x-model-name": self.loaded.name, "x-model-version": str(self.loaded.version_id),
                        "x-model-version-number": str(self.loaded.version),
                        "x-model-artifact-sha256": str(e.get("sha256")), "x-approval-seq": str(e.get("approval_seq")),
                        "x-route": route}


def split_key(header: str | None, body: bytes) -> bytes:
    """What decides the version: the client's ``x-request-key`` if sent, else the request's body (a prompt)."""
    return header.encode("utf-8", "surrogatepass")[:512] if header else body


def bucket(key: bytes) -> float:
    """A request key's place in [0, 100): SHA-256, so every replica puts the same key in the same place."""
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 1_000_000 / 10_000


class GuardMeter:
    """What this replica measured of the newcomer: answers and failures, recent latencies (p99), and answers
    compared with production's (disagreement, mean absolute difference, KS drift of recent outputs)."""

    def __init__(self, guards: dict[str, Any], window: int = 2000) -> None:
        self.guards = guards
        self.bound = float(guards.get("disagreement_bound") or 0.0)
        self.requests = self.errors = self.compared = self.disagreements = 0
        self.abs_diff_sum = 0.0
        self.latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self.new: collections.deque[float] = collections.deque(maxlen=window)
        self.old: collections.deque[float] = collections.deque(maxlen=window)
        self.lock = threading.Lock()

    def answered(self, latency_s: float) -> None:
        with self.lock:
            self.requests += 1
            self.latencies.append(latency_s * 1000)

    def failed(self) -> None:
        with self.lock:
            self.requests += 1
            self.errors += 1

    def compare(self, new: Any, old: Any, *, greedy: bool = True) -> None:
        """Trading: two arrays of predictions. Language: two (text, tokens generated) pairs (a differing
        continuation at temperature 0 disagrees; the difference measured is in tokens generated)."""
        if isinstance(new, tuple):  # (text, tokens generated)
            news, olds, n = [float(new[1])], [float(old[1])], 1
            differ, total = int(greedy and new[0] != old[0]), float(abs(new[1] - old[1]))
        elif isinstance(new, np.ndarray):
            diff = np.abs(np.asarray(new, np.float64) - np.asarray(old, np.float64))
            news, olds, n, differ = new.tolist(), np.asarray(old).tolist(), len(diff), int((diff > self.bound).sum())
            total = float(diff.sum())
        else:
            raise TypeError("compare takes two prediction arrays or two (text, tokens) pairs")
        with self.lock:
            self.compared += n
            self.disagreements += differ
            self.abs_diff_sum += total
            self.new.extend(news)
            self.old.extend(olds)

    def counts(self) -> dict[str, Any]:
        with self.lock:
            lat, new, old = list(self.latencies), np.array(self.new), np.array(self.old)
            out = {"requests": self.requests, "errors": self.errors, "compared": self.compared,
                   "disagreements": self.disagreements, "abs_diff_sum": self.abs_diff_sum}
        out["p99_ms"] = float(np.percentile(lat, 99)) if lat else None
        out["output_drift"] = ks_statistic(new, old) if len(new) and len(old) else None
        return out


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))
    return round(float(gap.max()), 6)


class Rollout:
    """The deployment this replica follows now: the newcomer's arm, its split and its guards."""

    def __init__(self, state: dict[str, Any], arm: Arm, *, most_pending: int = 256) -> None:
        self.id, self.mode, self.percent = state["id"], state["mode"], float(state["percent"])
        self.guards, self.arm = state["guards"], arm
        self.meter = GuardMeter(self.guards)
        self.tripped: list[dict[str, Any]] | None = None
        self.tasks: set[Any] = set()  # comparisons in flight (held, so the loop does not drop them)
        self.most_pending, self.skipped = most_pending, 0
        self.last_check = 0.0
        self.on_trip: Any = None  # callback(): wakes the thread that writes the rollback

    @property
    def live(self) -> bool:
        return self.tripped is None

    def takes(self, key: bytes) -> bool:
        """Whether the canary answers this request (a shadow never answers)."""
        return self.live and self.mode == "canary" and bucket(key) < self.percent

    def room(self) -> bool:
        """Whether another comparison may start; when not, it is skipped and counted (production's tail first)."""
        if self.live and len(self.tasks) < self.most_pending:
            return True
        self.skipped += 1
        return False

    def spawn(self, coro: Any) -> None:
        import asyncio

        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def check(self, *, every_s: float = 0.02) -> None:
        """Judge the guards (at most every ``every_s``); a breach stops the newcomer here at once."""
        from convergence.governance import rollout

        now = time.monotonic()
        if not self.live or now - self.last_check < every_s:
            return
        self.last_check = now
        broken = rollout.breaches(self.guards, self.meter.counts())
        if broken:
            self.tripped = broken
            if self.on_trip:
                self.on_trip()


class RolloutThread(threading.Thread):
    """Follows the deployments the kill watcher polls, for the name this replica serves: loads a newcomer,
    makes it production on promotion, drops it on rollback, reports what it measured, and writes a trip."""

    def __init__(self, replica: Any, *, model_name: str, replica_id: str, report_s: float, make_arm: Any) -> None:
        super().__init__(name="cvg-rollout", daemon=True)
        self.replica, self.model_name, self.replica_id, self.report_s = replica, model_name, replica_id, report_s
        self.make_arm = make_arm  # (version_id, route) -> Arm: loads and checks a version as serving does
        self.stop, self.wake = threading.Event(), threading.Event()
        self.last_report, self.failed_load = 0.0, None
        self.ended: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except ConvergenceError as exc:  # the database is away: serve on, try again
                log.warning("rollout: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must outlive one bad step, production keeps serving
                log.exception("rollout step failed")
            self.wake.wait(0.1)
            self.wake.clear()

    def step(self) -> None:
        ro, state = self.replica.rollout, self.replica.watcher.rollouts.get(self.model_name)
        if ro is not None and ro.tripped is not None:
            self._trip(ro)
            return
        if state is None or state["status"] != "active":
            if ro is not None and (state is None or state["id"] == ro.id):
                self._finish(ro, state)
            return
        if ro is None or ro.id != state["id"]:
            if state["id"] not in self.ended and self.failed_load != state["id"]:
                self._start(state)
            return
        if time.monotonic() - self.last_report >= self.report_s:
            self._report(ro)

    def _start(self, state: dict[str, Any]) -> None:
        try:
            arm = self.make_arm(state["version_id"], "canary" if state["mode"] == "canary" else "shadow")
        except ConvergenceError as exc:
            self.failed_load = state["id"]
            log.error("rollout %s: version %s cannot serve here: %s", state["id"], state["version_id"], exc)
            return
        ro = Rollout(state, arm)
        ro.on_trip = self.wake.set
        self.replica.rollout = ro
        log.info("rollout %s: %s of version %s", state["id"], state["mode"], state["version_id"])

    def _finish(self, ro: Rollout, state: dict[str, Any] | None) -> None:
        """Promoted: the newcomer answers everything from now on. Rolled back (or gone): it stops."""
        self.replica.rollout = None
        self.ended.add(ro.id)
        if state is not None and state["status"] == "promoted":
            old = self.replica.arm
            ro.arm.relabel("production")
            self.replica.promote(ro.arm)
            old.logger.stop.set()
        else:
            ro.arm.logger.stop.set()

    def _report(self, ro: Rollout) -> None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        counts = {**ro.meter.counts(), "skipped": ro.skipped}
        with session_scope() as s:
            gov.rollout.report(session=s, deployment_id=ro.id, replica=self.replica_id, counts=counts)
        self.last_report = time.monotonic()

    def _trip(self, ro: Rollout) -> None:
        """Write the rollback this replica's guard decided, then deliver its webhook (best effort, retried)."""
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        counts = {**ro.meter.counts(), "skipped": ro.skipped}
        with session_scope() as s:
            gov.rollout.report(session=s, deployment_id=ro.id, replica=self.replica_id, counts=counts)
            gov.rollout.trip(session=s, deployment_id=ro.id, replica=self.replica_id, broken=ro.tripped or [],
                             measured=counts)
        self.replica.rollout = None
        self.ended.add(ro.id)
        ro.arm.logger.stop.set()
        log.warning("rollout %s rolled back: %s", ro.id, ro.tripped)
        try:
            gov.deliver_until_idle(deadline_s=5.0)
        except ConvergenceError as exc:
            log.warning("rollback webhook not delivered yet: %s", exc)


async def rows_answer(arm: Arm, ro: Rollout | None, X: np.ndarray, key: bytes) -> tuple[Arm, np.ndarray]:
    """Which arm answers ``X`` and its predictions: the canary for its share of keys (production if the canary
    fails: counted against it), else production, with a shadow's scoring scheduled after the answer."""
    if ro is not None and ro.takes(key):
        t0 = time.perf_counter()
        try:
            y = await ro.arm.batcher.submit(X)
            if not np.isfinite(y).all():
                raise ValueError("non-finite output")
        except Exception:  # noqa: BLE001 - the newcomer's failure is measured, the client gets production's answer
            ro.meter.failed()
            ro.check()
        else:
            ro.meter.answered(time.perf_counter() - t0)
            if ro.room():
                ro.spawn(_score_rows(ro, arm, X, y, newcomer_answered=True))
            return ro.arm, y
    y = await arm.batcher.submit(X)
    if ro is not None and ro.mode == "shadow" and ro.room():
        ro.spawn(_score_rows(ro, arm, X, y, newcomer_answered=False))
    return arm, y


async def _score_rows(ro: Rollout, arm: Arm, X: np.ndarray, answered: np.ndarray, *, newcomer_answered: bool) -> None:
    """Off the request's path: the other arm's predictions for the same rows, compared and logged as shadow."""
    from convergence.serving._app import IDS

    other = arm if newcomer_answered else ro.arm
    t0 = time.perf_counter()
    try:
        y = await other.batcher.submit(X)
        if not np.isfinite(y).all():
            raise ValueError("non-finite output")
    except Exception:  # noqa: BLE001 - a shadow's failure is measured, never seen by a client
        if not newcomer_answered:
            ro.meter.failed()
            ro.check()
        return
    latency = time.perf_counter() - t0
    if not newcomer_answered:
        ro.meter.answered(latency)
    new, old = (answered, y) if newcomer_answered else (y, answered)
    ro.meter.compare(new, old)
    other.logger.add(IDS.take(len(X)), X, y, latency * 1000 / len(X), shadow=True)
    ro.check()


async def prompt_answer(arm: Arm, ro: Rollout | None, prompt: str, params: tuple[int, float, int],
                        key: bytes) -> tuple[Arm, dict[str, Any]]:
    """The language family's ``rows_answer``: the canary by prompt (or key) hash, a shadow scored afterwards;
    disagreement is a differing continuation at temperature 0."""
    if ro is not None and ro.takes(key):
        t0 = time.perf_counter()
        try:
            out = await generation(ro.arm, prompt, *params)
        except Exception:  # noqa: BLE001 - measured against the canary; the client gets production's answer
            ro.meter.failed()
            ro.check()
        else:
            ro.meter.answered(time.perf_counter() - t0)
            if ro.room():
                ro.spawn(_score_prompt(ro, arm, prompt, params, out, newcomer_answered=True))
            return ro.arm, out
    out = await generation(arm, prompt, *params)
    if ro is not None and ro.mode == "shadow" and ro.room():
        ro.spawn(_score_prompt(ro, arm, prompt, params, out, newcomer_answered=False))
    return arm, out


async def generation(arm: Arm, prompt: str, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """One generation on ``arm`` with its own tokenizer: text, tokens, finish reason, prompt tokens, latency."""
    from convergence.platform.errors import InvalidInput

    t0 = time.perf_counter()
    tok, context = arm.loaded.extra["tokenizer"], arm.loaded.extra["context"]
    if not 1 <= max_tokens < context:
        raise InvalidInput(f'"max_tokens" must be an integer from 1 to {context - 1}')
    ids = tok.encode(prompt, add_special_tokens=False).ids
    if not ids:  # generate() refuses the whole batch for one empty prompt: refuse it alone, here
        raise InvalidInput('"prompt" has no tokens for this model')
    tokens = await arm.batcher.submit(list(ids), max_tokens, float(temperature), seed)
    eos = tok.token_to_id("<|endoftext|>")
    return {"text": tok.decode([t for t in tokens if t != eos], skip_special_tokens=False), "tokens": len(tokens),
            "finish_reason": "eos" if tokens and tokens[-1] == eos else "length", "prompt_tokens": len(ids),
            "latency_s": time.perf_counter() - t0}


async def _score_prompt(ro: Rollout, arm: Arm, prompt: str, params: tuple[int, float, int], answered: dict[str, Any],
                        *, newcomer_answered: bool) -> None:
    from convergence.serving._app import IDS

    other = arm if newcomer_answered else ro.arm
    try:
        out = await generation(other, prompt, *params)
    except Exception:  # noqa: BLE001 - a shadow's failure is measured, never seen by a client
        if not newcomer_answered:
            ro.meter.failed()
            ro.check()
        return
    if not newcomer_answered:
        ro.meter.answered(out["latency_s"])
    new, old = (answered, out) if newcomer_answered else (out, answered)
    ro.meter.compare((new["text"], new["tokens"]), (old["text"], old["tokens"]), greedy=params[1] == 0)
    other.logger.add(IDS.take(1), [[float(out["prompt_tokens"]), float(params[1]), float(params[0])]],
                     [out["tokens"]], out["latency_s"] * 1000, shadow=True)
    ro.check()
