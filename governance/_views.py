"""Read models for people who look rather than query: the inventory, one version's whole record, a moment in
time, and an event with what a browser needs to check its inclusion itself.

Each function reads in the caller's session and returns plain data (no server paths); the caller checks the
permission first (``model.read``, and ``audit.read`` before asking for events).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from convergence.governance._ledger import Event, format_ts
from convergence.governance._models import (
    Alert,
    Approval,
    AuditEvent,
    ControlSetting,
    DriftReport,
    KillSwitch,
    ModelVersion,
    StageTransition,
)
from convergence.platform.errors import NotFound

_EVENTS_AROUND = 60


def inventory(*, session: Session) -> list[dict[str, Any]]:
    """One row per model name: production version, latest version, family, tier and owner, last validation,
    open drift alerts and the kill switch (a handful of queries, plus two per model in production)."""
    versions = session.execute(select(ModelVersion.id, ModelVersion.name, ModelVersion.version, ModelVersion.family,
                                      ModelVersion.stage, ModelVersion.role)
                               .order_by(ModelVersion.name, ModelVersion.version)).all()
    by_name: dict[str, list[Any]] = defaultdict(list)
    for row in versions:
        by_name[row.name].append(row)
    name_of = {row.id: row.name for row in versions}
    validations: dict[str, dict[str, Any]] = {}
    for a in session.execute(select(Approval).where(Approval.decision == "validated")
                             .order_by(Approval.created_at, Approval.id)).scalars():
        validations[name_of.get(a.model_version_id, "")] = {"actor": a.actor, "at": a.created_at.isoformat(),
                                                          "version_id": a.model_version_id}
    risk = {row.key.removeprefix("model_risk."): row.value for row in session.execute(
        select(ControlSetting).where(ControlSetting.key.like("model_risk.%"))).scalars()}
    switches = {k.model_name: k for k in session.execute(select(KillSwitch)).scalars()}
    out = []
    for name, rows in by_name.items():
        production = next((r for r in reversed(rows) if r.stage == "production"), None)
        latest, switch = rows[-1], switches.get(name)
        tier = (risk.get(name) or {})
        out.append({
            "name": name, "family": latest.family, "versions": len(rows),
            "production": {"id": production.id, "version": production.version, "role": production.role}
            if production else None,
            "latest": {"id": latest.id, "version": latest.version, "stage": latest.stage, "role": latest.role},
            "stage": production.stage if production else latest.stage,
            "tier": tier.get("tier"), "owner": tier.get("owner"), "next_review": tier.get("next_review"),
            "last_validation": validations.get(name),
            "open_drift_alerts": open_drift_alerts(session=session, version_id=production.id) if production else 0,
            "killed": bool(switch and switch.active), "kill_reason": switch.reason if switch and switch.active else None,
        })
    return out


def open_drift_alerts(*, session: Session, version_id: int) -> int:
    """Drift alerts on the version seen after its last clean drift check: they stay open until a check of the
    same version finds no drift (alerts have no acknowledgement of their own)."""
    clean = session.execute(select(DriftReport.created_at).where(
        DriftReport.model_version_id == version_id, DriftReport.drifted.is_(False))
        .order_by(DriftReport.created_at.desc()).limit(1)).scalar()
    q = select(Alert.id).where(Alert.kind == "drift", Alert.subject_type == "model_version",
                               Alert.subject_id == str(version_id))
    if clean is not None:
        q = q.where(Alert.last_seen > clean)
    return len(session.execute(q).all())


def version_view(*, session: Session, version_id: int, events: bool) -> dict[str, Any]:
    """One version's record: lineage both ways as nodes and edges, approvals by principal, stages, drift reports,
    energy and compute; with ``events`` (the reader may read the trail) the kill-switch timeline and its events."""
    from convergence.governance._card import summary
    from convergence.governance._cardpage import walk_forward_figures
    from convergence.governance._pack import (
        _chain,
        _copies,
        _evidence,
        _name_principals,
        _serving_usage,
        classification,
    )
    from convergence.governance._queries import lineage

    tree = lineage(session=session, version_id=version_id)
    chain = _chain(tree)
    _name_principals(session, chain)
    evidence = _evidence(chain) or {}
    mv = chain[0]
    reports = session.execute(select(DriftReport).where(DriftReport.model_version_id == version_id)
                              .order_by(DriftReport.id.desc()).limit(50)).scalars().all()
    children = _copies(session, version_id)
    out: dict[str, Any] = {
        "version": _public(mv), "chain": [_public(v) for v in chain], "children": children,
        "graph": _graph(chain, children), "summary": summary(chain=chain, evidence=evidence or None),
        "figures": walk_forward_figures(evidence) if chain[0]["family"] == "trading" else [],
        "classification": classification(session=session, name=mv["name"]),
        "drift": [{"id": r.id, "window_start": r.window_start.isoformat(), "window_end": r.window_end.isoformat(),
                   "rows": r.rows, "drift_share": r.drift_share, "drifted": r.drifted, "severity": r.severity,
                   "columns": r.columns, "has_html": bool(r.evidently_html_uri), "created_at": r.created_at.isoformat(),
                   "created_by": r.created_by} for r in reports],
        "serving_usage": _serving_usage(session, version_id),
        "open_drift_alerts": open_drift_alerts(session=session, version_id=version_id),
    }
    switch = session.execute(select(KillSwitch).where(KillSwitch.model_name == mv["name"])).scalar_one_or_none()
    out["kill_switch"] = ({"killed": switch.active, "reason": switch.reason, "actor": switch.actor,
                           "at": switch.changed_at.isoformat()} if switch else None)
    if events:
        rows = session.execute(select(AuditEvent).where(
            AuditEvent.subject_type == "model", AuditEvent.subject_id == mv["name"],
            AuditEvent.action.in_(("serving.killed", "serving.resumed"))).order_by(AuditEvent.seq)).scalars()
        out["kill_timeline"] = [_event(r) for r in rows]
        out["events"] = [_event(r) for r in session.execute(select(AuditEvent).where(_about(mv["name"], [version_id]))
                                                             .order_by(AuditEvent.seq.desc()).limit(100)).scalars()]
    return out


def moment(*, session: Session, name: str, at: dt.datetime, events: bool,
           window: dt.timedelta = dt.timedelta(hours=6)) -> dict[str, Any]:
    """What was live for ``name`` at instant ``at``: the version in production then (or none), who approved it,
    and, with ``events``, the ledger events about the name within ``window`` either side."""
    from convergence.governance._pack import _name_principals
    from convergence.governance._queries import in_production_at, lineage

    ids = list(session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).scalars())
    if not ids:
        raise NotFound(f"no model called {name!r}", hint="the inventory lists every model")
    out: dict[str, Any] = {"name": name, "at": at.isoformat(), "version": None}
    try:
        mv = in_production_at(session=session, name=name, at=at)
    except NotFound as exc:
        out["nothing"] = exc.message
    else:
        node = {k: v for k, v in lineage(session=session, version_id=mv.id).items() if k != "parent"}
        _name_principals(session, [node])
        out["version"] = _public(node)
        out["promoted"] = session.execute(select(StageTransition.at, StageTransition.actor).where(
            StageTransition.model_version_id == mv.id, StageTransition.to_stage == "production",
            StageTransition.at <= at).order_by(StageTransition.at.desc()).limit(1)).one_or_none()
        if out["promoted"] is not None:
            out["promoted"] = {"at": out["promoted"].at.isoformat(), "actor": out["promoted"].actor}
    if events:
        low, high = _around(at, window)
        q = (select(AuditEvent).where(_about(name, ids), AuditEvent.ts >= low, AuditEvent.ts <= high)
             .order_by(AuditEvent.seq).limit(_EVENTS_AROUND))
        out["events"] = [{**_event(r), "after": r.ts > at} for r in session.execute(q).scalars()]
    return out


def _around(at: dt.datetime, window: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    """``at`` ± ``window``, held inside the calendar (year 1 and 9999 are instants a reader may type)."""
    low = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    high = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    return (at - window if at - low > window else low), (at + window if high - at > window else high)


def model_names(*, session: Session) -> list[str]:
    """Every model name, sorted (what a picker lists)."""
    return list(session.execute(select(ModelVersion.name).distinct().order_by(ModelVersion.name)).scalars())


def _about(name: str, version_ids: list[int]) -> Any:
    """Events whose subject is the model name or one of its versions."""
    return or_(and_(AuditEvent.subject_type == "model", AuditEvent.subject_id == name),
               and_(AuditEvent.subject_type == "model_version", AuditEvent.subject_id.in_([str(i) for i in version_ids])))


def browser_proof(*, session: Session, seq: int) -> dict[str, Any]:
    """Event ``seq`` as stored (its payload as the exact text that is hashed), its inclusion proof and the signed
    checkpoint it is proved against: everything a browser needs to recompute the hash and check it, trusting
    only the ledger's public key."""
    from convergence.governance._checkpoints import prove

    row = session.get(AuditEvent, seq)
    if row is None:
        raise NotFound(f"no audit event with seq {seq}")
    proof = prove(session=session, seq=seq)
    event = Event.of(row)
    return {"seq": seq, "tree_size": proof["tree_size"], "proof": proof["proof"], "checkpoint": proof["checkpoint"],
            "event": {"seq": event.seq, "ts": format_ts(event.ts), "actor": event.actor, "action": event.action,
                      "subject_type": event.subject_type, "subject_id": event.subject_id,
                      "payload": event.payload, "prev_hash": event.prev_hash}}


