"""The kill switch on SQLite and PostgreSQL: one row per model, state and audit event in one transaction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, NotFound


@pytest.fixture
def model(db_url: str, model_file: Path) -> str:
    with session_scope() as s:
        gov.register_model(session=s, actor="quant", name="m", artifact=model_file, family="trading", role="student")
    return "m"


def test_kill_and_resume_are_stateful_and_audited(model: str) -> None:
    with session_scope() as s:
        gov.kill(session=s, name=model, reason="runaway", actor="risk", safe_output=0.0)
    with session_scope(write=False) as s:
        assert gov.kill_states(session=s) == {model: {"reason": "runaway", "safe_output": 0.0, "actor": "risk",
                                                      "at": gov.list_switches(session=s)[0].changed_at.isoformat()}}
    with session_scope() as s:
        gov.kill(session=s, name=model, reason="still runaway", actor="risk2")  # re-kill updates the one row
        gov.resume(session=s, name=model, actor="risk3", reason="fixed")
    with session_scope(write=False) as s:
        assert gov.kill_states(session=s) == {}
        [switch] = gov.list_switches(session=s)
        assert (switch.active, switch.actor, switch.reason) == (False, "risk3", "fixed")
        events = gov.query_events(session=s, subject=gov.Subject("model", model))
        assert [e.action for e in events] == ["serving.killed", "serving.killed", "serving.resumed"]
        assert events[0].payload_obj == {"reason": "runaway", "safe_output": 0.0}
        assert gov.verify(session=s).ok


@pytest.mark.parametrize("kwargs,error,fragment", [
    ({"name": "nope", "reason": "x"}, NotFound, "no model called 'nope'"),
    ({"name": "m", "reason": "  "}, InvalidInput, "needs a reason"),
    ({"name": "m", "reason": "x", "safe_output": math.nan}, InvalidInput, "finite"),
])
def test_bad_kills_change_nothing(model: str, kwargs, error, fragment: str) -> None:
    with pytest.raises(error, match=fragment), session_scope() as s:
        gov.kill(session=s, actor="risk", **kwargs)
    with pytest.raises(InvalidInput, match="is not killed"), session_scope() as s:
        gov.resume(session=s, name=model, actor="risk")
    with session_scope(write=False) as s:
        assert gov.list_switches(session=s) == [] and gov.query_events(session=s, action="serving.killed") == []
