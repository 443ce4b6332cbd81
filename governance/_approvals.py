"""Four-eyes approvals and the stage machine of a model version.

candidate → validated → approved → production → retired, and rejected from any pre-production
stage. Each step needs its role (validator, approver, operator), and separation of duties holds on
principal ids, never names: the registrant may not validate, approve, reject or promote their own model,
and the validator may not also approve or reject it. A refusal is committed to the audit trail before the
error is raised. Promotion retires the previous production version of the same name in the same
transaction; rollback reverses the last promotion.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import distinct, refuse, require, same_person
from convergence.governance._artifacts import StoredArtifact, get_artifact_store
from convergence.governance import _deploystate
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import Approval, ModelVersion, StageTransition
from convergence.governance._principal import Principal, check_text
from convergence.governance._registry import finite_number, get_model
from convergence.governance._replay import check_recorded, state_entries
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


def _move(session: Session, mv: ModelVersion, to: str, *, actor: Principal, reason: str | None,
          via_rollback: bool = False) -> StageTransition:
    """Move ``mv`` to stage ``to`` if that is legal; the transition row goes into the event's state."""
    if to not in TRANSITIONS[mv.stage] and not (via_rollback and mv.stage == "retired" and to == "production"):
        legal = ", ".join(sorted(TRANSITIONS[mv.stage])) or "none (final stage)"
        raise PolicyViolation(f"model version {mv.id} ({mv.name} v{mv.version}) is {mv.stage}; it cannot become {to}",
                              hint=f"legal next stages: {legal}")
    moved = StageTransition(model_version_id=mv.id, from_stage=mv.stage, to_stage=to, actor=actor.name,
                            reason=reason, at=utcnow())
    session.add(moved)
    mv.stage = to
    return moved


