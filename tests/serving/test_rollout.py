"""Governed rollout on real BentoML servers (two trading replicas and one language replica, `cvg serve` on
loopback, one SQLite database): a shadow is scored and logged but never answers, a canary answers its share by
request key on every replica alike, every answer names its version, artifact and approval, a guard that breaks
rolls back every replica within 2 s (ledger, alert, signed webhook), and promotion makes the newcomer answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select, text

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import person
from tests.serving.conftest import N_FEATURES, register_language, register_trading

pytestmark = [pytest.mark.serving, pytest.mark.slow]

SECRET = "rollout-receiver-secret-0123456789"


class Replica:
    def __init__(self, family: str, env: dict[str, str], tag: str, *args: str) -> None:
        from convergence.serving import ServerProcess

        self.process = ServerProcess(family, *args, env=env,
                                     log=Path(env["CVG_HOME"]).parent / f"rollout-{family}-{tag}.log").start()
        self.client = httpx.Client(base_url=self.process.url, timeout=30)

    def rollout(self, family: str) -> dict[str, Any] | None:
        return self.client.get("/info").json()[family].get("rollout")

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


@pytest.fixture(scope="module")
def replicas(serving_db: dict[str, Any]) -> Iterator[list[Replica]]:
    register_trading(serving_db["tmp"], serving_db["evidence"])
    env = {**serving_db["env"], "CVG_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8", "CVG_SERVE_ROLLOUT_REPORT_S": "0.3"}
    started = [Replica("trading", env, "a", "--float"), Replica("trading", env, "b", "--float")]
    yield started
    for r in started:
        r.stop()


def _production(name: str = "es-trading-student") -> gov.ModelVersion:
    with session_scope(write=False) as s:
        [mv] = s.execute(select(gov.ModelVersion).where(gov.ModelVersion.name == name,
                                                        gov.ModelVersion.stage == "production")).scalars().all()
        s.expunge(mv)
    return mv


def _in_process(version_id: int, X: np.ndarray) -> np.ndarray:
    from convergence.pipelines import _nets as nets

    with session_scope(write=False) as s:
        net, blob = nets.load_artifact(gov.load_artifact(session=s, version_id=version_id))
    return nets.predict(net, ((X - blob["mean"]) / blob["std"]).astype(np.float32)) * blob["y_scale"]


def _deploy(version_id: int, mode: str, **kw: Any) -> int:
    with session_scope() as s:
        return gov.rollout.deploy(session=s, principal=person("ops"), version_id=version_id, mode=mode, **kw).id


def _until(what: Any, timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s")


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)  # SYNTHETIC features


def _approval_seq(version_id: int) -> int:
    with session_scope(write=False) as s:
        return gov.rollout.approval_seq(session=s, version_id=version_id)


def test_a_shadow_is_scored_and_logged_but_clients_only_see_production(replicas: list[Replica],
                                                                        serving_db: dict[str, Any]) -> None:
    prod = _production()
    shadow = register_trading(serving_db["tmp"], serving_db["evidence"], stage="approved", seed=11)
    deployment = _deploy(shadow, "shadow")
    _until(lambda: all((r.rollout("trading") or {}).get("deployment_id") == deployment for r in replicas))
    X = _rows(60, seed=3)
    answers = [replicas[i % 2].client.post("/predict", json={"rows": X[i:i + 1].tolist()}) for i in range(60)]
    assert all(a.status_code == 200 for a in answers)
    bodies = [a.json() for a in answers]
    assert {b["version_id"] for b in bodies} == {prod.id} and {b["route"] for b in bodies} == {"production"}
    np.testing.assert_allclose([b["predictions"][0] for b in bodies], _in_process(prod.id, X), rtol=1e-5, atol=1e-9)
    assert {(a.headers["x-model-artifact-sha256"], a.headers["x-approval-seq"], a.headers["x-model-name"])
            for a in answers} == {(prod.artifact_sha256, str(_approval_seq(prod.id)), "es-trading-student")}
    # the shadow's answers: logged under its own version, flagged, equal to the shadow model's own numbers
    def logged() -> list[gov.PredictionLog]:
        with session_scope(write=False) as s:
            rows = list(s.execute(select(gov.PredictionLog).where(gov.PredictionLog.model_version_id == shadow)))
        return [r for (r,) in rows] if len(rows) >= 60 else []
    rows = _until(logged)
    assert all(r.shadow for r in rows)
    by_input = {tuple(np.float32(r.vector)): r.output for r in rows}
    expected = _in_process(shadow, X)
    np.testing.assert_allclose([by_input[tuple(x)] for x in X], expected, rtol=1e-5, atol=1e-9)
    assert not np.allclose(expected, _in_process(prod.id, X))  # a different model: the numbers tell them apart
    with session_scope() as s:
        gov.rollout.rollback(session=s, principal=person("ops"), name="es-trading-student", reason="seen enough")
    _until(lambda: all(r.rollout("trading") is None for r in replicas), timeout_s=2.0)


def _route_of(replica: Replica, key: str, X: np.ndarray) -> tuple[str, int]:
    r = replica.client.post("/predict", json={"rows": X.tolist()}, headers={"x-request-key": key})
    assert r.status_code == 200, r.text
    return r.headers["x-route"], int(r.headers["x-model-version"])


def test_a_canary_answers_its_share_by_key_then_promotion_makes_it_production(replicas: list[Replica],
                                                                               serving_db: dict[str, Any]) -> None:
    from convergence.platform.errors import PolicyViolation
    from convergence.serving._rollout import bucket

    prod = _production()
    canary = register_trading(serving_db["tmp"], serving_db["evidence"], stage="approved", seed=12)
    deployment = _deploy(canary, "canary", percent=10, min_requests=150)
    with pytest.raises(PolicyViolation, match="held for 0 of the 150 answers"), session_scope() as s:
        gov.rollout.promote(session=s, principal=person("ops"), version_id=canary)
    _until(lambda: all((r.rollout("trading") or {}).get("deployment_id") == deployment for r in replicas))
    X = _rows(1, seed=5)
    routes = {f"client-{i}": _route_of(replicas[i % 2], f"client-{i}", X) for i in range(2000)}
    by_canary = [k for k, (route, _) in routes.items() if route == "canary"]
    # binomial(2000, 0.1): mean 200, sd 13.4; five sd either side
    assert 133 <= len(by_canary) <= 267, len(by_canary)
    assert {v for route, v in routes.values() if route == "canary"} == {canary}
    assert {v for route, v in routes.values() if route == "production"} == {prod.id}
    assert set(by_canary) == {k for k in routes if bucket(k.encode()) < 10}  # the split every replica computes
    for key in [*by_canary[:10], "client-0", "client-1", "client-2"]:  # one key, one version, on either replica
        assert {_route_of(r, key, X) for r in replicas} == {routes[key]}
    measured = _until(lambda: (m := _current()["measured"])["requests"] >= len(by_canary) and m)
    assert measured["replicas"] == 2 and measured["errors"] == 0
    with session_scope() as s:
        gov.rollout.promote(session=s, principal=person("ops"), version_id=canary, reason="held over 2,000 requests")
    _until(lambda: all(_route_of(r, "client-0", X) == ("production", canary) for r in replicas), timeout_s=2.0)
    answer = replicas[0].client.post("/predict", json={"rows": X.tolist()})
    assert answer.json()["version_id"] == canary and answer.json()["approval_seq"] == _approval_seq(canary)
    assert _production().id == canary


def _current() -> dict[str, Any]:
    with session_scope(write=False) as s:
        return gov.rollout.current(session=s, name="es-trading-student")


@pytest.fixture
def loopback_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Webhooks to a receiver on loopback, admitted here as the replicas' environment admits them."""
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_canary_that_disagrees_is_rolled_back_on_every_replica_within_2_s(
        replicas: list[Replica], serving_db: dict[str, Any], loopback_hooks: None) -> None:
    prod = _production()
    with gov.ReferenceReceiver(SECRET) as receiver:
        with session_scope() as s:
            gov.subscribe(session=s, principal=person("ada"), url=receiver.url, events=["deployment.rolled_back"],
                          secret=SECRET)
        different = register_trading(serving_db["tmp"], serving_db["evidence"], stage="approved", seed=13)
        deployment = _deploy(different, "canary", percent=50,
                             guards={"max_disagreement": 0.05, "disagreement_bound": 1e-6, "guard_after": 20})
        _until(lambda: all((r.rollout("trading") or {}).get("deployment_id") == deployment for r in replicas))
        X = _rows(1, seed=9)
        for i in range(200):  # only replica a sees traffic: its guard trips, b hears of it from the database
            replicas[0].client.post("/predict", json={"rows": X.tolist()}, headers={"x-request-key": f"k{i}"})
            if replicas[0].rollout("trading") is None:
                break
        seen = {}
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            for i, r in enumerate(replicas):
                if i not in seen and r.rollout("trading") is None:
                    seen[i] = time.time()
            time.sleep(0.02)
        assert len(seen) == 2, "a replica still serves the canary"
        with session_scope(write=False) as s:
            [event] = gov.query_events(session=s, action="deployment.rolled_back",
                                       subject=gov.Subject("model_version", str(different)))
            [alert] = [a for a in gov.list_alerts(session=s, kind="rollback") if str(deployment) == a.subject_id]
        rolled_back_at = event.ts.timestamp()
        print(f"back on production {max(seen.values()) - rolled_back_at:.3f} s after the rollback was recorded")
        assert max(seen.values()) - rolled_back_at <= 2.0, (seen, rolled_back_at)
        body = event.payload_obj
        assert event.actor == "system:rollout-guard" and body["automatic"] and body["deployment_id"] == deployment
        [breach] = body["breached"]
        assert breach["guard"] == "max_disagreement" and breach["measured"] > 0.05
        assert body["measured"]["compared"] >= 20 and alert.severity == "critical"
        _until(lambda: receiver.events, timeout_s=10)
        [delivery] = receiver.events.values()
        assert receiver.rejected == 0  # signed with the subscription's secret
        assert delivery["type"] == "deployment.rolled_back" and delivery["data"]["deployment_id"] == deployment
        assert delivery["data"]["breached"] == body["breached"]
    for r in replicas:  # production answers everything again, on both replicas
        answers = [r.client.post("/predict", json={"rows": X.tolist()}, headers={"x-request-key": f"k{i}"})
                   for i in range(20)]
        assert {a.json()["version_id"] for a in answers} == {prod.id}


