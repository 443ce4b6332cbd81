"""A replica's rollout machinery in process, where races can be staged exactly: a request's canary choice binds
to that rollout, a canary's non-finite answer falls back to production and counts against it (a row production
cannot answer is the client's), a shadow never answers, guards ignore comparisons with inf, and the follower
finishes its own deployment by id before it starts the next. (On real servers: tests/serving/test_rollout.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from convergence.serving._models import Loaded, TradingBatcher
from convergence.serving._rollout import Arm, GuardMeter, Rollout, RolloutThread, bucket, ks_statistic

GUARDS = {"max_error_rate": 0.5, "max_p99_ms": None, "max_disagreement": None, "disagreement_bound": 0.0,
          "max_mean_abs_diff": None, "max_output_drift": None, "guard_after": 1}


class Log:
    def __init__(self) -> None:
        self.rows: list[tuple[list[str], Any, Any, bool]] = []
        self.stop = threading.Event()

    def add(self, ids: list[str], X: Any, y: Any, latency: Any, *, killed: bool = False, shadow: bool = False) -> None:
        self.rows.append((ids, np.asarray(X), np.asarray(y), shadow))


class Ids:
    def take(self, n: int) -> list[str]:
        return [f"id-{i}" for i in range(n)]


def _arm(version_id: int, scale: float, route: str = "production") -> Arm:
    """An arm whose model answers ``scale`` × the sum of a row (SYNTHETIC: a stand-in net, exact numbers)."""
    import torch

    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(scale)
    loaded = Loaded(version_id, "m", version_id, "trading", "approved", net,
                    {"mean": np.zeros(2, np.float32), "std": np.ones(2, np.float32), "y_scale": 1.0,
                     "runtime": "torch", "n_features": 2, "sha256": f"{version_id:064x}", "approval_seq": version_id,
                     "kill_names": ("m",), "production_id": version_id}, "cpu")
    return Arm(loaded, TradingBatcher(loaded, max_rows=512), Log(), route)


def _rollout(mode: str, production: Arm, newcomer: Arm, deployment_id: int = 1) -> Rollout:
    ro = Rollout({"id": deployment_id, "mode": mode, "percent": 50.0, "guards": dict(GUARDS)}, newcomer,
                 production=production, ids=Ids())
    ro.attach()
    return ro


async def _batch(batcher: TradingBatcher, requests: list[tuple[np.ndarray, Any]]) -> list[tuple[np.ndarray, Any]]:
    """Queue every request before the consumer runs, so they share one batch."""
    return await asyncio.gather(*(batcher.routed(X, canary=chose) for X, chose in requests))


def test_a_canary_choice_binds_to_its_rollout_and_a_shadow_never_answers() -> None:
    prod, first, second = _arm(1, 1.0), _arm(2, 2.0, "canary"), _arm(3, 3.0, "shadow")
    canary = _rollout("canary", prod, first)
    X = np.ones((1, 2), np.float32)

    async def run() -> list[Any]:
        answered = await _batch(prod.batcher, [(X, canary), (X, None)])
        canary.detach()
        shadow = _rollout("shadow", prod, second, deployment_id=2)  # attached between the choice and the batch
        later = await _batch(prod.batcher, [(X, canary)])
        return [*answered, *later, shadow]

    (y1, by1), (y2, by2), (y3, by3), shadow = asyncio.run(run())
    assert (float(y1[0]), by1) == (4.0, canary) and (float(y2[0]), by2) == (2.0, None)
    assert (float(y3[0]), by3) == (2.0, None)  # the canary it chose is gone: production, never the shadow
    assert canary.meter.counts()["compared"] == 1 and shadow.meter.counts()["compared"] == 1
    assert [r[3] for r in second.logger.rows] == [True]  # the shadow's answer: logged, flagged, never returned


def test_a_non_finite_canary_answer_falls_back_to_production_and_counts_against_the_canary() -> None:
    prod, new = _arm(1, 1.0), _arm(2, 1e38, "canary")  # the newcomer overflows float32 where production does not
    canary = _rollout("canary", prod, new)
    ok, overflows = np.full((1, 2), 1e-38, np.float32), np.full((1, 2), 10.0, np.float32)

    async def run() -> list[Any]:
        return await _batch(prod.batcher, [(ok, canary), (overflows, canary)])

    (y_ok, by_ok), (y_bad, by_bad) = asyncio.run(run())
    assert by_ok is canary and by_bad is None and float(y_bad[0]) == 20.0  # production answered that client
    counts = canary.meter.counts()
    assert (counts["requests"], counts["errors"], counts["compared"]) == (2, 1, 1)
    assert canary.tripped is None  # 1 of 2 failed: at the 0.5 limit, not over it


def test_a_row_production_cannot_answer_is_the_clients_not_the_shadows() -> None:
    prod, shadow = _arm(1, 1e38), _arm(2, 1.0, "shadow")
    ro = _rollout("shadow", prod, shadow)
    X = np.array([[10.0, 10.0], [1e-38, 0.0]], np.float32)  # production overflows on the first row only

    async def run() -> Any:
        return await _batch(prod.batcher, [(X[:1], None), (X[1:], None)])

    asyncio.run(run())
    counts = ro.meter.counts()
    assert (counts["requests"], counts["errors"], counts["compared"]) == (1, 0, 1) and counts["abs_diff_sum"] < 1
    meter = GuardMeter(GUARDS)
    meter.compare(np.array([1.0, np.inf]), np.array([1.0, 2.0]))
    assert meter.counts()["compared"] == 1 and np.isfinite(meter.counts()["abs_diff_sum"])


def test_the_split_and_the_drift_statistic() -> None:
    keys = [f"client-{i}".encode() for i in range(20_000)]
    share = sum(bucket(k) < 10 for k in keys) / len(keys)
    assert 0.09 < share < 0.11 and bucket(b"client-7") == bucket(b"client-7")
    same, shifted = np.arange(100.0), np.arange(100.0) + 50
    assert ks_statistic(same, same) == 0.0 and ks_statistic(same, shifted) == 0.5


class _Watcher:
    def __init__(self) -> None:
        self.rollouts: dict[str, dict[str, Any]] = {}


class _Replica:
    def __init__(self, arm: Arm) -> None:
        self.arm, self.rollout, self.watcher = arm, None, _Watcher()

    def promote(self, arm: Arm) -> None:
        self.arm = arm


def test_the_follower_finishes_its_own_deployment_by_id_before_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    prod, promoted, next_one = _arm(1, 1.0), _arm(2, 2.0, "canary"), _arm(3, 3.0, "canary")
    replica = _Replica(prod)
    follower = RolloutThread(replica, model_name="m", replica_id="r", report_s=60, ids=Ids(),
                             make_arm=lambda version, route: {3: next_one}[version])
    ro = _rollout("canary", prod, promoted)
    replica.rollout = ro
    statuses = {1: "promoted"}
    monkeypatch.setattr(RolloutThread, "_status", staticmethod(lambda deployment_id: statuses[deployment_id]))
    monkeypatch.setattr("convergence.governance.rollout.check_deployment", lambda **kw: None)
    monkeypatch.setattr("convergence.platform.db.session_scope", _NoSession)
    # the poll already shows deployment 2 (a new canary): deployment 1's promotion happened in between
    replica.watcher.rollouts["m"] = {"id": 2, "version_id": 3, "production_id": 2, "mode": "canary", "percent": 10.0,
                                     "guards": dict(GUARDS), "status": "active"}
    checked: list[int] = []
    monkeypatch.setattr(RolloutThread, "_check_promoted", staticmethod(checked.append))
    follower.step()
    assert checked == [1]  # the promotion, as the ledger recorded it, before the newcomer answers everything
    assert replica.arm is promoted and promoted.route == "production"  # the promotion was applied first
    assert replica.rollout is not None and replica.rollout.id == 2 and replica.rollout.production is promoted
    assert prod.batcher.rollout is None and promoted.batcher.rollout is replica.rollout


def _follower(replica: _Replica, arms: dict[int, Arm], monkeypatch: pytest.MonkeyPatch) -> RolloutThread:
    monkeypatch.setattr("convergence.governance.rollout.check_deployment", lambda **kw: None)
    monkeypatch.setattr("convergence.platform.db.session_scope", _NoSession)
    monkeypatch.setattr(RolloutThread, "_check_promoted", staticmethod(lambda deployment_id: None))
    return RolloutThread(replica, model_name="m", replica_id="r", report_s=60, ids=Ids(),
                         make_arm=lambda version, route: arms[version])


def _state(deployment_id: int, version_id: int, status: str, production_id: int = 1) -> dict[str, Any]:
    return {"id": deployment_id, "version_id": version_id, "production_id": production_id, "mode": "canary",
            "percent": 50.0, "guards": dict(GUARDS), "status": status}


def test_a_failed_load_is_tried_again_and_a_promotion_it_missed_is_caught_up(monkeypatch: pytest.MonkeyPatch) -> None:
    prod, new = _arm(1, 1.0), _arm(2, 2.0)
    replica, attempts = _Replica(prod), []

    def flaky(version: int, route: str) -> Arm:
        attempts.append(route)
        if len(attempts) == 1:
            from convergence.platform.errors import Unavailable

            raise Unavailable("the database is away")
        return new

    follower = _follower(replica, {}, monkeypatch)
    follower.make_arm = flaky
    replica.watcher.rollouts["m"] = _state(1, 2, "active")
    follower.step()
    assert replica.rollout is None and attempts == ["canary"]  # production serves alone meanwhile
    follower.retry_at[1] = 0.0  # the back-off has passed
    replica.watcher.rollouts["m"] = _state(1, 2, "promoted")  # ... and the rollout was promoted elsewhere
    follower.step()
    assert replica.arm is new and attempts == ["canary", "production"] and 1 in follower.finished
    follower.step()
    assert attempts == ["canary", "production"]  # done once


def test_a_trip_after_the_promotion_finishes_by_the_promotion(monkeypatch: pytest.MonkeyPatch) -> None:
    prod, new = _arm(1, 1.0), _arm(2, 2.0, "canary")
    replica = _Replica(prod)
    follower = _follower(replica, {2: new}, monkeypatch)
    replica.watcher.rollouts["m"] = _state(1, 2, "active")
    follower.step()
    ro = replica.rollout
    assert ro is not None
    ro.tripped = [{"guard": "max_error_rate", "limit": 0.02, "measured": 1.0}]  # this replica's guard broke ...
    monkeypatch.setattr("convergence.governance.rollout.report", lambda **kw: None)
    monkeypatch.setattr("convergence.governance.rollout.trip", lambda **kw: None)  # ... after it was promoted
    monkeypatch.setattr(RolloutThread, "_status", staticmethod(lambda deployment_id: "promoted"))
    follower.step()
    assert replica.arm is new and replica.rollout is None  # the newcomer answers: never the retired version


def test_production_answers_when_the_rollout_cannot_settle_a_batch() -> None:
    prod, new = _arm(1, 1.0), _arm(2, 2.0, "canary")
    ro = _rollout("canary", prod, new)
    ro.answer = lambda items, y: 1 / 0  # type: ignore[method-assign]
    X = np.ones((1, 2), np.float32)

    async def run() -> Any:
        return await asyncio.wait_for(_batch(prod.batcher, [(X, ro), (X, None)]), 5)

    assert [(float(y[0]), by) for y, by in asyncio.run(run())] == [(2.0, None), (2.0, None)]


def test_a_bad_rollout_row_never_stops_the_kill_switch_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.serving._runtime import KillWatcher

    monkeypatch.setattr("convergence.platform.db.session_scope", _NoSession)
    monkeypatch.setattr("convergence.governance.kill_states", lambda **kw: {"m": {"reason": "stop"}})

    def broken(**kw: Any) -> Any:
        raise TypeError("guards is not an object")

    monkeypatch.setattr("convergence.governance.rollout.states", broken)
    watcher = KillWatcher(0.01)
    watcher.rollouts = {"m": {"id": 7}}
    watcher.start()
    time.sleep(0.1)
    alive = watcher.is_alive()  # several failed rollout polls later
    watcher.stop.set()
    assert alive and watcher.polled.is_set()
    assert watcher.state("m") == {"reason": "stop"} and watcher.rollouts == {"m": {"id": 7}}


class _NoSession:
    def __init__(self, **kw: Any) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
