"""Four-eyes approvals and the stage machine of a model version.

candidate → validated → approved → production → retired, and rejected from any pre-production
stage. The registrant may neither validate nor approve (nor reject) their own model; such a refusal
is itself committed to the audit trail before the error is raised. Promotion retires the previous
production version of the same name in the same transaction; rollback reverses the last promotion.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._artifacts import get_artifact_store
from convergence.governance._ledger import Subject, append, commit_refusal, serialize_writes
from convergence.governance._models import Approval, ModelVersion, StageTransition
from convergence.governance._registry import get_model
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation

# The only legal moves; retired → production happens through rollback() alone.
TRANSITIONS: dict[str, frozenset[str]] = {
    "candidate": frozenset({"validated", "rejected"}),
    "validated": frozenset({"approved", "rejected"}),
    "approved": frozenset({"production", "rejected", "retired"}),
    "production": frozenset({"retired"}),
    "retired": frozenset(),
    "rejected": frozenset(),
}

_HOW = {"validated": "`cvg models validate`", "approved": "`cvg models approve`", "production": "`cvg models promote`"}


def _subject(mv: ModelVersion) -> Subject:
    return Subject("model_version", str(mv.id))


def _move(session: Session, mv: ModelVersion, to: str, *, actor: str, reason: str | None,
          via_rollback: bool = False) -> None:
    if to not in TRANSITIONS[mv.stage] and not (via_rollback and mv.stage == "retired" and to == "production"):
        legal = ", ".join(sorted(TRANSITIONS[mv.stage])) or "none (final stage)"
        raise PolicyViolation(f"model version {mv.id} ({mv.name} v{mv.version}) is {mv.stage}; it cannot become {to}",
                              hint=f"legal next stages: {legal}")
    session.add(StageTransition(model_version_id=mv.id, from_stage=mv.stage, to_stage=to, actor=actor,
                                reason=reason, at=utcnow()))
    mv.stage = to


def _refuse(session: Session, mv: ModelVersion, *, actor: str, attempted: str, message: str) -> NoReturn:
    """Commit an audit record of the refused attempt, then raise: the refusal is evidence too."""
    commit_refusal(session=session, actor=actor, action=f"model.{attempted}_refused", subject=_subject(mv),
                   payload={"reason": message, "registrant": mv.created_by})
    raise PolicyViolation(message, hint="a different person must do this (four-eyes principle)")


def _load_for_change(session: Session, version_id: int) -> ModelVersion:
    session.flush()
    serialize_writes(session=session)
    mv = get_model(session=session, version_id=version_id)
    session.refresh(mv)  # re-read the stage under the lock, not from an earlier snapshot
    return mv


def _require_reason(reason: str | None, what: str) -> str:
    if not reason or not reason.strip():
        raise InvalidInput(f"a reason is needed {what} (--reason)")
    return reason.strip()


def validate(*, session: Session, version_id: int, actor: str, evidence: Path,
             reason: str | None = None) -> ModelVersion:
    """Record independent validation with an evidence file (stored by hash)."""
    mv = _load_for_change(session, version_id)
    if actor == mv.created_by:
        _refuse(session, mv, actor=actor, attempted="validation",
                message=f"{actor} registered model version {mv.id} and cannot validate it")
    if mv.stage != "candidate":
        _move(session, mv, "validated", actor=actor, reason=reason)  # raises with the legal stages
    stored = get_artifact_store().put(Path(evidence))
    _move(session, mv, "validated", actor=actor, reason=reason or "validated with evidence")
    session.add(Approval(model_version_id=mv.id, decision="validated", actor=actor,
                         reason=reason or "validated with evidence", evidence_uri=stored.uri,
                         evidence_sha256=stored.sha256, created_at=utcnow()))
    append(session=session, actor=actor, action="model.validated", subject=_subject(mv),
           payload={"evidence_sha256": stored.sha256, "evidence_bytes": stored.size, "reason": reason})
    return mv


def _decide(session: Session, version_id: int, actor: str, reason: str, *, decision: str, verb: str,
            attempted: str) -> ModelVersion:
    reason = _require_reason(reason, f"to {verb} a model")
    mv = _load_for_change(session, version_id)
    if actor == mv.created_by:
        _refuse(session, mv, actor=actor, attempted=attempted,
                message=f"{actor} registered model version {mv.id} and cannot {verb} it")
    _move(session, mv, decision, actor=actor, reason=reason)
    session.add(Approval(model_version_id=mv.id, decision=decision, actor=actor, reason=reason, created_at=utcnow()))
    append(session=session, actor=actor, action=f"model.{decision}", subject=_subject(mv),
           payload={"reason": reason, "registrant": mv.created_by})
    return mv


def approve(*, session: Session, version_id: int, actor: str, reason: str) -> ModelVersion:
    """Approve a validated version; the approver must not be its registrant."""
    return _decide(session, version_id, actor, reason, decision="approved", verb="approve", attempted="approval")


def reject(*, session: Session, version_id: int, actor: str, reason: str) -> ModelVersion:
    """Reject a version before production (final); the registrant cannot reject their own either."""
    return _decide(session, version_id, actor, reason, decision="rejected", verb="reject", attempted="rejection")


def _production(session: Session, name: str) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == "production")).scalars().first()


def promote(*, session: Session, version_id: int, actor: str, reason: str | None = None) -> ModelVersion:
    """Put an approved version into production and retire the one it replaces, atomically."""
    mv = _load_for_change(session, version_id)
    if mv.stage != "approved":
        hint = _HOW.get("approved") if mv.stage == "validated" else None
        raise PolicyViolation(f"model version {mv.id} is {mv.stage}; only an approved version can be promoted",
                              hint=hint and f"approve it first with {hint}")
    previous = _production(session, mv.name)
    if previous is not None:
        _move(session, previous, "retired", actor=actor, reason=f"replaced by version {mv.id}")
        append(session=session, actor=actor, action="model.retired", subject=_subject(previous),
               payload={"replaced_by": mv.id})
    _move(session, mv, "production", actor=actor, reason=reason or "promoted")
    append(session=session, actor=actor, action="model.promoted", subject=_subject(mv),
           payload={"replaces": previous.id if previous else None, "reason": reason})
    return mv


def rollback(*, session: Session, name: str, actor: str, reason: str | None = None) -> ModelVersion:
    """Retire the production version of ``name`` and restore the one it replaced."""
    serialize_writes(session=session)
    current = _production(session, name)
    if current is None:
        raise NotFound(f"no version of {name!r} is in production")
    # The version this one retired when it was promoted: the latest production→retired move before now.
    previous = session.execute(
        select(ModelVersion)
        .join(StageTransition, StageTransition.model_version_id == ModelVersion.id)
        .where(ModelVersion.name == name, ModelVersion.id != current.id, ModelVersion.stage == "retired",
               StageTransition.from_stage == "production", StageTransition.to_stage == "retired")
        .order_by(StageTransition.at.desc(), StageTransition.id.desc()).limit(1)).scalars().first()
    if previous is None:
        raise PolicyViolation(f"{name} v{current.version} is the first production version; there is nothing to roll back to")
    why = reason or f"rollback from version {current.id}"
    _move(session, current, "retired", actor=actor, reason=why)
    _move(session, previous, "production", actor=actor, reason=why, via_rollback=True)
    append(session=session, actor=actor, action="model.rolled_back", subject=_subject(previous),
           payload={"from_version_id": current.id, "to_version_id": previous.id, "reason": reason})
    return previous
