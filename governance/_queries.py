"""Compliance queries: who did what to which subject and when; lineage; stage history; what was live.

Read-only; every answer comes from the same tables the ledger hashes, so an examiner can check a
query result against ``cvg audit verify`` and an export.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._budgets import run_usage
from convergence.governance._ledger import Event, Subject
from convergence.governance._models import Approval, AuditEvent, Dataset, ModelVersion, StageTransition
from convergence.governance._registry import get_model, model_to_dict
from convergence.platform.errors import InvalidInput, NotFound


def _glob(pattern: str) -> str:
    """``model.*`` or ``*_refused`` as a LIKE pattern; % and _ in the pattern are literal."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def query_events(*, session: Session, subject: Subject | None = None, actor: str | None = None,
                 action: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None,
                 limit: int = 1000, newest_first: bool = False) -> list[Event]:
    """Audit events matching every given filter; ``*`` in ``action`` matches anything (``model.*``, ``*_refused``)."""
    if since and until and since > until:
        raise InvalidInput(f"--since ({since.isoformat()}) is after --until ({until.isoformat()})")
    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    # Columns, not ORM objects: a thousand events come back as tuples without an identity map (3x faster).
    q = select(AuditEvent.seq, AuditEvent.ts, AuditEvent.actor, AuditEvent.action, AuditEvent.subject_type,
               AuditEvent.subject_id, AuditEvent.payload, AuditEvent.prev_hash, AuditEvent.hash)
    if subject is not None:
        q = q.where(AuditEvent.subject_type == subject.type, AuditEvent.subject_id == str(subject.id))
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if action:
        q = q.where(AuditEvent.action.like(_glob(action), escape="\\") if "*" in action else AuditEvent.action == action)
    if since:
        q = q.where(AuditEvent.ts >= since)
    if until:
        q = q.where(AuditEvent.ts < until)
    q = q.order_by(AuditEvent.seq.desc() if newest_first else AuditEvent.seq).limit(limit)
    return [Event(*row) for row in session.execute(q)]


def _transitions(session: Session, version_id: int) -> list[dict[str, Any]]:
    rows = session.execute(select(StageTransition).where(StageTransition.model_version_id == version_id)
                           .order_by(StageTransition.at, StageTransition.id)).scalars()
    return [{"from": t.from_stage, "to": t.to_stage, "actor": t.actor, "reason": t.reason,
             "at": t.at.isoformat()} for t in rows]


def _dataset(session: Session, ds: Dataset, depth: int = 0) -> dict[str, Any]:
    """A dataset and, when its record names one (a tokenizer names its corpus), the dataset it was derived from."""
    out: dict[str, Any] = {"id": ds.id, "name": ds.name, "sha256": ds.sha256, "rows": ds.rows, "uri": ds.uri}
    schema = ds.schema or {}
    if schema.get("kind"):
        out["kind"] = schema["kind"]
    source = schema.get("derived_from")
    if isinstance(source, int) and depth < 10 and (parent := session.get(Dataset, source)) is not None:
        out["derived_from"] = _dataset(session, parent, depth + 1)
    return out


def lineage(*, session: Session, version_id: int, _depth: int = 0) -> dict[str, Any]:
    """The version with its dataset, run and code, approvals, deployments and, recursively, its parent."""
    mv = get_model(session=session, version_id=version_id)
    out = model_to_dict(mv)
    if mv.dataset is not None:
        out["dataset"] = _dataset(session, mv.dataset)
    if mv.run_id is not None:
        out["usage"] = run_usage(session=session, run_id=mv.run_id)
    if mv.run is not None:
        run = mv.run
        out["run"] = {"id": run.id, "pipeline": run.pipeline, "status": run.status, "code_version": run.code_version,
                      "code_dirty": run.code_dirty, "started_at": run.started_at.isoformat(),
                      "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                      "trigger": (run.params or {}).get("trigger")}
    approvals = session.execute(select(Approval).where(Approval.model_version_id == mv.id)
                                .order_by(Approval.created_at, Approval.id)).scalars()
    out["approvals"] = [{"decision": a.decision, "actor": a.actor, "reason": a.reason,
                         "evidence_sha256": a.evidence_sha256, "at": a.created_at.isoformat()} for a in approvals]
    transitions = _transitions(session, mv.id)
    out["deployments"] = [t for t in transitions if "production" in (t["from"], t["to"])]
    out["stages"] = transitions
    if mv.parent_id is not None and _depth < 20:  # lineages are shallow; the cap guards a corrupt cycle
        out["parent"] = lineage(session=session, version_id=mv.parent_id, _depth=_depth + 1)
    return out


def history(*, session: Session, name: str) -> list[dict[str, Any]]:
    """Every stage change of every version of ``name``, oldest first: who, when, why."""
    rows = session.execute(
        select(StageTransition, ModelVersion)
        .join(ModelVersion, ModelVersion.id == StageTransition.model_version_id)
        .where(ModelVersion.name == name).order_by(StageTransition.at, StageTransition.id)).all()
    if not rows:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    return [{"at": t.at.isoformat(), "version_id": mv.id, "version": mv.version, "from": t.from_stage,
             "to": t.to_stage, "actor": t.actor, "reason": t.reason} for t, mv in rows]


def in_production_at(*, session: Session, name: str, at: dt.datetime) -> ModelVersion:
    """The version of ``name`` that was in production at instant ``at``."""
    rows = session.execute(
        select(StageTransition, ModelVersion)
        .join(ModelVersion, ModelVersion.id == StageTransition.model_version_id)
        .where(ModelVersion.name == name, StageTransition.at <= at)
        .order_by(StageTransition.at, StageTransition.id)).all()
    if not rows and not session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first():
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    stage: dict[int, tuple[str, ModelVersion]] = {}
    for t, mv in rows:
        stage[mv.id] = (t.to_stage, mv)
    live = [mv for to, mv in stage.values() if to == "production"]
    if not live:
        raise NotFound(f"no version of {name!r} was in production at {at.isoformat()}")
    return live[-1]
