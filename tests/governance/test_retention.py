"""Retention: policies never below the legal minimum, audited; apply deletes only what has expired, in one
transaction with its event, never an audit event, and stored bytes only after the commit and only when
nothing kept still points at them. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.platform.db import session_scope, utcnow
from convergence.platform.errors import Forbidden, InvalidInput, NotFound
from tests.artifacts import synthetic_artifact
from tests.people import person

DAY = dt.timedelta(days=1)


def test_policies_are_defaults_until_set_never_below_the_minimum_and_every_change_is_audited(db_url: str) -> None:
    with session_scope(write=False) as s:
        shown = {p["class"]: p for p in gov.retention.policies(session=s, principal=person("auditor"))}
    assert set(shown) == {"prediction_log", "drift_reports", "usage", "artifacts"}
    assert shown["prediction_log"]["days"] >= 183 and not shown["prediction_log"]["set"]
    assert all(p["minimum_days"] == 183 for p in shown.values())
    with session_scope() as s:
        out = gov.retention.set_policy(session=s, principal=person("ada"), record_class="prediction_log", days=200,
                                       reason="desk policy 2026")
    assert out == {"class": "prediction_log", "days": 200, "before": shown["prediction_log"]["days"], "minimum_days": 183}
    with pytest.raises(InvalidInput, match="at least 183 days"), session_scope() as s:
        gov.retention.set_policy(session=s, principal=person("ada"), record_class="usage", days=30, reason="cheaper")
    with pytest.raises(InvalidInput, match="no record class"), session_scope() as s:
        gov.retention.set_policy(session=s, principal=person("ada"), record_class="audit_events", days=400, reason="x")
    with pytest.raises(Forbidden, match="retention.manage"), session_scope() as s:
        gov.retention.set_policy(session=s, principal=person("ops"), record_class="usage", days=400, reason="x")
    with session_scope(write=False) as s:
        shown = {p["class"]: p for p in gov.retention.policies(session=s, principal=person("ops"))}
        events = gov.query_events(session=s, action="retention.set")
        refused = gov.query_events(session=s, action="retention.manage_refused")
    assert shown["prediction_log"]["days"] == 200 and shown["prediction_log"]["reason"] == "desk policy 2026"
    assert [(e.action, e.payload_obj["days"]) for e in events] == [("retention.set", 200)] and len(refused) == 1


def _register(name: str, artifact: Path) -> int:
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("quant"), name=name, artifact=artifact,
                                  family="trading", role="student").id


def _report(version: int, at: dt.datetime, html: bytes) -> str:
    """A drift report made at ``at`` whose Evidently HTML is a stored blob; returns the blob's SHA-256."""
    stored = gov.get_artifact_store().put_bytes(html)
    with session_scope() as s:
        s.add(gov.DriftReport(model_version_id=version, window_start=at - DAY, window_end=at, rows=10, columns={},
                              drift_share=0.0, drifted=False, evidently_html_uri=stored.uri, created_at=at,
                              created_by="monitor"))
    return stored.sha256


def test_apply_deletes_only_what_expired_with_its_event_and_never_an_audit_event(db_url: str, tmp_path: Path) -> None:
    now = utcnow()
    later = now + 400 * DAY  # apply as of 400 days from now: what is logged now is 400 days old then
    live = _register("alpha", synthetic_artifact(tmp_path / "a.safetensors"))
    shared_file = synthetic_artifact(tmp_path / "shared.safetensors")
    ended, kept_twin = _register("beta", shared_file), _register("gamma", shared_file)  # one blob, two versions
    gone = _register("delta", synthetic_artifact(tmp_path / "d.safetensors"))
    with session_scope() as s:
        for version in (ended, gone):
            gov.reject(session=s, principal=person("boss"), version_id=version, reason="not good enough")
        shas = {v: gov.get_model(session=s, version_id=v).artifact_sha256 for v in (live, ended, gone)}
        rows = [(f"old-{i}", now + i * dt.timedelta(seconds=1), np.ones(3, np.float32), 0.1, 0.3) for i in range(5)]
        rows += [(f"new-{i}", now + 300 * DAY, np.ones(3, np.float32), 0.1, 0.3) for i in range(3)]
        gov.log_predictions(session=s, model_version_id=live, rows=rows)
        for at in (now, now + 300 * DAY):
            usage = gov.record_usage(session=s, project="default", principal=person("quant"), model_version_id=live,
                                     reading=_reading())
            usage.created_at = at
    old_html, new_html = _report(live, now, b"<html>old</html>"), _report(live, now + 300 * DAY, b"<html>new</html>")
    with session_scope() as s:
        for record_class, days in (("artifacts", 183), ("usage", 365), ("drift_reports", 365)):
            gov.retention.set_policy(session=s, principal=person("ada"), record_class=record_class, days=days,
                                     reason="test")
    store = gov.get_artifact_store()
    with session_scope(write=False) as s:
        dry = gov.retention.apply(session=s, principal=person("auditor"), now=later, dry_run=True)
    expired = {name: c["expired"] for name, c in dry["classes"].items()}
    assert expired == {"prediction_log": 5, "usage": 1, "drift_reports": 1, "artifacts": 2} and dry["blobs"] == 2
    with pytest.raises(Forbidden, match="retention.apply"), session_scope() as s:  # the auditor only looks
        gov.retention.apply(session=s, principal=person("auditor"), now=later)
    # a transaction that fails after apply leaves every row and every byte where it was
    with pytest.raises(ZeroDivisionError), session_scope() as s:
        gov.retention.apply(session=s, principal=person("ops"), now=later)
        1 / 0
    assert store.locate(old_html) and store.locate(shas[gone])
    with session_scope(write=False) as s:
        events_before = s.execute(select(func.count()).select_from(gov.AuditEvent)).scalar_one()
    with session_scope() as s:
        done = gov.retention.apply(session=s, principal=person("ops"), now=later)
    assert {name: c["expired"] for name, c in done["classes"].items()} == expired and not done["dry_run"]
    with session_scope(write=False) as s:
        assert sorted(s.execute(select(gov.PredictionLog.prediction_id)).scalars()) == ["new-0", "new-1", "new-2"]
        assert s.execute(select(func.count()).select_from(gov.Usage)).scalar_one() == 1
        assert [r.evidently_html_uri.rsplit("/", 1)[-1] for r in s.execute(select(gov.DriftReport)).scalars()] == [new_html]
        assert {m.id for m in gov.list_models(session=s)} >= {live, ended, kept_twin, gone}  # rows stay, bytes go
        applied = gov.query_events(session=s, action="retention.applied")
        assert s.execute(select(func.count()).select_from(gov.AuditEvent)).scalar_one() == events_before + 1
        assert gov.verify(session=s).ok
    assert len(applied) == 1 and applied[0].payload_obj["classes"]["prediction_log"]["expired"] == 5
    assert applied[0].actor == "ops"
    for sha in (old_html, shas[gone]):
        with pytest.raises(NotFound):
            store.locate(sha)
    assert store.locate(new_html) and store.locate(shas[live])
    assert store.locate(shas[ended])  # rejected long ago, but the same bytes are a kept version's (gamma)