def test_unapproved_or_altered_versions_are_refused_and_production_keeps_answering(
        replicas: list[Replica], serving_db: dict[str, Any]) -> None:
    from convergence.platform.errors import IntegrityError, PolicyViolation

    candidate = register_trading(serving_db["tmp"], serving_db["evidence"], stage="candidate", seed=14)
    with pytest.raises(PolicyViolation, match="only an approved version can be deployed"):
        _deploy(candidate, "canary", percent=50)
    altered = register_trading(serving_db["tmp"], serving_db["evidence"], stage="approved", seed=15)
    with session_scope(write=False) as s:
        path = gov.load_artifact(session=s, version_id=altered)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # the stored bytes no longer hash to what the ledger says
    with pytest.raises(IntegrityError):
        _deploy(altered, "canary", percent=50)
    with session_scope(write=False) as s:
        assert gov.rollout.states(session=s).get("es-trading-student", {}).get("status") != "active"
    answer = replicas[1].client.post("/predict", json={"rows": _rows(1, seed=1).tolist()})
    assert answer.status_code == 200 and answer.json()["route"] == "production"


@pytest.fixture(scope="module")
def language(serving_db: dict[str, Any]) -> Iterator[Replica]:
    register_language(serving_db["tmp"], serving_db["evidence"])
    env = {**serving_db["env"], "CVG_SERVE_ROLLOUT_REPORT_S": "0.3"}
    replica = Replica("language", env, "a")
    yield replica
    replica.stop()