def _requester_id(mv: ModelVersion) -> int | None:
    """Who asked for the run that registered ``mv`` (a Kubernetes-triggered run registers as the pipelines
    service account; the person who triggered it is its registrant too)."""
    trigger = ((mv.run.params or {}).get("trigger") or {}) if mv.run is not None else {}
    requested = trigger.get("requested_by") if isinstance(trigger, dict) else None
    value = requested.get("id") if isinstance(requested, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _registrants(mv: ModelVersion) -> list[tuple[int | None, str]]:
    """Who stands behind ``mv``: its registrant and requester, and for a compiled or INT8 copy those of the
    network it reproduces (compiling someone's model must not let them approve it in another form)."""
    out = [(mv.registrant_id, f"model version {mv.id}"), (_requester_id(mv), f"model version {mv.id}")]
    if mv.role in ("compiled", "quantized") and mv.parent is not None:
        what = f"model version {mv.parent.id}, which version {mv.id} is a copy of,"
        out += [(mv.parent.registrant_id, what), (_requester_id(mv.parent), what)]
    return out


def _not_registrant(session: Session, mv: ModelVersion, principal: Principal, *, permission: str, verb: str,
                    rule: str) -> None:
    for registrant, what in _registrants(mv):
        distinct(session=session, principal=principal, other_id=registrant, permission=permission, rule=rule,
                 message=f"{principal.name} registered {what} and cannot {verb} it",
                 subject=_subject(mv), payload={"registrant_id": mv.registrant_id, "requested_by": _requester_id(mv)})


def _validator_ids(session: Session, mv: ModelVersion) -> set[int]:
    return set(session.execute(select(Approval.principal_id).where(
        Approval.model_version_id == mv.id, Approval.decision == "validated")).scalars()) - {None}


def _load_for_change(session: Session, version_id: int) -> ModelVersion:
    session.flush()
    serialize_writes(session=session)
    mv = get_model(session=session, version_id=version_id)
    session.refresh(mv)  # re-read the stage under the lock, not from an earlier snapshot
    check_recorded(session=session, version=mv)  # a stage or artifact edited in the table stops here
    return mv


def _require_reason(reason: str | None, what: str) -> str:
    reason = check_text(reason, what="the reason")
    if not reason or not reason.strip():
        raise InvalidInput(f"a reason is needed {what} (--reason)")
    return reason.strip()


def validate(*, session: Session, principal: Principal, version_id: int, evidence: Path | StoredArtifact,
             reason: str | None = None) -> ModelVersion:
    """Record independent validation with an evidence file (stored by hash); never by the registrant."""
    reason = check_text(reason, what="the reason")
    require(session=session, principal=principal, permission="model.validate",
            subject=Subject("model_version", str(version_id)))
    mv = _load_for_change(session, version_id)
    _not_registrant(session, mv, principal, permission="model.validate", verb="validate",
                    rule="validator-not-registrant")
    if mv.stage != "candidate":
        _move(session, mv, "validated", actor=principal, reason=reason)  # raises with the legal stages
    stored = evidence if isinstance(evidence, StoredArtifact) else get_artifact_store().put(Path(evidence))
    moved = _move(session, mv, "validated", actor=principal, reason=reason or "validated with evidence")
    approval = Approval(model_version_id=mv.id, decision="validated", actor=principal.name, principal_id=principal.id,
                        reason=reason or "validated with evidence", evidence_uri=stored.uri,
                        evidence_sha256=stored.sha256, created_at=utcnow())
    session.add(approval)
    append(session=session, principal=principal, action="model.validated", subject=_subject(mv),
           payload={"evidence_sha256": stored.sha256, "evidence_bytes": stored.size, "reason": reason,
                    "state": state_entries(session, mv, moved, approval)})
    return mv


def _check_safe_output(mv: ModelVersion, safe_output: float | None) -> float | None:
    if safe_output is None:
        return None
    safe_output = finite_number(safe_output, what="the safe output")
    if mv.family != "trading":
        raise InvalidInput("only trading models have a safe output (a language model answers 503 when killed)")
    if abs(safe_output) > 1.0:
        raise InvalidInput(f"a safe output of {safe_output} is not a safe trading signal: it must lie in [-1, 1] "
                           "(0.0 is flat, no trade)")
    return float(safe_output)


def _decide(session: Session, version_id: int, principal: Principal, reason: str, *, decision: str, verb: str,
            safe_output: float | None = None) -> ModelVersion:
    reason = _require_reason(reason, f"to {verb} a model")
    permission = "model.approve" if decision == "approved" else "model.reject"
    require(session=session, principal=principal, permission=permission,
            subject=Subject("model_version", str(version_id)))
    mv = _load_for_change(session, version_id)
    safe = _check_safe_output(mv, safe_output)
    _not_registrant(session, mv, principal, permission=permission, verb=verb, rule="approver-not-registrant")
    if any(same_person(session, principal, vid) for vid in _validator_ids(session, mv)):
        refuse(session=session, principal=principal, permission=permission, rule="approver-not-validator",
               subject=_subject(mv), message=f"{principal.name} validated model version {mv.id} and cannot also "
               f"{verb} it", hint="a different person must do this (four-eyes principle)")
    moved = _move(session, mv, decision, actor=principal, reason=reason)
    if decision == "approved":
        mv.safe_output = safe
    elif (d := _deploystate.active(session, mv.name)) is not None and d.version_id == mv.id:
        # a rejected version stops serving beside production, in the same transaction
        _deploystate.end(session, d, status="rolled_back", principal=principal, reason=f"version rejected: {reason}",
                         measured={}, payload={"automatic": False, "reason": f"version rejected: {reason}"})
    approval = Approval(model_version_id=mv.id, decision=decision, actor=principal.name, principal_id=principal.id,
                        reason=reason, created_at=utcnow())
    session.add(approval)
    append(session=session, principal=principal, action=f"model.{decision}", subject=_subject(mv),
           payload={"reason": reason, "registrant": mv.created_by, "registrant_id": mv.registrant_id,
                    **({"safe_output": safe} if decision == "approved" else {}),
                    "state": state_entries(session, mv, moved, approval)})
    return mv


def approve(*, session: Session, principal: Principal, version_id: int, reason: str,
            safe_output: float | None = None) -> ModelVersion:
    """Approve a validated version (neither its registrant nor its validator may), and fix the value it
    answers while killed (``safe_output``; none: killed means 503)."""
    return _decide(session, version_id, principal, reason, decision="approved", verb="approve",
                   safe_output=safe_output)


def reject(*, session: Session, principal: Principal, version_id: int, reason: str) -> ModelVersion:
    """Reject a version before production (final); the registrant and the validator cannot."""
    return _decide(session, version_id, principal, reason, decision="rejected", verb="reject")


def _production(session: Session, name: str) -> ModelVersion | None:
    return session.execute(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == "production")).scalars().first()


