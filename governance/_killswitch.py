"""The kill switch: stop a model serving on every replica at once, and resume it; both audited.

The state lives in ``kill_switches`` (one row per model name), so it survives restarts and every
serving replica reads the same answer; a replica polls it (``kill_states``) a few times a second.
Setting it and its audit event commit in one transaction (MiFID II RTS 6 Art. 12 asks for both).
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import KillSwitch, ModelVersion
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound


def _switch(session: Session, name: str) -> KillSwitch | None:
    return session.execute(select(KillSwitch).where(KillSwitch.model_name == name)).scalar_one_or_none()


def kill(*, session: Session, name: str, reason: str, actor: str, safe_output: float | None = None) -> KillSwitch:
    """Stop ``name`` serving: replicas answer 503 with the reason, or ``safe_output`` when one is given."""
    if not reason or not reason.strip():
        raise InvalidInput("a kill needs a reason (--reason): it is what callers and auditors will read")
    if safe_output is not None and not math.isfinite(safe_output):
        raise InvalidInput(f"the safe output must be a finite number, got {safe_output}")
    serialize_writes(session=session)
    if session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    switch = _switch(session, name) or KillSwitch(model_name=name)
    switch.active, switch.reason, switch.safe_output = True, reason.strip(), safe_output
    switch.actor, switch.changed_at = actor, utcnow()
    session.add(switch)
    session.flush()
    append(session=session, actor=actor, action="serving.killed", subject=Subject("model", name),
           payload={"reason": switch.reason, "safe_output": safe_output})
    return switch


def resume(*, session: Session, name: str, actor: str, reason: str = "resumed") -> KillSwitch:
    serialize_writes(session=session)
    switch = _switch(session, name)
    if switch is None or not switch.active:
        raise InvalidInput(f"{name!r} is not killed; nothing to resume")
    switch.active, switch.reason, switch.actor, switch.changed_at = False, reason, actor, utcnow()
    session.flush()
    append(session=session, actor=actor, action="serving.resumed", subject=Subject("model", name),
           payload={"reason": reason})
    return switch


def kill_states(*, session: Session) -> dict[str, dict[str, Any]]:
    """Every active kill, by model name (what a serving replica polls)."""
    rows = session.execute(select(KillSwitch).where(KillSwitch.active.is_(True))).scalars()
    return {k.model_name: {"reason": k.reason, "safe_output": k.safe_output, "actor": k.actor,
                           "at": k.changed_at.isoformat()} for k in rows}


def list_switches(*, session: Session) -> list[KillSwitch]:
    return list(session.execute(select(KillSwitch).order_by(KillSwitch.model_name)).scalars())