def test_a_language_canary_splits_by_prompt_and_its_disagreement_guard_trips(language: Replica,
                                                                             serving_db: dict[str, Any]) -> None:
    prod = _production("sotu-lm-student")
    newcomer = register_language(serving_db["tmp"], serving_db["evidence"], stage="approved", seed=7)
    deployment = _deploy(newcomer, "canary", percent=50)
    _until(lambda: (language.rollout("language") or {}).get("deployment_id") == deployment)
    prompts = [f"The state of the union {i}" for i in range(40)]

    def ask(prompt: str, seed: int = 0) -> dict[str, Any]:
        r = language.client.post("/generate", json={"prompt": prompt, "max_tokens": 6, "seed": seed})
        assert r.status_code == 200, r.text
        return {**r.json(), "header": r.headers["x-model-version"]}

    first = {p: ask(p) for p in prompts}
    versions = {a["version_id"] for a in first.values()}
    assert versions == {prod.id, newcomer} and all(str(a["version_id"]) == a["header"] for a in first.values())
    for p in prompts[:8]:  # the same prompt (another seed) lands on the same version
        assert ask(p, seed=3)["version_id"] == first[p]["version_id"]
    with session_scope() as s:
        gov.rollout.rollback(session=s, principal=person("ops"), name="sotu-lm-student")
    _until(lambda: language.rollout("language") is None, timeout_s=2.0)
    # a second try with a disagreement guard: two differently initialised models continue differently
    deployment = _deploy(newcomer, "shadow", guards={"max_disagreement": 0.5, "guard_after": 10})
    _until(lambda: (language.rollout("language") or {}).get("deployment_id") == deployment)
    for p in prompts:
        assert ask(p)["version_id"] == prod.id  # a shadow never answers
        if language.rollout("language") is None:
            break
    _until(lambda: language.rollout("language") is None, timeout_s=5.0)
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="deployment.rolled_back",
                                   subject=gov.Subject("model_version", str(newcomer)))[-1:]
    assert event.payload_obj["breached"][0]["guard"] == "max_disagreement" and event.payload_obj["automatic"]
    assert event.payload_obj["measured"]["compared"] >= 10 and json.loads(event.payload) == event.payload_obj

    def shadow_rows() -> int:  # the shadow's generations, logged under its version and flagged
        with session_scope(write=False) as s:
            return s.execute(text("SELECT COUNT(*) FROM prediction_log WHERE model_version_id = :v AND shadow"),
                             {"v": newcomer}).scalar() >= 10
    _until(shadow_rows, timeout_s=5)
