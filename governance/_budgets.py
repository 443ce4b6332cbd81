"""Compute and energy budgets: the usage ledger, limits per project (and family) and period, and
their enforcement before and during runs.

Lowering or creating a budget applies at once; raising one is a request that a second person must
approve (the requester cannot), and every step of that is audited. A soft limit raises one alert
per budget and period; a hard limit refuses a run whose estimate does not fit and stops a running
one at its next step boundary.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from convergence.governance._access import distinct, require
from convergence.governance._alerts import raise_alert
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import (
    FAMILIES,
    METRICS,
    Budget,
    BudgetChange,
    ModelVersion,
    PipelineRun,
    Project,
    Usage,
)
from convergence.governance._principal import Principal, check_text
from convergence.governance._registry import DEFAULT_PROJECT, ensure_project
from convergence.governance._replay import state_entries
from convergence.platform.db import utcnow
from convergence.platform.errors import BudgetExceeded, InvalidInput, NotFound, PolicyViolation

# How each budget metric is computed from usage rows.
_METRIC_SQL = {"cpu_hours": Usage.cpu_s / 3600.0, "gpu_hours": Usage.gpu_s / 3600.0, "kwh": Usage.kwh,
               "gco2e": Usage.gco2e}
_UTC = dt.timezone.utc


def parse_period(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``2026``, ``2026-11``, ``2026-11-24`` or ``2026-11-01..2026-12-15`` (end exclusive), in UTC."""
    value = (text or "").strip()
    try:
        if ".." in value:
            a, b = (dt.date.fromisoformat(x.strip()) for x in value.split("..", 1))
            start, end = dt.datetime(a.year, a.month, a.day, tzinfo=_UTC), dt.datetime(b.year, b.month, b.day, tzinfo=_UTC)
        elif re.fullmatch(r"\d{4}", value):
            start = dt.datetime(int(value), 1, 1, tzinfo=_UTC)
            end = dt.datetime(int(value) + 1, 1, 1, tzinfo=_UTC)
        elif re.fullmatch(r"\d{4}-\d{2}", value):
            y, m = (int(x) for x in value.split("-"))
            start = dt.datetime(y, m, 1, tzinfo=_UTC)
            end = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=_UTC)
        else:
            d = dt.date.fromisoformat(value)
            start = dt.datetime(d.year, d.month, d.day, tzinfo=_UTC)
            end = start + dt.timedelta(days=1)
    except ValueError:
        raise InvalidInput(f"period {text!r} is not valid: use 2026, 2026-11, 2026-11-24 or "
                           "2026-11-01..2026-12-15") from None
    if end <= start:
        raise InvalidInput(f"period {text!r} ends before it starts")
    return start, end


def _project(session: Session, name: str) -> Project:
    project = session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()
    if project is None:
        raise NotFound(f"no project called {name!r}", hint="projects are created by their first run or registration")
    return project


