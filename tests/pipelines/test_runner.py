"""The pipeline runner: run records, metering of steps, and budgets enforced before and during runs."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.pipelines._runner import pipeline_run
from convergence.platform.db import session_scope
from convergence.platform.errors import BudgetExceeded, InvalidInput
from tests.governance.test_budgets import _finished_run_with_usage, project  # noqa: F401 - a shared fixture
from tests.people import person

THIS_MONTH = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")


def test_a_run_that_would_exceed_the_hard_limit_is_refused_before_it_starts(project: str) -> None:
    _finished_run_with_usage(project, kwh=2.0)  # the estimate for the next run
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project=project, metric="kwh", period=THIS_MONTH, hard=3.0)
    with pytest.raises(BudgetExceeded, match="estimated at 2"):
        with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant"), project=project,
                          family="trading"):
            pytest.fail("the run must not start")
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.PipelineRun)).scalar() == 1  # no new run
        refused = gov.query_events(session=s, action="run.refused")
        assert len(refused) == 1 and refused[0].payload_obj["estimate"]["kwh"] == 2.0


def test_crossing_the_hard_limit_stops_at_the_next_step_boundary(project: str, monkeypatch) -> None:
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project=project, metric="cpu_hours", period=THIS_MONTH, hard=1e-6)
    ran = []
    with pytest.raises(BudgetExceeded, match="stopped after step first"):
        with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant"), project=project,
                          family="trading") as ctx:
            assert ctx.metering
            with ctx.step("first"):
                sum(i * i for i in range(300_000))  # real CPU work, metered
                ran.append("first")
            with ctx.step("second"):
                ran.append("second")
    assert ran == ["first"]
    with session_scope(write=False) as s:
        run = s.execute(select(gov.PipelineRun)).scalars().one()
        assert run.status == "stopped" and "budget" in run.error
        steps = [u.step for u in s.execute(select(gov.Usage).where(gov.Usage.run_id == run.id)).scalars()]
        assert steps == ["first"]  # the completed step and its usage are kept
        assert gov.verify(session=s).ok




def test_a_failing_step_is_recorded_and_closes_the_run_as_failed(project: str) -> None:
    with pytest.raises(InvalidInput):
        with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant"), project=project) as ctx:
            with ctx.step("features"):
                raise InvalidInput("no columns")
    with session_scope(write=False) as s:
        run = s.execute(select(gov.PipelineRun)).scalars().one()
        assert run.status == "failed" and run.error == "no columns"
        assert s.execute(select(func.count()).select_from(gov.Usage)).scalar() == 1


def test_a_long_step_says_how_long_it_has_been_running_and_stops_saying_it(project: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_PROGRESS_INTERVAL_S", "0.05")
    get_settings.cache_clear()
    said: list[tuple[str, str, str]] = []
    with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant"), project=project,
                      progress=lambda *item: said.append(item)) as ctx:
        with ctx.step("slow"):
            time.sleep(0.6)
        with ctx.step("quick"):
            pass
        time.sleep(0.2)  # nothing more may come from a step that ended
    states = [(step, state) for step, state, _ in said if step in ("slow", "quick")]
    running = [detail for step, state, detail in said if state == "running"]
    assert states[0] == ("slow", "start") and ("slow", "running") in states and len(running) >= 1
    assert all(d.endswith(" s so far") for d in running)
    assert states.index(("slow", "done")) > max(i for i, s in enumerate(states) if s == ("slow", "running"))
    assert ("quick", "running") not in states
    get_settings.cache_clear()


def test_a_long_step_says_what_its_workers_told_the_board(project: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from convergence.pipelines import _progress
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_PROGRESS_INTERVAL_S", "0.05")
    get_settings.cache_clear()
    said: list[tuple[str, str, str]] = []
    with pipeline_run(pipeline="trading", params={}, dataset_id=None, principal=person("quant"), project=project,
                      progress=lambda *item: said.append(item)) as ctx:
        ctx.board = _progress.Board()
        with ctx.step("train"):
            on_epoch = _progress.per_epoch(ctx.board, "train", total=8, who="teacher")
            on_epoch(2, 0.91234)
            time.sleep(0.3)
            _progress.tell(ctx.board, "other", "not this step's")
    running = [detail for step, state, detail in said if step == "train" and state == "running"]
    assert running and running[-1].endswith(" s so far · teacher: epoch 3/8, loss 0.9123")
    assert [d for s_, state, d in said if state == "done"][0].endswith(" · teacher: epoch 3/8, loss 0.9123")
    assert not any("not this step's" in d for _, _, d in said)
    assert _progress.per_epoch(None, "train", total=1) is None and _progress.read(None, "train") == ""
    get_settings.cache_clear()

