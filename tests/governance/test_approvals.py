"""Four-eyes approvals and the stage machine, with principals holding the roles each step needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, InvalidInput, PolicyViolation
from tests.governance.conftest import verify_now
from tests.people import person


def _candidate(model_file: Path, name: str = "alpha", registrant: str = "bob") -> int:
    who = person(registrant)
    with session_scope() as s:
        return gov.register_model(session=s, principal=who, name=name, artifact=model_file, family="trading",
                                  role="student").id


def _to_approved(vid: int, evidence: Path) -> None:
    carol, alice = person("carol"), person("alice")
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=carol, evidence=evidence)
    with session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=alice, reason="policy met")


def _stage(vid: int) -> str:
    with session_scope(write=False) as s:
        return gov.get_model(session=s, version_id=vid).stage


def _actions(vid: int) -> list[str]:
    with session_scope(write=False) as s:
        return [e.action for e in gov.query_events(session=s, subject=gov.Subject("model_version", str(vid)))]


def test_full_four_eyes_path(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    _to_approved(vid, evidence_file)
    ops = person("ops")
    with session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=ops)
    assert _stage(vid) == "production"
    assert _actions(vid) == ["model.registered", "model.validated", "model.approved", "model.promoted"]
    with session_scope(write=False) as s:
        tree = gov.lineage(session=s, version_id=vid)
        events = gov.query_events(session=s, subject=gov.Subject("model_version", str(vid)))
    assert [(a["decision"], a["actor"]) for a in tree["approvals"]] == [("validated", "carol"), ("approved", "alice")]
    assert tree["approvals"][0]["evidence_sha256"] == gov.sha256_file(evidence_file)[0]
    # every event names the principal id and how it authenticated, inside the hashed payload
    recorded = [e.payload_obj["principal"] for e in events]
    assert [p["id"] for p in recorded] == [person(n).id for n in ("bob", "carol", "alice", "ops")]
    assert all(p["auth"] == "oidc" and p["iss"] == "https://idp.test" for p in recorded)


@pytest.mark.parametrize("step", ["validate", "approve", "reject", "promote"])
def test_the_registrant_cannot_take_the_next_step_even_holding_its_role(db_url: str, model_file: Path,
                                                                        evidence_file: Path, step: str) -> None:
    solo = person("solo")  # registrant, validator, approver and operator at once
    vid = _candidate(model_file, registrant="solo")
    if step in ("approve", "reject"):
        with session_scope() as s:
            gov.validate(session=s, version_id=vid, principal=person("carol"), evidence=evidence_file)
    if step == "promote":
        _to_approved(vid, evidence_file)
    rule = {"validate": "validator-not-registrant", "promote": "promoter-not-registrant"}.get(
        step, "approver-not-registrant")
    with pytest.raises(Forbidden, match=f"solo registered model version {vid} and cannot") as refused, \
            session_scope() as s:
        if step == "validate":
            gov.validate(session=s, version_id=vid, principal=solo, evidence=evidence_file)
        elif step == "approve":
            gov.approve(session=s, version_id=vid, principal=solo, reason="mine is fine")
        elif step == "reject":
            gov.reject(session=s, version_id=vid, principal=solo, reason="withdraw")
        else:
            gov.promote(session=s, version_id=vid, principal=solo)
    assert refused.value.rule == rule
    assert _stage(vid) == {"validate": "candidate", "promote": "approved"}.get(step, "validated")
    assert _actions(vid)[-1] == f"model.{step}_refused"
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action=f"model.{step}_refused")
    assert event.payload_obj["rule"] == rule and event.payload_obj["principal"]["id"] == solo.id
    assert verify_now().ok


def test_the_validator_cannot_also_approve(db_url: str, model_file: Path, evidence_file: Path) -> None:
    both = person("victoria", "validator", "approver")
    vid = _candidate(model_file)
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=both, evidence=evidence_file)
    for decide in (gov.approve, gov.reject):
        with pytest.raises(Forbidden, match="validated model version .* cannot also") as refused, session_scope() as s:
            decide(session=s, version_id=vid, principal=both, reason="looks right to me")
        assert refused.value.rule == "approver-not-validator"
    assert _stage(vid) == "validated"
    with session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=person("alice"), reason="a second pair of eyes")
    assert _stage(vid) == "approved"


@pytest.mark.parametrize("who,step", [("carol", "approve"), ("alice", "validate"), ("ops", "approve"),
                                      ("bob", "promote"), ("auditor", "validate")])
def test_each_step_needs_its_role_and_the_refusal_is_audited(db_url: str, model_file: Path, evidence_file: Path,
                                                             who: str, step: str) -> None:
    vid = _candidate(model_file)
    if step == "approve":
        with session_scope() as s:
            gov.validate(session=s, version_id=vid, principal=person("carol"), evidence=evidence_file)
    if step == "promote":
        _to_approved(vid, evidence_file)
    principal = person(who)
    with pytest.raises(Forbidden, match="needs the") as refused, session_scope() as s:
        if step == "validate":
            gov.validate(session=s, version_id=vid, principal=principal, evidence=evidence_file)
        elif step == "approve":
            gov.approve(session=s, version_id=vid, principal=principal, reason="r")
        else:
            gov.promote(session=s, version_id=vid, principal=principal)
    assert refused.value.rule == f"role-required:model.{step}" and refused.value.http_status == 403
    assert _actions(vid)[-1] == f"model.{step}_refused"


@pytest.mark.parametrize("path", [["approve"], ["promote"], ["validate", "promote"], ["validate", "validate"]])
def test_illegal_transitions_are_refused(db_url: str, model_file: Path, evidence_file: Path, path) -> None:
    vid = _candidate(model_file)
    carol, alice, ops = person("carol"), person("alice"), person("ops")
    *legal, illegal = path
    for _step in legal:
        with session_scope() as s:
            gov.validate(session=s, version_id=vid, principal=carol, evidence=evidence_file)
    before = _actions(vid)
    with pytest.raises(PolicyViolation, match="cannot become|only an approved version") as refused, \
            session_scope() as s:
        if illegal == "approve":
            gov.approve(session=s, version_id=vid, principal=alice, reason="skip validation")
        elif illegal == "promote":
            gov.promote(session=s, version_id=vid, principal=ops)
        else:
            gov.validate(session=s, version_id=vid, principal=carol, evidence=evidence_file)
    assert not isinstance(refused.value, Forbidden)  # the stage machine refused, not a role or a rule
    assert _actions(vid) == before


def test_rejected_is_final(db_url: str, model_file: Path) -> None:
    vid = _candidate(model_file)
    alice, carol = person("alice"), person("carol")
    with session_scope() as s:
        gov.reject(session=s, version_id=vid, principal=alice, reason="overfit")
    with pytest.raises(PolicyViolation, match="legal next stages: none"), session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=carol, evidence=Path(__file__))


def test_approval_needs_a_reason_without_control_characters(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    carol, alice = person("carol"), person("alice")
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=carol, evidence=evidence_file)
    with pytest.raises(InvalidInput, match="reason"), session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=alice, reason="  ")
    with pytest.raises(InvalidInput, match="control or invisible character U\\+001B"), session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=alice, reason="ok\x1b[2J\x1b[H all clear")
    assert _stage(vid) == "validated"


@pytest.mark.parametrize("value,fragment", [(9.99e37, "must lie in \\[-1, 1\\]"), (float("nan"), "finite"),
                                            (float("inf"), "finite"), (10**400, "too large"), (True, "number")])
def test_an_arbitrary_safe_output_is_refused_at_approval(db_url: str, model_file: Path, evidence_file: Path,
                                                         value: float, fragment: str) -> None:
    vid = _candidate(model_file)
    carol, alice = person("carol"), person("alice")
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=carol, evidence=evidence_file)
    with pytest.raises(InvalidInput, match=fragment), session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=alice, reason="ok", safe_output=value)
    with session_scope() as s:
        approved = gov.approve(session=s, version_id=vid, principal=alice, reason="ok", safe_output=0.0)
        assert approved.safe_output == 0.0
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="model.approved")
    assert event.payload_obj["safe_output"] == 0.0


def test_promotion_retires_the_previous_version_and_rollback_restores_it(db_url: str, model_file: Path,
                                                                         evidence_file: Path) -> None:
    first, second = _candidate(model_file), _candidate(model_file)
    for vid in (first, second):
        _to_approved(vid, evidence_file)
    ops = person("ops")
    with session_scope() as s:
        gov.promote(session=s, version_id=first, principal=ops)
    with session_scope() as s:
        gov.promote(session=s, version_id=second, principal=ops)
    assert (_stage(first), _stage(second)) == ("retired", "production")
    with session_scope() as s:
        restored = gov.rollback(session=s, name="alpha", principal=ops, reason="bad fills")
    assert restored.id == first
    assert (_stage(first), _stage(second)) == ("production", "retired")
    with session_scope(write=False) as s:
        assert [m.id for m in gov.list_models(session=s, stage="production")] == [first]
    assert _actions(first)[-1] == "model.rolled_back"


def test_rollback_never_hands_production_back_to_its_registrant(db_url: str, model_file: Path,
                                                                evidence_file: Path) -> None:
    solo = person("solo")
    first = _candidate(model_file, registrant="solo")
    second = _candidate(model_file)
    for vid in (first, second):
        _to_approved(vid, evidence_file)
    ops = person("ops")
    with session_scope() as s:
        gov.promote(session=s, version_id=first, principal=ops)
    with session_scope() as s:
        gov.promote(session=s, version_id=second, principal=ops)
    with pytest.raises(Forbidden, match="cannot put back into production") as refused, session_scope() as s:
        gov.rollback(session=s, name="alpha", principal=solo, reason="I prefer mine")
    assert refused.value.rule == "promoter-not-registrant" and _stage(second) == "production"


def test_rollback_without_a_predecessor_is_refused(db_url: str, model_file: Path, evidence_file: Path) -> None:
    vid = _candidate(model_file)
    _to_approved(vid, evidence_file)
    ops = person("ops")
    with session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=ops)
    with pytest.raises(PolicyViolation, match="nothing to roll back to"), session_scope() as s:
        gov.rollback(session=s, name="alpha", principal=ops)
    assert _stage(vid) == "production"


def test_whoever_triggered_a_run_is_a_registrant_of_what_it_registers(db_url: str, model_file: Path,
                                                                     evidence_file: Path) -> None:
    """A run triggered on Kubernetes registers as the pipelines service account; the person who asked for it
    (recorded in the run's trigger) still may not validate, approve or promote its models."""
    pipelines, solo = person("k8s-pipelines", "registrant", kind="service"), person("solo")
    with session_scope() as s:
        run = gov.start_run(session=s, principal=pipelines, pipeline="trading", params={
            "trigger": {"kind": "manual", "requested_by": {"id": solo.id, "name": solo.name}}})
        vid = gov.register_model(session=s, principal=pipelines, name="alpha", artifact=model_file,
                                 family="trading", role="student", run_id=run.id).id
    with pytest.raises(Forbidden, match="cannot validate") as refused, session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=solo, evidence=evidence_file)
    assert refused.value.rule == "validator-not-registrant"
    _to_approved(vid, evidence_file)
    with pytest.raises(Forbidden, match="cannot promote"), session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=solo)