def record_usage(*, session: Session, project: str, reading: Any, principal: Principal, run_id: int | None = None,
                 model_version_id: int | None = None, family: str | None = None, step: str | None = None,
                 predictions: int | None = None) -> Usage:
    proj = ensure_project(session=session, name=project, principal=principal)
    row = Usage(project_id=proj.id, family=family, run_id=run_id, model_version_id=model_version_id, step=step,
                wall_s=reading.wall_s, cpu_s=reading.cpu_s, gpu_s=reading.gpu_s, kwh=reading.kwh,
                gco2e=reading.gco2e, peak_mem_mb=reading.peak_mem_mb, predictions=predictions,
                method=reading.method, measured=reading.measured, scope=reading.scope, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def used(*, session: Session, budget: Budget) -> float:
    q = select(func.coalesce(func.sum(_METRIC_SQL[budget.metric]), 0.0)).where(
        Usage.project_id == budget.project_id, Usage.created_at >= budget.period_start,
        Usage.created_at < budget.period_end)
    if budget.family != "*":
        q = q.where(Usage.family == budget.family)
    return float(session.execute(q).scalar_one())


def _active(session: Session, project_id: int, family: str | None, at: dt.datetime) -> list[Budget]:
    q = select(Budget).where(Budget.project_id == project_id, Budget.period_start <= at, Budget.period_end > at)
    q = q.where(Budget.family.in_(["*", family]) if family else Budget.family == "*")
    return list(session.execute(q).scalars())


def _validate_limits(metric: str, family: str, hard: float, soft: float | None) -> None:
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if family != "*" and family not in FAMILIES:
        raise InvalidInput(f"family must be one of {', '.join(FAMILIES)} or '*', got {family!r}")
    if not hard > 0:
        raise InvalidInput(f"the hard limit must be positive, got {hard}")
    if soft is not None and not 0 < soft <= hard:
        raise InvalidInput(f"the soft limit must be positive and at most the hard limit ({hard}), got {soft}")


def set_budget(*, session: Session, principal: Principal, project: str, metric: str, period: str, hard: float,
               soft: float | None = None, family: str = "*", reason: str | None = None) -> tuple[Budget, BudgetChange | None]:
    """Create or lower a budget now; a raise becomes a pending change for someone else to approve."""
    require(session=session, principal=principal, permission="budget.set", subject=Subject("project", project))
    reason = check_text(reason, what="the reason")
    _validate_limits(metric, family, hard, soft)
    start, end = parse_period(period)
    serialize_writes(session=session)
    # the default project always exists in principle (a budget may come before its first run); others are named
    proj = ensure_project(session=session, principal=principal) if project == DEFAULT_PROJECT else _project(session, project)
    budget = session.execute(select(Budget).where(Budget.project_id == proj.id, Budget.family == family,
                                                  Budget.metric == metric, Budget.period_start == start)
                             ).scalar_one_or_none()
    now = utcnow()
    if budget is not None and soft is None and budget.soft_limit is not None and budget.soft_limit <= hard:
        soft = budget.soft_limit  # not given: keep the soft limit the budget already has
    if budget is None:
        budget = Budget(project_id=proj.id, family=family, metric=metric, period_start=start, period_end=end,
                        hard_limit=hard, soft_limit=soft, created_at=now, created_by=principal.name, updated_at=now)
        session.add(budget)
        session.flush()
        append(session=session, principal=principal, action="budget.created", subject=Subject("budget", str(budget.id)),
               payload={"project": project, "family": family, "metric": metric, "period": period, "hard": hard,
                        "soft": soft, "reason": reason, "state": state_entries(session, budget)})
        return budget, None
    if hard == budget.hard_limit and soft == budget.soft_limit:
        return budget, None  # nothing changes, nothing to record
    if hard <= budget.hard_limit and (soft is None or budget.soft_limit is None or soft <= budget.soft_limit):
        before = {"hard": budget.hard_limit, "soft": budget.soft_limit}
        budget.hard_limit, budget.soft_limit, budget.updated_at = hard, soft, now
        append(session=session, principal=principal, action="budget.lowered", subject=Subject("budget", str(budget.id)),
               payload={"before": before, "after": {"hard": hard, "soft": soft}, "reason": reason,
                        "state": state_entries(session, budget)})
        return budget, None
    change = BudgetChange(budget_id=budget.id, hard_limit=hard, soft_limit=soft, status="pending", reason=reason,
                          requested_by=principal.name, requested_by_id=principal.id, requested_at=now)
    session.add(change)
    session.flush()
    append(session=session, principal=principal, action="budget.raise_requested", subject=Subject("budget", str(budget.id)),
           payload={"change_id": change.id, "from": {"hard": budget.hard_limit, "soft": budget.soft_limit},
                    "to": {"hard": hard, "soft": soft}, "reason": reason, "state": state_entries(session, change)})
    return budget, change


def decide_change(*, session: Session, principal: Principal, change_id: int, approve: bool,
                  reason: str | None = None) -> BudgetChange:
    """Apply or reject a pending raise; the person who asked for it can do neither."""
    require(session=session, principal=principal, permission="budget.decide",
            subject=Subject("budget_change", str(change_id)))
    reason = check_text(reason, what="the reason")
    serialize_writes(session=session)
    change = session.get(BudgetChange, change_id)
    if change is None:
        raise NotFound(f"no budget change with id {change_id}")
    if change.status != "pending":
        raise PolicyViolation(f"budget change {change_id} is already {change.status}")
    verb = "approve" if approve else "reject"
    distinct(session=session, principal=principal, other_id=change.requested_by_id, permission="budget.decide",
             rule="budget-raise-second-person", subject=Subject("budget", str(change.budget_id)),
             message=f"{principal.name} requested budget change {change_id} and cannot {verb} it",
             payload={"change_id": change_id})
    budget = session.get(Budget, change.budget_id)
    if budget is None:
        raise NotFound(f"budget {change.budget_id} of change {change_id} is gone")
    change.status, change.decided_by, change.decided_at = ("applied" if approve else "rejected"), principal.name, utcnow()
    change.decided_by_id = principal.id
    if approve:
        budget.hard_limit, budget.soft_limit, budget.updated_at = change.hard_limit, change.soft_limit, utcnow()
    append(session=session, principal=principal, action=f"budget.raise_{'approved' if approve else 'rejected'}",
           subject=Subject("budget", str(budget.id)),
           payload={"change_id": change_id, "hard": change.hard_limit, "soft": change.soft_limit, "reason": reason,
                    "state": state_entries(session, change, budget)})
    return change


def budget_status(*, session: Session, project: str | None = None, at: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every budget (of ``project``) with what has been used, what remains, and pending raises."""
    q = select(Budget, Project.name).join(Project, Project.id == Budget.project_id).order_by(Budget.id)
    if project:
        q = q.where(Project.name == _project(session, project).name)
    at = at or utcnow()
    out = []
    for budget, name in session.execute(q).all():
        spent = used(session=session, budget=budget)
        pending = session.execute(select(BudgetChange).where(BudgetChange.budget_id == budget.id,
                                                             BudgetChange.status == "pending")).scalars().all()
        out.append({"id": budget.id, "project": name, "family": budget.family, "metric": budget.metric,
                    "period_start": budget.period_start.isoformat(), "period_end": budget.period_end.isoformat(),
                    "active": budget.period_start <= at < budget.period_end, "hard": budget.hard_limit,
                    "soft": budget.soft_limit, "used": spent, "remaining": budget.hard_limit - spent,
                    "fraction": spent / budget.hard_limit, "pending_changes": [
                        {"id": c.id, "hard": c.hard_limit, "soft": c.soft_limit, "requested_by": c.requested_by}
                        for c in pending]})
    return out


def estimate_run(*, session: Session, project: str, pipeline: str) -> dict[str, float]:
    """What the last finished run of ``pipeline`` used, per metric (empty when there is none)."""
    proj = session.execute(select(Project).where(Project.name == project)).scalar_one_or_none()
    if proj is None:
        return {}
    last = session.execute(select(PipelineRun.id).where(
        PipelineRun.project_id == proj.id, PipelineRun.pipeline == pipeline,
        PipelineRun.status.in_(["succeeded", "gates_failed"])).order_by(PipelineRun.id.desc()).limit(1)).scalar()
    if last is None:
        return {}
    row = session.execute(select(*(func.coalesce(func.sum(expr), 0.0) for expr in _METRIC_SQL.values()))
                          .where(Usage.run_id == last)).one()
    return dict(zip(_METRIC_SQL, (float(x) for x in row)))


def check_before(*, session: Session, project: str, family: str | None, estimate: dict[str, float]) -> None:
    """Refuse a run whose estimated cost does not fit in what remains of any active hard limit."""
    proj = session.execute(select(Project).where(Project.name == project)).scalar_one_or_none()
    if proj is None:
        return
    for budget in _active(session, proj.id, family, utcnow()):
        spent, need = used(session=session, budget=budget), estimate.get(budget.metric, 0.0)
        if spent + need > budget.hard_limit:
            raise BudgetExceeded(
                f"budget {budget.id} ({budget.metric}, {budget.family}) has {budget.hard_limit - spent:.4g} left of "
                f"{budget.hard_limit:.4g}; this run is estimated at {need:.4g} (the last run of this pipeline)",
                hint="raise it with `cvg budgets set … --hard N` and a second person's approval")


def check_during(*, session: Session, project: str, family: str | None, principal: Principal) -> list[str]:
    """After a step: raise soft-limit alerts (once per budget) and return the hard limits now exceeded."""
    proj = _project(session, project)
    exceeded = []
    for budget in _active(session, proj.id, family, utcnow()):
        spent = used(session=session, budget=budget)
        if budget.soft_limit is not None and spent >= budget.soft_limit:
            raise_alert(session=session, principal=principal, kind="budget.soft_limit", severity="warning",
                        dedupe_key=f"budget:{budget.id}:{budget.period_start.date()}:soft",
                        subject=Subject("budget", str(budget.id)),
                        message=f"{project} used {spent:.4g} of a {budget.soft_limit:.4g} soft limit on "
                                f"{budget.metric} ({budget.family}) this period",
                        payload={"used": spent, "soft": budget.soft_limit, "hard": budget.hard_limit})
        if spent > budget.hard_limit:
            exceeded.append(f"budget {budget.id} ({budget.metric}, {budget.family}): used {spent:.4g} of "
                            f"{budget.hard_limit:.4g}")
    return exceeded


def usage_report(*, session: Session, project: str | None = None, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, by: str = "run") -> list[dict[str, Any]]:
    """Usage summed by run, step, model version or family; serving rows also per 1,000 predictions."""
    keys = {"run": Usage.run_id, "step": Usage.step, "model": Usage.model_version_id, "family": Usage.family}
    if by not in keys:
        raise InvalidInput(f"--by must be one of {', '.join(keys)}")
    q = select(keys[by], func.sum(Usage.wall_s), func.sum(Usage.cpu_s), func.sum(Usage.gpu_s), func.sum(Usage.kwh),
               func.sum(Usage.gco2e), func.max(Usage.peak_mem_mb), func.sum(Usage.predictions),
               func.min(case((Usage.measured.is_(True), 1), else_=0)), func.count()).group_by(keys[by]).order_by(keys[by])
    if project:
        q = q.where(Usage.project_id == _project(session, project).id)
    if since:
        q = q.where(Usage.created_at >= since)
    if until:
        q = q.where(Usage.created_at < until)
    out = []
    found = session.execute(q).all()
    names = _version_names(session, [key for key, *_ in found]) if by == "model" else {}
    for key, *sums, preds, all_measured, n in found:
        wall, cpu, gpu, kwh, co2, peak = (float(x or 0.0) for x in sums)  # PostgreSQL sums may be Decimal
        preds = int(preds or 0)
        row = {by: key, "label": _label(by, key, names, preds), "wall_s": wall, "cpu_hours": cpu / 3600, "gpu_hours": gpu / 3600, "kwh": kwh, "gco2e": co2,
               "peak_mem_mb": peak, "measured": bool(all_measured), "rows": n}
        if preds:
            row.update(predictions=int(preds), kwh_per_1k_predictions=kwh / preds * 1000,
                       cpu_s_per_1k_predictions=cpu / preds * 1000)
        out.append(row)
    return out


def _version_names(session: Session, ids: list[Any]) -> dict[int, str]:
    wanted = [i for i in ids if i is not None]
    rows = session.execute(select(ModelVersion.id, ModelVersion.name, ModelVersion.version)
                           .where(ModelVersion.id.in_(wanted))).all() if wanted else []
    return {i: f"{name} v{version} (#{i})" for i, name, version in rows}


def _label(by: str, key: Any, names: dict[int, str], predictions: int) -> str:
    """What a person reads in a report's first column: a model's name and version, never a blank."""
    if key is None:
        return {"model": "(pipeline work, no model)", "run": "(serving, no run)", "family": "(no family)",
                "step": "(serving)" if predictions else "(whole run)"}[by]
    return names.get(key, f"#{key}") if by == "model" else (f"run {key}" if by == "run" else str(key))


def run_usage(*, session: Session, run_id: int) -> dict[str, Any]:
    """Totals for one run and its steps (for lineage and model cards)."""
    rows = session.execute(select(Usage).where(Usage.run_id == run_id).order_by(Usage.id)).scalars().all()
    steps = {r.step or "-": {"wall_s": r.wall_s, "cpu_s": r.cpu_s, "kwh": r.kwh, "gco2e": r.gco2e, "method": r.method}
             for r in rows}
    return {"kwh": sum(r.kwh for r in rows), "gco2e": sum(r.gco2e for r in rows),
            "cpu_hours": sum(r.cpu_s for r in rows) / 3600, "gpu_hours": sum(r.gpu_s for r in rows) / 3600,
            "measured": bool(rows) and all(r.measured for r in rows), "steps": steps}
