"""The kill switch on SQLite and PostgreSQL: only the risk role flips it; what a killed model answers is the
safe output its approver fixed, never a number chosen at kill time; state and event in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, InvalidInput, NotFound, PolicyViolation
from tests.people import person


def _production(model_file: Path, evidence_file: Path, *, safe_output: float | None) -> str:
    quant, val, boss, ops = person("quant"), person("val"), person("boss"), person("ops")
    with session_scope() as s:
        vid = gov.register_model(session=s, principal=quant, name="m", artifact=model_file, family="trading",
                                 role="student").id
        gov.validate(session=s, version_id=vid, principal=val, evidence=evidence_file)
        gov.approve(session=s, version_id=vid, principal=boss, reason="ok", safe_output=safe_output)
        gov.promote(session=s, version_id=vid, principal=ops)
    return "m"


@pytest.fixture
def model(db_url: str, model_file: Path, evidence_file: Path) -> str:
    return _production(model_file, evidence_file, safe_output=0.0)


def test_kill_and_resume_are_stateful_and_audited(model: str) -> None:
    risk, risk2, risk3 = person("risk"), person("risk2"), person("risk3")
    with session_scope() as s:
        gov.kill(session=s, name=model, reason="runaway", principal=risk, safe_output=True)
    with session_scope(write=False) as s:
        assert gov.kill_states(session=s) == {model: {"reason": "runaway", "safe_output": 0.0, "actor": "risk",
                                                      "at": gov.list_switches(session=s)[0].changed_at.isoformat()}}
    with session_scope() as s:
        gov.kill(session=s, name=model, reason="still runaway", principal=risk2)  # re-kill updates the one row
        gov.resume(session=s, name=model, principal=risk3, reason="fixed")
    with session_scope(write=False) as s:
        assert gov.kill_states(session=s) == {}
        [switch] = gov.list_switches(session=s)
        assert (switch.active, switch.actor, switch.reason) == (False, "risk3", "fixed")
        events = gov.query_events(session=s, subject=gov.Subject("model", model))
        assert [e.action for e in events] == ["serving.killed", "serving.killed", "serving.resumed"]
        first = events[0].payload_obj
        assert {k: first[k] for k in ("reason", "safe_output")} == {"reason": "runaway", "safe_output": 0.0}
        assert first["principal"]["id"] == risk.id and events[1].payload_obj["safe_output"] is None
        assert gov.verify(session=s).ok


@pytest.mark.parametrize("who", ["ops", "solo", "alice", "ada"])
def test_only_the_risk_role_may_kill_or_resume(model: str, who: str) -> None:
    principal = person(who)
    with pytest.raises(Forbidden, match="needs the risk role") as refused, session_scope() as s:
        gov.kill(session=s, name=model, reason="I think it is broken", principal=principal)
    assert refused.value.rule == "role-required:serving.kill"
    with session_scope() as s:
        gov.kill(session=s, name=model, reason="it is broken", principal=person("risk"))
    with pytest.raises(Forbidden, match="needs the risk role"), session_scope() as s:
        gov.resume(session=s, name=model, principal=principal)
    with session_scope(write=False) as s:
        assert model in gov.kill_states(session=s)
        assert [e.action for e in gov.query_events(session=s, action="serving.*_refused")] == [
            "serving.kill_refused", "serving.resume_refused"]


@pytest.mark.parametrize("safe_output", [9.99e37, 0.0, 1, "0.0"])
def test_the_safe_output_is_never_chosen_at_kill_time(model: str, safe_output: object) -> None:
    with pytest.raises(InvalidInput, match="true or false"), session_scope() as s:
        gov.kill(session=s, name=model, reason="x", principal=person("risk"), safe_output=safe_output)  # type: ignore[arg-type]


def test_a_safe_kill_needs_a_safe_output_fixed_at_approval(db_url: str, model_file: Path, evidence_file: Path) -> None:
    name = _production(model_file, evidence_file, safe_output=None)
    with pytest.raises(PolicyViolation, match="approved without a safe output"), session_scope() as s:
        gov.kill(session=s, name=name, reason="x", principal=person("risk"), safe_output=True)
    with session_scope() as s:
        switch = gov.kill(session=s, name=name, reason="x", principal=person("risk"))  # a plain kill: 503
        assert switch.safe_output is None


@pytest.mark.parametrize("kwargs,error,fragment", [
    ({"name": "nope", "reason": "x"}, NotFound, "no model called 'nope'"),
    ({"name": "m", "reason": "  "}, InvalidInput, "needs a reason"),
    ({"name": "m", "reason": "stop\x07now"}, InvalidInput, "control or invisible"),
])
def test_bad_kills_change_nothing(model: str, kwargs, error, fragment: str) -> None:
    risk = person("risk")
    with pytest.raises(error, match=fragment), session_scope() as s:
        gov.kill(session=s, principal=risk, **kwargs)
    with pytest.raises(InvalidInput, match="is not killed"), session_scope() as s:
        gov.resume(session=s, name=model, principal=risk)
    with session_scope(write=False) as s:
        assert gov.list_switches(session=s) == [] and gov.query_events(session=s, action="serving.killed") == []
