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
        """``production`` or ``canary``: what every answer's body and headers say of it, built whole and swapped
        in with one assignment (``label``), so no answer mixes two routes while a promotion relabels it."""
        import json

        e = self.loaded.extra
        head = {"model": self.loaded.name, "version": self.loaded.version, "version_id": self.loaded.version_id,
                "artifact_sha256": e.get("sha256"), "approval_seq": e.get("approval_seq"), "route": route}
        headers = {"x-model-name": self.loaded.name, "x-model-version": str(self.loaded.version_id),
                   "x-model-version-number": str(self.loaded.version),
                   "x-model-artifact-sha256": str(e.get("sha256")), "x-approval-seq": str(e.get("approval_seq")),
                   "x-route": route}
        # (head, the start of a /predict answer written directly, headers)
        self.label: tuple[dict[str, Any], str, dict[str, str]] = (head, json.dumps(head)[:-1], headers)

    @property
    def route(self) -> str:
        return self.label[0]["route"]


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

    def answered(self, n: int, latency_s: float) -> None:
        """``n`` answers (trading: predictions, language: generations) that took ``latency_s``."""
        with self.lock:
            self.requests += n
            self.latencies.append(latency_s * 1000)

    def failed(self, n: int = 1) -> None:
        with self.lock:
            self.requests += n
            self.errors += n

    def compare(self, new: Any, old: Any, *, greedy: bool = True) -> None:
        """Trading: two arrays of predictions. Language: two (text, tokens generated) pairs (a differing
        continuation at temperature 0 disagrees; the difference measured is in tokens generated)."""
        if isinstance(new, np.ndarray) and not (ok := np.isfinite(new) & np.isfinite(old)).all():
            new, old = new[ok], np.asarray(old)[ok]  # a comparison with inf is no measurement
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

    def counts(self, *, full: bool = True) -> dict[str, Any]:
        """The measurements; ``full=False`` works out p99 and drift only when a guard needs them (they sort)."""
        p99 = full or self.guards.get("max_p99_ms") is not None
        drift = full or self.guards.get("max_output_drift") is not None
        with self.lock:
            lat = list(self.latencies) if p99 else []
            new, old = (np.array(self.new), np.array(self.old)) if drift else (np.empty(0), np.empty(0))
            out = {"requests": self.requests, "errors": self.errors, "compared": self.compared,
                   "disagreements": self.disagreements, "abs_diff_sum": self.abs_diff_sum}
        out["p99_ms"] = float(np.percentile(lat, 99)) if len(lat) >= 20 else None  # not from a handful
        out["output_drift"] = ks_statistic(new, old) if len(new) and len(old) else None
        return out


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))
    return round(float(gap.max()), 6)


