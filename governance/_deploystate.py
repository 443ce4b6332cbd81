"""The state of a name's shadow or canary that the stage machine needs too: which deployment is active, and
ending one with its audit event (rollout, rejection). Kept apart so ``_approvals`` and ``_rollout`` both use
it without importing each other."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._ledger import Subject, append
from convergence.governance._models import Deployment
from convergence.governance._principal import Principal
from convergence.governance._replay import state_entries
from convergence.governance._webhooks import enqueue
from convergence.platform.db import utcnow


def active(session: Session, name: str) -> Deployment | None:
    return session.execute(select(Deployment).where(Deployment.model_name == name,
                                                    Deployment.status == "active")).scalars().first()


def finite(value: Any) -> Any:
    """``value`` with every non-finite float made None: measurements are evidence, and NaN or inf is not JSON
    the ledger takes (one poisoned comparison must never block a rollback)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def end(session: Session, d: Deployment, *, status: str, principal: Principal, reason: str,
        measured: Mapping[str, Any], payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """End ``d`` as promoted or rolled back, with its ``deployment.*`` event (the row's new state in it) and, for
    a rollback, a ``deployment.rolled_back`` webhook; returns the event's payload."""
    measured = finite(dict(measured))
    d.status, d.ended_at, d.ended_by_id, d.end_reason, d.measured = status, utcnow(), principal.id, reason, measured
    body = {"deployment_id": d.id, "name": d.model_name, "version_id": d.version_id, "mode": d.mode,
            "measured": measured, **finite(dict(payload or {}))}
    action = "deployment.promoted" if status == "promoted" else "deployment.rolled_back"
    append(session=session, principal=principal, action=action, subject=Subject("model_version", str(d.version_id)),
           payload={**body, "state": state_entries(session, d)})
    if status == "rolled_back":
        enqueue(session=session, event_type="deployment.rolled_back",
                data={**body, "by": principal.name, "message": body.get("message") or
                      f"{d.model_name}: {d.mode} of version {d.version_id} rolled back by {principal.name}"})
    return body