def recent_events(*, session: Session, before: int, limit: int = 50) -> list[Event]:
    """The ``limit`` events before seq ``before``, newest first (the ledger page, a page at a time)."""
    rows = session.execute(select(AuditEvent).where(AuditEvent.seq < before).order_by(AuditEvent.seq.desc())
                           .limit(limit)).scalars()
    return [Event.of(r) for r in rows]


def _event(row: AuditEvent) -> dict[str, Any]:
    e = Event.of(row)
    return {"seq": e.seq, "ts": format_ts(e.ts), "actor": e.actor, "action": e.action,
            "subject": f"{e.subject_type}:{e.subject_id}", "payload": e.payload_obj}


_HIDDEN = {"artifact_uri", "uri", "evidence_uri", "evidently_html_uri", "evidently_json_uri", "params"}


def _public(node: dict[str, Any]) -> dict[str, Any]:
    """A lineage node without server locations (what a page may show)."""
    out = {k: v for k, v in node.items() if k not in _HIDDEN}
    if isinstance(out.get("dataset"), dict):
        out["dataset"] = {k: v for k, v in out["dataset"].items() if k != "uri"}
    return out


def _graph(chain: list[dict[str, Any]], children: list[dict[str, Any]]) -> dict[str, Any]:
    """Lineage as nodes and edges: dataset → run → teacher → student → quantized/compiled copies."""
    nodes: list[dict[str, Any]] = []
    edges: list[tuple[str, str]] = []
    previous = None
    for version in reversed(chain):  # the root (teacher) first
        ds, run = version.get("dataset"), version.get("run")
        vid = f"v{version['id']}"
        if ds and not any(n["id"] == f"d{ds['id']}" for n in nodes):
            nodes.append({"id": f"d{ds['id']}", "kind": "dataset", "label": ds.get("name") or f"dataset {ds['id']}",
                          "detail": f"sha256 {ds['sha256'][:12]}…"})
        if run and not any(n["id"] == f"r{run['id']}" for n in nodes):
            nodes.append({"id": f"r{run['id']}", "kind": "run", "label": f"run {run['id']}",
                          "detail": f"{run['pipeline']} · {run['status']}"})
            if ds:
                edges.append((f"d{ds['id']}", f"r{run['id']}"))
        nodes.append({"id": vid, "kind": version["role"], "label": f"{version['name']} v{version['version']}",
                      "detail": f"{version['role']} · {version['stage']}", "version_id": version["id"]})
        if run:
            edges.append((f"r{run['id']}", vid))
        elif ds:
            edges.append((f"d{ds['id']}", vid))
        if previous:
            edges.append((previous, vid))
        previous = vid
    for child in children:
        nodes.append({"id": f"v{child['id']}", "kind": child["role"], "label": f"{child['name']} v{child['version']}",
                      "detail": f"{child['role']} · {child['stage']}", "version_id": child["id"]})
        edges.append((previous or "", f"v{child['id']}"))
    return {"nodes": nodes, "edges": [{"from": a, "to": b} for a, b in dict.fromkeys(edges)]}
