"""The language family round-trips through the model contract: train → artifact and reference profile at
registration → a real `cvg serve language` → the log → drift check. Held-out SOTU prompts raise nothing;
prompts from another corpus (Reuters) raise a drift alert; --retrain runs the language pipeline."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.governance import contract
from convergence.pipelines import parse_config, run_language
from convergence.pipelines import _language as L
from convergence.pipelines import _lm as lm
from convergence.pipelines._corpus import load_corpus
from convergence.platform.db import session_scope
from convergence.platform.settings import get_settings
from tests.people import person
from tests.pipelines.conftest import LENIENT_LM_GATES, TINY_LM

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _traffic(server, prompts: list[str]) -> dt.datetime:  # type: ignore[no-untyped-def]
    """Send ``prompts`` as clients would (greedy, the reference's token budget); the window's start."""
    start = dt.datetime.now(dt.timezone.utc)
    for p in prompts:
        r = server.client.post("/generate", json={"prompt": p, "max_tokens": L.REFERENCE_TOKENS})
        assert r.status_code == 200, r.text
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
        assert {"prompt_tokens", "loglik_per_token", "finish_eos", "token_band_0", "output"} <= set(profile.columns)
        gov.validate(session=s, version_id=student, principal=person("val"), evidence=evidence_file)
    with session_scope() as s:
        gov.approve(session=s, version_id=student, principal=person("boss"), reason="ok")
    with session_scope() as s:
        gov.promote(session=s, version_id=student, principal=person("ops"))
        path = gov.load_artifact(session=s, version_id=student)
    _, tok, _ = contract.language.load_artifact(path)
    corpus = load_corpus(holdout_from_year=cfg.corpus.holdout_from_year, max_train_docs=cfg.corpus.max_train_docs)
    holdout = lm.encode_documents(tok, [d.text for d in corpus.holdout])
    reuters = lm.encode_documents(tok, [d.text for d in corpus.reuters])

    settings = get_settings()
    env = {"CVG_DATABASE_URL": db_url, "CVG_HOME": str(settings.home), "CVG_SERVE_LOG_FLUSH_S": "0.2",
           "CVG_SERVE_KILL_POLL_S": "0.2", "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(Path(settings.home) / "bentoml")}
    server = Server("language", env, "--model", name)
    try:
        # the same kind of traffic the profile was built from (held-out addresses, other spans): no alert
        calm, calm_alerts = _check(name, _traffic(server, L.prompts_from(holdout, tok, n=300, seed=11)))
        # another corpus: newswire, not addresses
        shifted, alerts = _check(name, _traffic(server, L.prompts_from(reuters, tok, n=300, seed=12)))
    finally:
        server.stop()
    assert calm.rows == 300 and not calm.drifted and calm_alerts == [], calm.columns
    assert shifted.rows == 300 and shifted.drifted and alerts
    drifted = {c for c, r in shifted.columns.items() if r["drifted"]}
    assert drifted & {"loglik_per_token", *(f"token_band_{k}" for k in range(contract.language.BANDS))}, drifted

    from convergence.pipelines import retrain_after_alerts

    again = retrain_after_alerts(name=name, alert_ids=alerts, principal=person("quinn"))
    assert again["family"] == "language" and again["status"] == "succeeded"
    with session_scope() as s:
        run = gov.get_run(session=s, run_id=again["run_id"])
        assert run.pipeline == "language" and run.params["trigger"]["alert_ids"] == alerts