def promote(*, session: Session, principal: Principal, version_id: int, reason: str | None = None,
            rollout: int | None = None) -> ModelVersion:
    """Put an approved version into production and retire the one it replaces, atomically; the operator
    must not be its registrant. While a shadow or canary of the name runs, only its own promotion (``rollout``,
    the deployment's id: ``rollout.promote``) may change production."""
    reason = check_text(reason, what="the reason")
    require(session=session, principal=principal, permission="model.promote",
            subject=Subject("model_version", str(version_id)))
    mv = _load_for_change(session, version_id)
    _not_registrant(session, mv, principal, permission="model.promote", verb="promote",
                    rule="promoter-not-registrant")
    if mv.stage != "approved":
        hint = _HOW.get("approved") if mv.stage == "validated" else None
        raise PolicyViolation(f"model version {mv.id} is {mv.stage}; only an approved version can be promoted",
                              hint=hint and f"approve it first with {hint}")
    _no_rollout(session, mv.name, allowed=rollout)
    previous = _production(session, mv.name)
    if previous is not None:
        check_recorded(session=session, version=previous)
        moved = _move(session, previous, "retired", actor=principal, reason=f"replaced by version {mv.id}")
        append(session=session, principal=principal, action="model.retired", subject=_subject(previous),
               payload={"replaced_by": mv.id, "state": state_entries(session, previous, moved)})
    moved = _move(session, mv, "production", actor=principal, reason=reason or "promoted")
    append(session=session, principal=principal, action="model.promoted", subject=_subject(mv),
           payload={"replaces": previous.id if previous else None, "reason": reason,
                    "state": state_entries(session, mv, moved)})
    return mv


def _no_rollout(session: Session, name: str, *, allowed: int | None = None) -> None:
    """Production does not change under a running shadow or canary (its comparison and its evidence are about
    the production version it started beside), except by that rollout's own promotion."""
    d = _deploystate.active(session, name)
    if d is not None and d.id != allowed:
        raise PolicyViolation(f"{name} has an active {d.mode} of version {d.version_id} (deployment {d.id}): "
                              "production changes only through it",
                              hint=f"`cvg models deploy {d.version_id} --promote` or `cvg models rollback {name}`")


def rollback(*, session: Session, principal: Principal, name: str, reason: str | None = None) -> ModelVersion:
    """Retire the production version of ``name`` and restore the one it replaced (the operator must not be
    the restored version's registrant)."""
    reason = check_text(reason, what="the reason")
    require(session=session, principal=principal, permission="model.rollback", subject=Subject("model", name))
    serialize_writes(session=session)
    current = _production(session, name)
    if current is None:
        raise NotFound(f"no version of {name!r} is in production")
    _no_rollout(session, name)
    # The version this one retired when it was promoted: the latest production→retired move before now.
    previous = session.execute(
        select(ModelVersion)
        .join(StageTransition, StageTransition.model_version_id == ModelVersion.id)
        .where(ModelVersion.name == name, ModelVersion.id != current.id, ModelVersion.stage == "retired",
               StageTransition.from_stage == "production", StageTransition.to_stage == "retired")
        .order_by(StageTransition.at.desc(), StageTransition.id.desc()).limit(1)).scalars().first()
    if previous is None:
        raise PolicyViolation(f"{name} v{current.version} is the first production version; there is nothing to roll back to")
    _not_registrant(session, previous, principal, permission="model.rollback", verb="put back into production",
                    rule="promoter-not-registrant")
    for version in (current, previous):
        check_recorded(session=session, version=version)
    why = reason or f"rollback from version {current.id}"
    # Each version's new state in an event about it, so check_recorded finds it by subject.
    retired = _move(session, current, "retired", actor=principal, reason=why)
    append(session=session, principal=principal, action="model.retired", subject=_subject(current),
           payload={"rolled_back_to": previous.id, "reason": reason, "state": state_entries(session, current, retired)})
    restored = _move(session, previous, "production", actor=principal, reason=why, via_rollback=True)
    append(session=session, principal=principal, action="model.rolled_back", subject=_subject(previous),
           payload={"from_version_id": current.id, "to_version_id": previous.id, "reason": reason,
                    "state": state_entries(session, previous, restored)})
    return previous
