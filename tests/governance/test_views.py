"""The console's read models: the inventory's row per name, when a drift alert counts as open, what was live at an
instant, a version's record without server paths, and the proof data a browser rebuilds the hash from."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import NotFound
from tests.people import person


def _released(model_file: Path, evidence_file: Path, name: str = "alpha", *, family: str = "trading") -> int:
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name=name, artifact=model_file, family=family,
                                role="student")
    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=mv.id, evidence=evidence_file, reason="ok")
        gov.approve(session=s, principal=person("alice"), version_id=mv.id, reason="ok")
        gov.promote(session=s, principal=person("ops"), version_id=mv.id)
    return mv.id


def _report(version_id: int, drifted: bool, at: dt.datetime) -> None:
    with session_scope() as s:
        s.add(gov.DriftReport(model_version_id=version_id, window_start=at - dt.timedelta(hours=1), window_end=at,
                              rows=10, columns={}, drift_share=0.5 if drifted else 0.0, drifted=drifted, created_at=at,
                              created_by="monitor"))


def test_the_inventory_has_one_row_per_name_with_what_a_reviewer_asks(db_url: str, model_file: Path,
                                                                      language_model_file: Path,
                                                                      evidence_file: Path) -> None:
    alpha = _released(model_file, evidence_file)
    with session_scope() as s:
        gov.register_model(session=s, principal=person("nlp"), name="sotu", artifact=language_model_file, family="language",
                           role="student")
        gov.pack.classify(session=s, principal=person("risk"), name="alpha", tier="high", owner="quant",
                          validator="carol", next_review="2099-01-01", reason="material")
        gov.kill(session=s, principal=person("risk"), name="alpha", reason="incident 7")
        from convergence.platform.db import utcnow

        at = utcnow()
        gov.raise_alert(session=s, principal=person("monitor"), kind="drift", severity="warning",
                        dedupe_key=f"drift:{alpha}:ret_1", subject=gov.Subject("model_version", str(alpha)),
                        message="ret_1 drifted")
    with session_scope(write=False) as s:
        rows = {r["name"]: r for r in gov.views.inventory(session=s)}
    a, l = rows["alpha"], rows["sotu"]
    assert (a["production"]["id"], a["stage"], a["tier"], a["owner"], a["killed"], a["kill_reason"]) == (
        alpha, "production", "high", "quant", True, "incident 7")
    assert a["last_validation"]["actor"] == "carol" and a["open_drift_alerts"] == 1
    assert (l["production"], l["stage"], l["family"], l["tier"], l["killed"], l["open_drift_alerts"]) == (
        None, "candidate", "language", None, False, 0)
    _report(alpha, False, at + dt.timedelta(seconds=5))  # a later clean check of the same version closes it
    with session_scope(write=False) as s:
        assert gov.views.open_drift_alerts(session=s, version_id=alpha) == 0


def test_a_moment_names_the_version_then_and_its_approvers(db_url: str, model_file: Path, evidence_file: Path) -> None:
    first = _released(model_file, evidence_file)
    with session_scope(write=False) as s:
        promoted = gov.history(session=s, name="alpha")[-1]["at"]
    at = dt.datetime.fromisoformat(promoted) + dt.timedelta(microseconds=1)
    with session_scope(write=False) as s:
        then = gov.views.moment(session=s, name="alpha", at=at, events=True)
        before = gov.views.moment(session=s, name="alpha", at=at - dt.timedelta(days=1), events=False)
        with pytest.raises(NotFound):
            gov.views.moment(session=s, name="nobody", at=at, events=False)
    assert then["version"]["id"] == first and [a["actor"] for a in then["version"]["approvals"]] == ["carol", "alice"]
    assert then["version"]["approvals"][1]["principal"]["issuer"] == "https://idp.test"
    assert {e["action"] for e in then["events"]} >= {"model.registered", "model.promoted"}
    assert before["version"] is None and "events" not in before


def test_a_version_view_shows_no_server_path_and_the_proof_carries_the_hashed_text(
        db_url: str, model_file: Path, evidence_file: Path) -> None:
    version = _released(model_file, evidence_file)
    with session_scope() as s:
        gov.ledger.checkpoint(session=s, principal=person("auditor"))
    with session_scope(write=False) as s:
        view = gov.views.version_view(session=s, version_id=version, events=False)
        proof = gov.views.browser_proof(session=s, seq=2)
        row = s.get(gov.AuditEvent, 2)
        stored_hash, stored_payload = row.hash, row.payload
    text = json.dumps(view)
    assert "file://" not in text and "artifact_uri" not in text and "events" not in view
    assert [n["kind"] for n in view["graph"]["nodes"]] == ["student"]
    e = proof["event"]
    assert e["payload"] == stored_payload  # the exact stored text, never re-serialised
    from convergence.governance._ledger import event_hash

    assert event_hash(e["seq"], e["ts"], e["actor"], e["action"], e["subject_type"], e["subject_id"], e["payload"],
                      e["prev_hash"]) == stored_hash
    with session_scope(write=False) as s, pytest.raises(NotFound):
        gov.views.browser_proof(session=s, seq=10_000)