class Rollout:
    """The deployment this replica follows now: the newcomer's arm, its split and its guards.

    Trading rows are scored batch by batch: after a batch's answers went out, the other version predicts the
    same rows in one forward pass (a shadow scores production's batches; production scores a canary's), so a
    comparison costs a forward pass per batch, not a task per request. Language generations are scored one by
    one in tasks (bounded by ``most_pending``)."""

    def __init__(self, state: dict[str, Any], arm: Arm, *, production: Arm, ids: Any, most_pending: int = 256) -> None:
        self.id, self.mode, self.percent = state["id"], state["mode"], float(state["percent"])
        self.guards, self.arm, self.production, self.ids = state["guards"], arm, production, ids
        self.meter = GuardMeter(self.guards)
        self.tripped: list[dict[str, Any]] | None = None
        self.ended = False  # the follower finished it: nothing new is routed or scored
        self.tasks: set[Any] = set()  # comparisons in flight (held, so the loop does not drop them)
        self.most_pending, self.skipped = most_pending, 0
        self.last_check = 0.0
        self.on_trip: Any = None  # callback(): wakes the thread that writes the rollback

    def measured(self) -> dict[str, Any]:
        """What this replica reports of it: the meter's counts and the comparisons it skipped."""
        return {**self.meter.counts(), "skipped": self.skipped}

    @property
    def live(self) -> bool:
        return self.tripped is None and not self.ended

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

    def attach(self) -> None:
        """Trading: production's batcher serves the canary's rows and calls ``after_batch`` for every batch."""
        if self.arm.loaded.family == "trading":
            self.production.batcher.rollout = self

    def detach(self) -> None:
        if getattr(self.production.batcher, "rollout", None) is self:
            self.production.batcher.rollout = None

    def answer(self, items: list[tuple[np.ndarray, Any, Any]], y: np.ndarray) -> dict[str, Any]:
        """Settle a production batch's requests (X, future, the rollout the request chose): those that chose this
        live canary get its answers where they are finite, the rest production's. What the canary answered, and
        production's answers to the same rows, go to ``after_batch``."""
        mine = [i for i, item in enumerate(items) if item[2] is self] if self.live and self.mode == "canary" else []
        canary, latency = self._canary([items[i][0] for i in mine]) if mine else (None, 0.0)
        scored: dict[str, Any] = {"theirs": [], "ours": [], "answers": [], "failed": 0, "latency": latency}
        start = taken = 0
        for x, fut, chose in items:
            n, answer = len(x), (y[start:start + len(x)], None)
            if chose is self and mine:
                ours = answer[0]
                if canary is not None and np.isfinite(part := canary[taken:taken + n]).all():
                    answer = (part, self)
                    scored["theirs"].append(x), scored["ours"].append(ours), scored["answers"].append(part)
                elif np.isfinite(ours).all():  # a row production cannot answer either is the client's, not the canary's
                    scored["failed"] += n
                taken += n
            if not fut.done():
                fut.set_result(answer)
            start += n
        return scored

    def _canary(self, xs: list[np.ndarray]) -> tuple[np.ndarray | None, float]:
        t0 = time.perf_counter()
        try:
            return self.arm.batcher.predict_now(np.concatenate(xs) if len(xs) > 1 else xs[0]), time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - the newcomer's failure is measured; production answers its rows
            return None, time.perf_counter() - t0

    def after_batch(self, X: np.ndarray, y: np.ndarray, scored: dict[str, Any]) -> None:
        """After a batch's answers went out: a shadow predicts every row; the rows a canary answered are compared
        with production's answers to them (logged as production's shadow rows)."""
        if not self.live:
            return
        if self.mode == "shadow":
            self._shadow_batch(X, y)
        else:
            if scored["failed"]:
                self.meter.failed(scored["failed"])
            if scored["answers"]:
                theirs, ours, answers = scored["theirs"], scored["ours"], scored["answers"]
                Xc, yc, ac = ((np.concatenate(theirs), np.concatenate(ours), np.concatenate(answers))
                              if len(ours) > 1 else (theirs[0], ours[0], answers[0]))
                self.meter.answered(len(Xc), scored["latency"])
                self.meter.compare(ac, yc)
                self.production.logger.add(self.ids.take(len(Xc)), Xc, yc, None, shadow=True)
        self.check()

    def _shadow_batch(self, X: np.ndarray, answered: np.ndarray) -> None:
        """The shadow's predictions for the rows production answered (a row production could not answer, the
        client got a 4xx for: left out); a non-finite one counts against the shadow."""
        ok = np.isfinite(answered)
        if not ok.all():
            X, answered = X[ok], answered[ok]
            if not len(X):
                return
        t0 = time.perf_counter()
        try:
            y = self.arm.batcher.predict_now(X)
        except Exception:  # noqa: BLE001 - the newcomer's failure is measured, never seen by a client
            self.meter.failed(len(X))
            return
        latency = time.perf_counter() - t0
        good = np.isfinite(y)
        if not good.all():
            self.meter.failed(int((~good).sum()))
            X, y, answered = X[good], y[good], answered[good]
        self.meter.answered(len(X), latency)
        if len(X):
            self.meter.compare(y, answered)
            self.arm.logger.add(self.ids.take(len(X)), X, y, latency * 1000 / len(X), shadow=True)

    def check(self, *, every_s: float = 0.1) -> None:
        """Judge the guards (at most every ``every_s``); a breach stops the newcomer here at once."""
        from convergence.governance import rollout

        now = time.monotonic()
        if not self.live or now - self.last_check < every_s:
            return
        self.last_check = now
        broken = rollout.breaches(self.guards, self.meter.counts(full=False))
        if broken:
            self.tripped = broken
            if self.on_trip:
                self.on_trip()


def retire_logger(logger: Any, grace_s: float = 2.0) -> None:
    """Stop a prediction log once the requests still holding it have added their rows (it then writes out)."""
    timer = threading.Timer(grace_s, logger.stop.set)
    timer.daemon = True
    timer.start()


