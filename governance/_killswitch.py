"""The kill switch: stop a model serving on every replica at once, and resume it; both audited.

The state lives in ``kill_switches`` (one row per model name), so it survives restarts and every
serving replica reads the same answer; a replica polls it (``kill_states``) a few times a second.
Setting it and its audit event commit in one transaction (MiFID II RTS 6 Art. 12 asks for both). Only the
risk role may kill or resume; what a killed model answers is not chosen at kill time but fixed by its
approver (``approve(safe_output=…)``): a kill either answers 503 or that approved value.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import KillSwitch, ModelVersion
from convergence.governance._principal import Principal, check_text
from convergence.governance._replay import state_entries
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation


def _switch(session: Session, name: str) -> KillSwitch | None:
    return session.execute(select(KillSwitch).where(KillSwitch.model_name == name)).scalar_one_or_none()


def _approved_safe_output(session: Session, name: str) -> tuple[int, float]:
    """(version id, safe output) of ``name``'s production version, as its approver fixed it."""
    live = session.execute(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == "production")
                           .order_by(ModelVersion.id.desc())).scalars().first()
    if live is None:
        raise PolicyViolation(f"{name!r} has no version in production, so no approved safe output to answer with",
                              hint="kill without --safe-output: replicas answer 503")
    if live.safe_output is None:
        raise PolicyViolation(f"{name} v{live.version} (version {live.id}) was approved without a safe output",
                              hint="kill without --safe-output (replicas answer 503); a safe output is fixed when "
                                   "a version is approved (`cvg models approve … --safe-output 0.0`)")
    return live.id, live.safe_output


def kill(*, session: Session, principal: Principal, name: str, reason: str, safe_output: bool = False) -> KillSwitch:
    """Stop ``name`` serving on every replica: they answer 503 with the reason, or, with ``safe_output``, the
    value its approver fixed for the production version (flagged ``killed``)."""
    require(session=session, principal=principal, permission="serving.kill", subject=Subject("model", name))
    reason = check_text(reason, what="the reason")
    if not reason or not reason.strip():
        raise InvalidInput("a kill needs a reason (--reason): it is what callers and auditors will read")
    if not isinstance(safe_output, bool):
        raise InvalidInput("safe_output is true or false: the value itself is fixed when the model is approved")
    serialize_writes(session=session)
    if session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    version_id, value = _approved_safe_output(session, name) if safe_output else (None, None)
    switch = _switch(session, name) or KillSwitch(model_name=name)
    switch.active, switch.reason, switch.safe_output = True, reason.strip(), value
    switch.actor, switch.changed_at = principal.name, utcnow()
    session.add(switch)
    append(session=session, principal=principal, action="serving.killed", subject=Subject("model", name),
           payload={"reason": switch.reason, "safe_output": value, "safe_output_of_version": version_id,
                    "state": state_entries(session, switch)})
    return switch


def resume(*, session: Session, principal: Principal, name: str, reason: str = "resumed") -> KillSwitch:
    require(session=session, principal=principal, permission="serving.resume", subject=Subject("model", name))
    reason = check_text(reason, what="the reason") or "resumed"
    serialize_writes(session=session)
    switch = _switch(session, name)
    if switch is None or not switch.active:
        raise InvalidInput(f"{name!r} is not killed; nothing to resume")
    switch.active, switch.reason, switch.actor, switch.changed_at = False, reason, principal.name, utcnow()
    append(session=session, principal=principal, action="serving.resumed", subject=Subject("model", name),
           payload={"reason": reason, "state": state_entries(session, switch)})
    return switch


def kill_states(*, session: Session) -> dict[str, dict[str, Any]]:
    """Every active kill, by model name (what a serving replica polls)."""
    rows = session.execute(select(KillSwitch).where(KillSwitch.active.is_(True))).scalars()
    return {k.model_name: {"reason": k.reason, "safe_output": k.safe_output, "actor": k.actor,
                           "at": k.changed_at.isoformat()} for k in rows}


def list_switches(*, session: Session) -> list[KillSwitch]:
    return list(session.execute(select(KillSwitch).order_by(KillSwitch.model_name)).scalars())


def switch_to_dict(switch: KillSwitch) -> dict[str, Any]:
    return {"model": switch.model_name, "killed": switch.active, "reason": switch.reason,
            "safe_output": switch.safe_output, "actor": switch.actor, "at": switch.changed_at.isoformat()}
