"""API fixtures: the app in-process (Starlette's test client) for most tests, a real `cvg api` (uvicorn) on
loopback where a client or the CLI must reach it over HTTP (the OpenID Provider is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest



@pytest.fixture
def client(db_url: str) -> Iterator[Any]:
    """The control-plane app in-process, on the test's database (no pipeline runs: CVG_API_MAX_RUNS=0)."""
    from starlette.testclient import TestClient

    from convergence.platform.api import create_app
    from convergence.platform.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVG_API_MAX_RUNS", "0")
        mp.setenv("CVG_API_MAX_BODY_BYTES", "65536")
        get_settings.cache_clear()
        with TestClient(create_app(), raise_server_exceptions=False) as test_client:
            yield test_client
    get_settings.cache_clear()


class ApiServer:
    """A real `cvg api` process on loopback."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        from convergence.serving import ServerProcess

        self.process = ServerProcess("api", log=log, env=env, command=("api",)).start()
        self.url = self.process.url

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def api_server(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """`cvg api` on the test's database; with the `oidc` fixture in use, it trusts that provider."""
    env = {"CVG_API_MAX_RUNS": "0"}
    if "oidc" in request.fixturenames:
        env.update(request.getfixturevalue("oidc").env())
    server = ApiServer(env, tmp_path / "api.log")
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


CONSOLE_COLUMNS = ["ret_1", "rvol_5", "imbalance", "output"]


def _synthetic(n: int, shift: float = 0.0, seed: int = 0) -> Any:
    """SYNTHETIC monitoring data (tests only): four normal columns, the first shifted on request."""
    import numpy as np

    data = np.random.default_rng(seed).normal(0, 1, (n, len(CONSOLE_COLUMNS)))
    data[:, 0] += shift
    return data


@pytest.fixture
def console_story(db_url: str, model_file: Path, evidence_file: Path, tmp_path: Path) -> dict[str, Any]:
    """What the console shows, made through the governance services by authenticated people: a dataset and a run
    with metered steps; a teacher; student v1 validated by carol, approved by alice, promoted by ops, drift-checked
    with Evidently on shifted traffic (alerts), killed and resumed by risk; then v2 approved by anna and promoted
    (v1 retired), an INT8 copy of v2, a classification, a monthly energy budget with serving usage, and a signed
    checkpoint over all of it. ``between`` is an instant after v1's promotion and before v2's."""
    import datetime as dt
    import time
    import uuid

    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.energy import Reading
    from tests.people import person

    def reading(kwh: float, cpu_s: float) -> Reading:
        return Reading(wall_s=cpu_s, cpu_s=cpu_s, gpu_s=0.0, kwh=kwh, gco2e=kwh * 300, peak_mem_mb=512.0,
                       method="estimate", measured=False, scope="process")

    ticks = tmp_path / "ticks.csv"
    ticks.write_text("ts,price\n2013-09-03T09:30:00,1640.25\n")
    quant = person("quant")
    with session_scope() as s:
        ds = gov.register_dataset(session=s, principal=quant, path=ticks, name="es-ticks", rows=1)
        run = gov.start_run(session=s, principal=quant, pipeline="trading", dataset_id=ds.id)
        for step, kwh in (("train_teacher", 0.004), ("distill_student", 0.0015), ("walk_forward", 0.002)):
            gov.record_usage(session=s, project="default", reading=reading(kwh, kwh * 1e4), principal=quant,
                             run_id=run.id, family="trading", step=step)
        teacher = gov.register_model(session=s, principal=quant, name="alpha-teacher", artifact=model_file,
                                     family="trading", role="teacher", dataset=ds.id, run_id=run.id)
        v1 = gov.register_model(session=s, principal=quant, name="alpha", artifact=model_file, family="trading",
                                role="student", parent_id=teacher.id, run_id=run.id, dataset=ds.id,
                                metrics={"ic": 0.031, "fidelity": 0.97}, description="E-mini student <b>v1</b>")
        gov.finish_run(session=s, principal=quant, run_id=run.id, status="succeeded")
        gov.save_profile(session=s, model_version_id=v1.id, data=_synthetic(3000), columns=CONSOLE_COLUMNS,
                         positions=[3, 4, 5, -1])
    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=v1.id, evidence=evidence_file, reason="reviewed")
        gov.approve(session=s, principal=person("alice"), version_id=v1.id, safe_output=0.0,
                    reason='meets policy — café ✓ "quoted" \\ back\u2028<img src=x onerror=alert(1)>\nline two\tend')
        gov.promote(session=s, principal=person("ops"), version_id=v1.id, reason="first release")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
    rows = [(str(uuid.uuid4()), start + dt.timedelta(milliseconds=i), [9.0, 9.0, 9.0, *r[:3]], float(r[3]), 0.3)
            for i, r in enumerate(_synthetic(1000, shift=0.8, seed=3))]
    with session_scope() as s:
        gov.log_predictions(session=s, model_version_id=v1.id, rows=rows)
    with session_scope() as s:
        report, _ = gov.check_drift(session=s, principal=person("monitor"), name="alpha", since=start,
                                    until=start + dt.timedelta(minutes=5), evidently=True)
    with session_scope() as s:
        gov.kill(session=s, principal=person("risk"), name="alpha", reason="drift under review", safe_output=True)
    with session_scope() as s:
        gov.resume(session=s, principal=person("risk"), name="alpha", reason="reviewed: benign")
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    with session_scope() as s:
        v2 = gov.register_model(session=s, principal=quant, name="alpha", artifact=model_file, family="trading",
                                role="student", parent_id=teacher.id, metrics={"ic": 0.035})
    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=v2.id, evidence=evidence_file, reason="reviewed")
        gov.approve(session=s, principal=person("anna"), version_id=v2.id, safe_output=0.0, reason="better IC")
        gov.promote(session=s, principal=person("ops"), version_id=v2.id, reason="second release")
    with session_scope() as s:
        int8 = gov.register_model(session=s, principal=quant, name="alpha", artifact=model_file, family="trading",
                                  role="quantized", parent_id=v2.id)
        gov.record_usage(session=s, project="default", reading=reading(0.0002, 3.0), principal=person("ops"),
                         model_version_id=v2.id, family="trading", predictions=1000)
        gov.pack.classify(session=s, principal=person("risk"), name="alpha", tier="high", owner="quant",
                          validator="carol", next_review="2099-06-30", reason="desk signal")
        month = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")
        gov.set_budget(session=s, principal=person("fin"), project="default", metric="kwh", period=month, hard=0.02,
                       soft=0.005, reason="monthly energy")
    from tests.people import record_seeded

    record_seeded()  # the seeded people's grants in the ledger, so a full verification reconciles
    with session_scope() as s:
        checkpoint = gov.ledger.checkpoint(session=s, principal=person("auditor"))
    return {"teacher": teacher.id, "v1": v1.id, "v2": v2.id, "int8": int8.id, "report": report.id,
            "between": between, "checkpoint_size": checkpoint.seq, "dataset": ds.id, "run": run.id}