class RolloutThread(threading.Thread):
    """Follows the deployments the kill watcher polls, for the name this replica serves: loads a newcomer,
    makes it production on promotion, drops it on rollback, reports what it measured, and writes a trip."""

    def __init__(self, replica: Any, *, model_name: str, replica_id: str, report_s: float, make_arm: Any,
                 ids: Any) -> None:
        super().__init__(name="cvg-rollout", daemon=True)
        self.ids = ids
        self.replica, self.model_name, self.replica_id, self.report_s = replica, model_name, replica_id, report_s
        self.make_arm = make_arm  # (version_id, route) -> Arm: loads and checks a version as serving does
        self.stop, self.wake = threading.Event(), threading.Event()
        self.last_report, self.retry_s = 0.0, 5.0
        self.retry_at: dict[int, float] = {}  # deployment id → when a failed load may be tried again
        self.finished: set[int] = set()  # deployments this replica is done with

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
        if ro is not None and (state is None or state["id"] != ro.id or state["status"] != "active"):
            # ours ended (or the poll shows a newer one): finish ours by its own status before anything else
            self._finish(ro, state["status"] if state is not None and state["id"] == ro.id else self._status(ro.id))
            ro = None
        if state is None:
            return
        if state["status"] == "promoted" and state["id"] not in self.finished:
            self._catch_up(state)  # promoted while this replica was not serving it (a failed load, a restart)
            return
        if state["status"] != "active":
            return
        if ro is None:
            if state["id"] not in self.finished and time.monotonic() >= self.retry_at.get(state["id"], 0.0):
                self._start(state)
            return
        if time.monotonic() - self.last_report >= self.report_s:
            self._report(ro)

    @staticmethod
    def _status(deployment_id: int) -> str | None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        with session_scope(write=False) as s:
            return gov.rollout.status(session=s, deployment_id=deployment_id)

    def _start(self, state: dict[str, Any]) -> None:
        """Load the newcomer of a deployment the ledger recorded as it stands, of this replica's model name and
        beside the production version it was started against; on failure production serves alone and the load
        is tried again later (a database hiccup must not shut a replica out of a rollout for good)."""
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        try:
            with session_scope(write=False) as s:
                gov.rollout.check_deployment(session=s, deployment_id=state["id"])
            ours = self.replica.arm.loaded.extra.get("production_id")
            if state.get("production_id") != ours:
                raise ValueError(f"it was started beside version {state.get('production_id')}; this replica serves "
                                 f"version {ours}")
            arm = self.make_arm(state["version_id"], "canary" if state["mode"] == "canary" else "shadow")
            if arm.loaded.name != self.model_name:
                retire_logger(arm.logger)
                raise ValueError(f"version {state['version_id']} is {arm.loaded.name}, not {self.model_name}")
        except Exception as exc:  # noqa: BLE001 - whatever stops the newcomer, production keeps serving alone
            self.retry_at[state["id"]] = time.monotonic() + self.retry_s
            log.error("rollout %s: version %s does not serve here (tried again in %.0f s): %s", state["id"],
                      state["version_id"], self.retry_s, exc)
            return
        ro = Rollout(state, arm, production=self.replica.arm, ids=self.ids)
        ro.on_trip = self.wake.set
        ro.attach()
        self.replica.rollout = ro
        log.info("rollout %s: %s of version %s", state["id"], state["mode"], state["version_id"])

    def _catch_up(self, state: dict[str, Any]) -> None:
        """A promotion this replica did not serve the rollout of: load the promoted version as production."""
        if self.replica.arm.loaded.extra.get("production_id") == state["version_id"]:
            self.finished.add(state["id"])
            return
        if time.monotonic() < self.retry_at.get(state["id"], 0.0):
            return
        try:
            self._check_promoted(state["id"])
            arm = self.make_arm(state["version_id"], "production")
        except Exception as exc:  # noqa: BLE001 - keep serving what it serves; try again later
            self.retry_at[state["id"]] = time.monotonic() + self.retry_s
            log.error("rollout %s was promoted; version %s does not load here yet: %s", state["id"],
                      state["version_id"], exc)
            return
        old = self.replica.arm
        self.replica.promote(arm)
        retire_logger(old.logger)
        self.finished.add(state["id"])

    @staticmethod
    def _check_promoted(deployment_id: int) -> None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        with session_scope(write=False) as s:
            gov.rollout.check_promoted(session=s, deployment_id=deployment_id)

    def _finish(self, ro: Rollout, status: str | None) -> None:
        """Promoted (as the ledger recorded it): the newcomer answers everything from now on. Otherwise (rolled
        back, stale, gone): it stops. A stopped arm's log keeps taking rows for a grace period (requests in
        flight), then is written out."""
        self.replica.rollout = None
        ro.ended = True
        ro.detach()
        self.finished.add(ro.id)
        if status == "promoted":
            try:
                self._check_promoted(ro.id)
            except Exception as exc:  # noqa: BLE001 - a promotion the ledger does not show changes nothing
                log.error("rollout %s says promoted, but: %s; production stays", ro.id, exc)
                status = None
        if status == "promoted":
            old = self.replica.arm
            ro.arm.relabel("production")
            self.replica.promote(ro.arm)
            retire_logger(old.logger)
        else:
            retire_logger(ro.arm.logger)

    def _report(self, ro: Rollout) -> None:
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        with session_scope() as s:
            gov.rollout.report(session=s, deployment_id=ro.id, replica=self.replica_id, counts=ro.measured())
        self.last_report = time.monotonic()

    def _trip(self, ro: Rollout) -> None:
        """Write the rollback this replica's guard decided, then deliver its webhook (best effort, retried). If the
        deployment had already ended (promoted on every replica's evidence, or rolled back), finish by that."""
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        counts = ro.measured()
        with session_scope() as s:
            gov.rollout.report(session=s, deployment_id=ro.id, replica=self.replica_id, counts=counts)
            done = gov.rollout.trip(session=s, deployment_id=ro.id, replica=self.replica_id, broken=ro.tripped or [],
                                    measured=counts)
        if done is None:
            self._finish(ro, self._status(ro.id))
            return
        self._finish(ro, "rolled_back")
        log.warning("rollout %s rolled back: %s", ro.id, ro.tripped)
        try:
            gov.deliver_until_idle(deadline_s=5.0)
        except ConvergenceError as exc:
            log.warning("rollback webhook not delivered yet: %s", exc)