def _reading():  # type: ignore[no-untyped-def]
    from convergence.platform.energy import Reading

    return Reading(1.0, 1.0, 0.0, 0.001, 0.4, 10.0, "estimate", False, "test")


def _promote(version: int, evidence: Path) -> None:
    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=version, evidence=evidence)
        gov.approve(session=s, principal=person("alice"), version_id=version, reason="ok")
        gov.promote(session=s, principal=person("ops"), version_id=version)


def test_what_rollback_restores_and_what_open_budgets_count_is_kept(db_url: str, tmp_path: Path, evidence_file: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The most recently retired version of a name keeps its bytes (rollback restores it); usage inside a budget
    period not yet over is never deleted; a minimum the configuration leaves out stays six months."""
    from convergence.platform.settings import get_settings

    first = _register("alpha", synthetic_artifact(tmp_path / "v1.safetensors"))
    _promote(first, evidence_file)
    second = _register("alpha", synthetic_artifact(tmp_path / "v2.safetensors"))
    _promote(second, evidence_file)  # first is retired now: what `cvg models rollback alpha` would restore
    now = utcnow()
    with session_scope() as s:
        first_sha = gov.get_model(session=s, version_id=first).artifact_sha256
        gov.set_budget(session=s, principal=person("fin"), project="default", metric="kwh",
                       period=f"{now.date()}..{(now + 800 * DAY).date()}", hard=100.0)  # open until 800 days on
        usage = gov.record_usage(session=s, project="default", principal=person("quant"), reading=_reading())
        usage.created_at = now
        for record_class, days in (("artifacts", 183), ("usage", 183)):
            gov.retention.set_policy(session=s, principal=person("ada"), record_class=record_class, days=days,
                                     reason="test")
    with session_scope() as s:
        done = gov.retention.apply(session=s, principal=person("ops"), now=now + 400 * DAY)
    assert done["classes"]["artifacts"]["expired"] == 0 and done["classes"]["usage"]["expired"] == 0
    assert gov.get_artifact_store().locate(first_sha)
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.Usage)).scalar_one() == 1
    monkeypatch.setenv("CVG_RETENTION_MINIMUM_DAYS", '{"prediction_log": 400}')
    get_settings.cache_clear()
    assert gov.retention.minimum_days("prediction_log") == 400 and gov.retention.minimum_days("usage") == 183
    with pytest.raises(InvalidInput, match="at least 183 days"), session_scope() as s:
        gov.retention.set_policy(session=s, principal=person("ada"), record_class="usage", days=1, reason="x")
    get_settings.cache_clear()


def test_bytes_a_new_version_took_since_the_deletions_are_not_discarded(db_url: str, tmp_path: Path) -> None:
    """Discarding looks again after the commit: a version registered with the same bytes in between keeps them."""
    from convergence.governance import _retention

    path = synthetic_artifact(tmp_path / "shared.safetensors")
    sha = gov.get_artifact_store().put(path).sha256
    assert _retention.discard([sha], []) == [sha]  # nothing references it: it goes
    _register("epsilon", path)  # the same bytes, registered again
    assert _retention.discard([sha], []) == [] and gov.get_artifact_store().locate(sha)
