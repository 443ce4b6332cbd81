"""Budgets: periods, four-eyes raises, soft alerts once, refusal before a run and a stop during one."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.energy import Reading
from convergence.platform.errors import BudgetExceeded, InvalidInput, NotFound, PolicyViolation
from tests.people import person

UTC = dt.timezone.utc
THIS_MONTH = dt.datetime.now(UTC).strftime("%Y-%m")


def reading(kwh: float, cpu_s: float = 10.0) -> Reading:
    """A SYNTHETIC usage reading (unit tests only)."""
    return Reading(wall_s=cpu_s, cpu_s=cpu_s, gpu_s=0.0, kwh=kwh, gco2e=kwh * 400, peak_mem_mb=100.0,
                   method="estimate", measured=False, scope="test")


@pytest.fixture
def project(db_url: str) -> str:
    with session_scope() as s:
        gov.ensure_project(session=s, name="desk", principal=person("ada"))
    return "desk"


@pytest.mark.parametrize("text,start,end", [
    ("2026", "2026-01-01", "2027-01-01"),
    ("2026-12", "2026-12-01", "2027-01-01"),
    ("2026-11-24", "2026-11-24", "2026-11-25"),
    ("2026-11-01..2026-11-15", "2026-11-01", "2026-11-15"),
])
def test_periods(text: str, start: str, end: str) -> None:
    a, b = gov.parse_period(text)
    assert (a.date().isoformat(), b.date().isoformat()) == (start, end) and a.tzinfo is not None


@pytest.mark.parametrize("text", ["2026-13", "last month", "2026-11-15..2026-11-01", ""])
def test_malformed_periods(text: str) -> None:
    with pytest.raises(InvalidInput, match="period"):
        gov.parse_period(text)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"hard": 0}, InvalidInput, "hard limit must be positive"),
    ({"hard": -5}, InvalidInput, "hard limit must be positive"),
    ({"hard": 5, "soft": 6}, InvalidInput, "soft limit"),
    ({"hard": 5, "soft": 0}, InvalidInput, "soft limit"),
    ({"metric": "joules"}, InvalidInput, "metric must be one of"),
    ({"family": "crypto"}, InvalidInput, "family must be one of"),
    ({"project": "nope"}, NotFound, "no project called"),
])
def test_bad_budgets_are_refused(project: str, kwargs, error, match) -> None:
    args = {"principal": person("fin"), "project": project, "metric": "kwh", "period": THIS_MONTH, "hard": 5.0, **kwargs}
    with pytest.raises(error, match=match), session_scope() as s:
        gov.set_budget(session=s, **args)
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.Budget)).scalar() == 0


def test_raising_needs_a_second_person(project: str) -> None:
    with session_scope() as s:
        budget, change = gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH,
                                        hard=5.0, soft=4.0)
    assert change is None
    with session_scope() as s:
        lowered, change = gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH,
                                         hard=3.0, soft=2.0)
    assert change is None and lowered.hard_limit == 3.0  # lowering applies at once
    with session_scope() as s:
        same, change = gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH,
                                      hard=10.0)
        change_id = change.id
    assert same.hard_limit == 3.0 and change.status == "pending"
    with pytest.raises(PolicyViolation, match="fin requested budget change .* cannot approve"), session_scope() as s:
        gov.decide_change(session=s, change_id=change_id, principal=person("fin"), approve=True)
    with session_scope() as s:
        gov.decide_change(session=s, change_id=change_id, principal=person("cfo"), approve=True)
    with session_scope(write=False) as s:
        status = gov.budget_status(session=s, project=project)[0]
        assert status["hard"] == 10.0 and status["soft"] == 2.0 and status["pending_changes"] == []
        actions = [e.action for e in gov.query_events(session=s, action="budget.*")]
        assert actions == ["budget.created", "budget.lowered", "budget.raise_requested", "budget.decide_refused",
                           "budget.raise_approved"]
    with pytest.raises(PolicyViolation, match="already applied"), session_scope() as s:
        gov.decide_change(session=s, change_id=change_id, principal=person("cfo"), approve=False)


def test_soft_limit_raises_exactly_one_alert(project: str) -> None:
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH, hard=10.0, soft=1.0)
    for kwh in (0.6, 0.6, 0.6):  # crosses the soft limit on the second, stays over on the third
        with session_scope() as s:
            gov.record_usage(session=s, project=project, reading=reading(kwh), family="trading", principal=person("runner"))
            assert gov.check_during(session=s, project=project, family="trading", principal=person("runner")) == []
    with session_scope(write=False) as s:
        alerts = gov.list_alerts(session=s, kind="budget.soft_limit")
        assert len(alerts) == 1 and "soft limit" in alerts[0].message
        assert len(gov.query_events(session=s, action="alert.raised")) == 1


def test_family_budgets_only_count_their_family(project: str) -> None:
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project=project, metric="cpu_hours", period=THIS_MONTH, hard=1.0,
                       family="language")
        gov.record_usage(session=s, project=project, reading=reading(0.1, cpu_s=7200), family="trading",
                         principal=person("runner"))
    with session_scope(write=False) as s:
        assert gov.budget_status(session=s, project=project)[0]["used"] == 0.0
        assert gov.check_during(session=s, project=project, family="trading", principal=person("runner")) == []


def _finished_run_with_usage(project: str, kwh: float) -> int:
    with session_scope() as s:
        run = gov.start_run(session=s, principal=person("quant"), pipeline="trading", project=project)
        gov.record_usage(session=s, project=project, reading=reading(kwh), run_id=run.id, family="trading",
                             principal=person("quant"))
        gov.finish_run(session=s, principal=person("quant"), run_id=run.id)
        return run.id


def test_check_before_compares_the_estimate_with_what_remains(project: str) -> None:
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH, hard=3.0)
    run_id = _finished_run_with_usage(project, kwh=2.0)
    with session_scope(write=False) as s:
        assert gov.estimate_run(session=s, project=project, pipeline="trading")["kwh"] == 2.0
        gov.check_before(session=s, project=project, family="trading", estimate={"kwh": 0.9})
        with pytest.raises(BudgetExceeded, match="has 1 left of 3"):
            gov.check_before(session=s, project=project, family="trading", estimate={"kwh": 1.5})
    assert run_id


def test_serving_usage_per_thousand_predictions_and_lineage(project: str, model_file) -> None:
    run_id = _finished_run_with_usage(project, kwh=0.5)
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name="m", artifact=model_file, family="trading",
                                role="student", run_id=run_id, project=project)
        gov.record_usage(session=s, project=project, reading=reading(0.02, cpu_s=40), model_version_id=mv.id,
                         predictions=10_000, principal=person("ops"))
    with session_scope(write=False) as s:
        rows = {r["model"]: r for r in gov.usage_report(session=s, project=project, by="model")}
        assert rows[mv.id]["kwh_per_1k_predictions"] == pytest.approx(0.002)
        assert rows[mv.id]["cpu_s_per_1k_predictions"] == pytest.approx(4.0)
        # every row has a label a person reads: the model's name and version, and what a blank key means
        assert rows[mv.id]["label"] == f"m v{mv.version} (#{mv.id})"
        assert rows[None]["label"] == "(pipeline work, no model)"
        steps = {r["step"]: r["label"] for r in gov.usage_report(session=s, project=project, by="step")}
        assert steps[None] == "(serving)" and all(label for label in steps.values())
        assert gov.lineage(session=s, version_id=mv.id)["usage"]["kwh"] == pytest.approx(0.5)
        with pytest.raises(InvalidInput, match="--by"):
            gov.usage_report(session=s, by="colour")
