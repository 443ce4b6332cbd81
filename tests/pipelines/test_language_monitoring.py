"""The language family round-trips through the model contract: train → artifact and reference profile at
registration → a real `cvg serve language` → the log → drift check. Held-out SOTU prompts raise nothing;
prompts from another corpus (Reuters) raise a drift alert; --retrain runs the language pipeline."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest

from convergence import governance as gov
from convergence.governance import contract
from convergence.governance._driftlog import window_matrix
from convergence.pipelines import parse_config, run_language, traffic_prompts
from convergence.pipelines import _language as L
from convergence.platform.db import session_scope
from convergence.platform.settings import get_settings
from tests.people import person
from tests.pipelines.conftest import LENIENT_LM_GATES, TINY_LM

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _traffic(server, prompts: list[str], *, sampled_every: int = 0) -> dt.datetime:  # type: ignore[no-untyped-def]
    """Send ``prompts`` as 8 concurrent clients would: greedy for 16 tokens, and every ``sampled_every``-th sampled
    at 0.8 for 8 (requests the profile's greedy view does not cover: drift leaves their view columns out); the
    window's start."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        body: dict[str, object] = {"prompt": prompts[i], "max_tokens": 16}
        if sampled_every and i % sampled_every == 0:
            body.update(max_tokens=8, temperature=0.8, seed=i)
        r = server.client.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return i

    start = dt.datetime.now(dt.timezone.utc)
    with ThreadPoolExecutor(8) as pool:
        assert len(list(pool.map(one, range(len(prompts))))) == len(prompts)
    return start


def _check(name: str, since: dt.datetime) -> tuple[gov.DriftReport, list]:  # type: ignore[type-arg]
    time.sleep(1.0)  # the replica's log flushes every 0.2 s
    with session_scope() as s:
        report, alerts = gov.check_drift(session=s, principal=person("monitor"), name=name, since=since,
                                         until=dt.datetime.now(dt.timezone.utc), evidently=False)
        s.expunge(report)
        return report, [a.id for a in alerts]


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL's drift reads: tests/governance/test_driftlog.py
def test_language_profile_serving_log_and_drift(db_url: str, ray_session, evidence_file: Path) -> None:
    from tests.serving.conftest import Server

    cfg = parse_config({**TINY_LM, "train": {**TINY_LM["train"], "student_steps": 40}, "gates": LENIENT_LM_GATES},
                       "language")
    summary = run_language(cfg, principal=person("nlp"))
    student, name = summary["versions"]["student"], f"{cfg.name}-student"
    sig = contract.language.SIGNATURE
    with session_scope() as s:
        profile = s.query(gov.ReferenceProfile).filter_by(model_version_id=student).one()
        assert list(profile.columns) == sig.columns and list(profile.positions) == sig.positions
        assert profile.rows == L.REFERENCE_PROMPTS
        assert {"prompt_tokens", "prompt_loglik_per_token", "greedy_eos", "greedy_output_tokens", "token_band_0",
                "greedy_loglik_per_token"} <= set(profile.columns)
        gov.validate(session=s, version_id=student, principal=person("val"), evidence=evidence_file)
    with session_scope() as s:
        gov.approve(session=s, version_id=student, principal=person("boss"), reason="ok")
    with session_scope() as s:
        gov.promote(session=s, version_id=student, principal=person("ops"))
        path = gov.load_artifact(session=s, version_id=student)
    calm_prompts = traffic_prompts(version_id=student, source="holdout", n=1620, seed=11)
    news_prompts = traffic_prompts(version_id=student, source="reuters", n=300, seed=12)

    settings = get_settings()
    env = {"CVG_DATABASE_URL": db_url, "CVG_HOME": str(settings.home), "CVG_SERVE_LOG_FLUSH_S": "0.2",
           "CVG_SERVE_KILL_POLL_S": "0.2", "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(Path(settings.home) / "bentoml")}
    server = Server("language", env, "--model", name)
    try:
        # each served generation is logged exactly as the reference was computed at registration
        since = dt.datetime.now(dt.timezone.utc)
        for p in calm_prompts[:20]:
            assert server.client.post("/generate", json={"prompt": p, "max_tokens": 16}).status_code == 200
        time.sleep(1.0)
        with session_scope() as s:
            profile = s.query(gov.ReferenceProfile).filter_by(model_version_id=student).one()
            logged = window_matrix(s, profile, since, dt.datetime.now(dt.timezone.utc))
        model, tok, _ = contract.language.load_artifact(path)
        np.testing.assert_allclose(logged, contract.language.reference(model, tok, calm_prompts[:20]), rtol=1e-4,
                                   atol=1e-4)
        # the same kind of traffic the profile was built from (held-out addresses, other spans, some sampled): calm
        calm, calm_alerts = _check(name, _traffic(server, calm_prompts[20:], sampled_every=4))
        # another corpus: newswire, not addresses
        shifted, alerts = _check(name, _traffic(server, news_prompts))
    finally:
        server.stop()
    assert calm.rows == 1600 and not calm.drifted and calm_alerts == [], {
        c: (r["method"], r["statistic"], r["rows"]) for c, r in calm.columns.items() if r["drifted"]}
    assert calm.columns["greedy_eos"]["rows"] == 1200 and calm.columns["prompt_tokens"]["rows"] == 1600
    assert shifted.rows == 300 and shifted.drifted and alerts
    drifted = {c for c, r in shifted.columns.items() if r["drifted"]}
    assert "prompt_loglik_per_token" in drifted, shifted.columns  # newswire is unlikely text for an addresses model

    # --retrain runs the version's own family: here as a Kubernetes Job (a fake API server: none runs here), whose
    # command is the language pipeline with the production config; the local path calls run_language the same way
    from convergence.pipelines import retrain_after_alerts
    from tests.pipelines.test_kubernetes import fake_cluster

    fakes = fake_cluster(False)
    again = retrain_after_alerts(name=name, alert_ids=alerts, principal=person("quinn"), kubernetes=True, api=fakes)
    [(_, job)] = fakes["batch"].calls
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert again["kind"] == "Job" and command[:4] == ["cvg", "pipelines", "run", "language"]
    assert json.loads(command[command.index("--set") + 1])["train"]["student_steps"] == 40
    assert json.loads(command[command.index("--trigger") + 1])["alert_ids"] == alerts
