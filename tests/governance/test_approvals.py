"""Four-eyes approvals and the stage machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, PolicyViolation
from tests.governance.conftest import verify_now


def _candidate(model_file: Path, name: str = "alpha", registrant: str = "bob") -> int:
    with session_scope() as s:
        return gov.register_model(session=s, actor=registrant, name=name, artifact=model_file, family="trading",
                                  role="student").id


def _to_approved(vid: int, evidence: Path) -> None:
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, actor="carol", evidence=evidence)
    with session_scope() as s:
        gov.approve(session=s, version_id=vid, actor="alice", reason="policy met")


def _stage(vid: int) -> str:
    with session_scope(write=False) as s:
        return gov.get_model(session=s, version_id=vid).stage


def _actions(vid: int) -> list[str]:
    with session_scope(write=False) as s:
        return [e.action for e in gov.query_events(session=s, subject=gov.Subject("model_version", str(vid)))]


def test_full_four_eyes_path(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    _to_approved(vid, evidence_file)
    with session_scope() as s:
        gov.promote(session=s, version_id=vid, actor="ops")
    assert _stage(vid) == "production"
    assert _actions(vid) == ["model.registered", "model.validated", "model.approved", "model.promoted"]
    with session_scope(write=False) as s:
        tree = gov.lineage(session=s, version_id=vid)
    assert [(a["decision"], a["actor"]) for a in tree["approvals"]] == [("validated", "carol"), ("approved", "alice")]
    assert tree["approvals"][0]["evidence_sha256"] == gov.sha256_file(evidence_file)[0]


@pytest.mark.parametrize("step", ["validate", "approve", "reject"])
def test_registrant_cannot_decide_and_the_refusal_is_audited(db_url: str, model_file: Path, evidence_file: Path,
                                                              step: str) -> None:
    vid = _candidate(model_file)
    if step == "approve":
        with session_scope() as s:
            gov.validate(session=s, version_id=vid, actor="carol", evidence=evidence_file)
    with pytest.raises(PolicyViolation, match="bob registered model version .* cannot"), session_scope() as s:
        if step == "validate":
            gov.validate(session=s, version_id=vid, actor="bob", evidence=evidence_file)
        elif step == "approve":
            gov.approve(session=s, version_id=vid, actor="bob", reason="mine is fine")
        else:
            gov.reject(session=s, version_id=vid, actor="bob", reason="withdraw")
    assert _stage(vid) == ("validated" if step == "approve" else "candidate")
    refused = {"validate": "model.validation_refused", "approve": "model.approval_refused",
               "reject": "model.rejection_refused"}[step]
    assert _actions(vid)[-1] == refused
    assert verify_now().ok


@pytest.mark.parametrize("path", [["approve"], ["promote"], ["validate", "promote"], ["validate", "validate"]])
def test_illegal_transitions_are_refused(db_url: str, model_file: Path, evidence_file: Path, path) -> None:
    vid = _candidate(model_file)
    *legal, illegal = path
    for step in legal:
        with session_scope() as s:
            gov.validate(session=s, version_id=vid, actor="carol", evidence=evidence_file)
    before = _actions(vid)
    with pytest.raises(PolicyViolation), session_scope() as s:
        if illegal == "approve":
            gov.approve(session=s, version_id=vid, actor="alice", reason="skip validation")
        elif illegal == "promote":
            gov.promote(session=s, version_id=vid, actor="ops")
        else:
            gov.validate(session=s, version_id=vid, actor="carol", evidence=evidence_file)
    assert _actions(vid) == before


def test_rejected_is_final(db_url: str, model_file: Path) -> None:
    vid = _candidate(model_file)
    with session_scope() as s:
        gov.reject(session=s, version_id=vid, actor="carol", reason="overfit")
    with pytest.raises(PolicyViolation, match="legal next stages: none"), session_scope() as s:
        gov.validate(session=s, version_id=vid, actor="carol", evidence=Path(__file__))


def test_approval_needs_a_reason(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, actor="carol", evidence=evidence_file)
    with pytest.raises(InvalidInput, match="reason"), session_scope() as s:
        gov.approve(session=s, version_id=vid, actor="alice", reason="  ")


def test_promotion_retires_the_previous_version_and_rollback_restores_it(db_url: str, model_file: Path,
                                                                         evidence_file: Path) -> None:
    first, second = _candidate(model_file), _candidate(model_file)
    for vid in (first, second):
        _to_approved(vid, evidence_file)
    with session_scope() as s:
        gov.promote(session=s, version_id=first, actor="ops")
    with session_scope() as s:
        gov.promote(session=s, version_id=second, actor="ops")
    assert (_stage(first), _stage(second)) == ("retired", "production")
    with session_scope() as s:
        restored = gov.rollback(session=s, name="alpha", actor="ops", reason="bad fills")
    assert restored.id == first
    assert (_stage(first), _stage(second)) == ("production", "retired")
    with session_scope(write=False) as s:
        assert [m.id for m in gov.list_models(session=s, stage="production")] == [first]
    assert _actions(first)[-1] == "model.rolled_back"


def test_rollback_without_a_predecessor_is_refused(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    _to_approved(vid, evidence_file)
    with session_scope() as s:
        gov.promote(session=s, version_id=vid, actor="ops")
    with pytest.raises(PolicyViolation, match="nothing to roll back to"), session_scope() as s:
        gov.rollback(session=s, name="alpha", actor="ops")
    assert _stage(vid) == "production"