async def rows_answer(arm: Arm, ro: Rollout | None, X: np.ndarray, key: bytes) -> tuple[Arm, np.ndarray]:
    """Which arm answers ``X`` and its predictions: the canary for its share of keys (production when the canary
    fails, counted against it), else production; both in production's batch cycle."""
    y, by = await arm.batcher.routed(X, canary=ro if ro is not None and ro.takes(key) else None)
    return (by.arm if by is not None else arm), y


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
            ro.meter.answered(1, time.perf_counter() - t0)
            if ro.room():
                ro.spawn(_score_prompt(ro, arm, prompt, params, out, newcomer_answered=True))
            return ro.arm, out
    out = await generation(arm, prompt, *params)
    if ro is not None and ro.mode == "shadow" and ro.room():
        ro.spawn(_score_prompt(ro, arm, prompt, params, out, newcomer_answered=False))
    return arm, out


async def generation(arm: Arm, prompt: str, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """One generation on ``arm`` with its own tokenizer: text, tokens, finish reason, prompt tokens, latency."""
    from convergence.governance import contract
    from convergence.platform.errors import InvalidInput

    t0 = time.perf_counter()
    tok, context = arm.loaded.extra["tokenizer"], arm.loaded.extra["context"]
    if not 1 <= max_tokens < context:
        raise InvalidInput(f'"max_tokens" must be an integer from 1 to {context - 1}')
    ids = contract.language.encode(tok, prompt)
    if not ids:  # generate() refuses the whole batch for one empty prompt: refuse it alone, here
        raise InvalidInput('"prompt" has no tokens for this model')
    tokens, score = await arm.batcher.submit(list(ids), max_tokens, float(temperature), seed)
    eos = tok.token_to_id(contract.language.EOS)
    logged = contract.language.log_vector(ids, tokens, score, eos_id=eos, temperature=float(temperature),
                                          max_tokens=max_tokens, vocab=tok.get_vocab_size(), context=context)
    return {"text": tok.decode([t for t in tokens if t != eos], skip_special_tokens=False), "tokens": len(tokens),
            "finish_reason": "eos" if tokens and tokens[-1] == eos else "length", "prompt_tokens": len(ids),
            "latency_s": time.perf_counter() - t0, "logged": logged}


async def _score_prompt(ro: Rollout, arm: Arm, prompt: str, params: tuple[int, float, int], answered: dict[str, Any],
                        *, newcomer_answered: bool) -> None:
    other = arm if newcomer_answered else ro.arm
    try:
        out = await generation(other, prompt, *params)
    except Exception:  # noqa: BLE001 - a shadow's failure is measured, never seen by a client
        if not newcomer_answered:
            ro.meter.failed()
            ro.check()
        return
    if not newcomer_answered:
        ro.meter.answered(1, out["latency_s"])
    new, old = (answered, out) if newcomer_answered else (out, answered)
    ro.meter.compare((new["text"], new["tokens"]), (old["text"], old["tokens"]), greedy=params[1] == 0)
    other.logger.add(ro.ids.take(1), out["logged"][None], [out["tokens"]], out["latency_s"] * 1000, shadow=True)
    ro.check()
