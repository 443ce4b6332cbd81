"""Alerts: deduplicated notices for people (a budget's soft limit crossed; drift, later).

An alert with the same dedupe key is one row whose count and last_seen advance; only its first
occurrence writes an audit event, so a repeated condition never floods the trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._ledger import Subject, append
from convergence.governance._models import SEVERITIES, Alert
from convergence.governance._principal import Principal
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput


def raise_alert(*, session: Session, principal: Principal, kind: str, severity: str, dedupe_key: str, subject: Subject,
                message: str, payload: Mapping[str, Any] | None = None,
                cooldown_s: float | None = None) -> tuple[Alert, bool]:
    """The alert for ``dedupe_key``: counted on the latest one while it is within ``cooldown_s`` (forever when
    None), else created and audited; True when it is new."""
    if severity not in SEVERITIES:
        raise InvalidInput(f"severity must be one of {', '.join(SEVERITIES)}")
    now = utcnow()
    existing = session.execute(select(Alert).where(Alert.dedupe_key == dedupe_key)
                               .order_by(Alert.last_seen.desc()).limit(1)).scalar_one_or_none()
    if existing is not None and (cooldown_s is None or (now - existing.last_seen).total_seconds() < cooldown_s):
        existing.count += 1
        existing.last_seen = now
        if severity == "critical" and existing.severity != "critical":
            existing.severity = severity  # an escalation is kept, never a downgrade
        return existing, False
    alert = Alert(kind=kind, severity=severity, dedupe_key=dedupe_key, subject_type=subject.type,
                  subject_id=str(subject.id), message=message, payload=dict(payload or {}), count=1,
                  first_seen=now, last_seen=now)
    session.add(alert)
    session.flush()
    append(session=session, principal=principal, action="alert.raised", subject=Subject("alert", str(alert.id)),
           payload={"kind": kind, "severity": severity, "message": message, "about": str(subject)})
    return alert, True


def list_alerts(*, session: Session, kind: str | None = None, limit: int = 100) -> list[Alert]:
    q = select(Alert).order_by(Alert.last_seen.desc()).limit(limit)
    if kind:
        q = q.where(Alert.kind == kind)
    return list(session.execute(q).scalars())
