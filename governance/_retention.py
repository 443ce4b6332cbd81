"""Retention: how long each class of record is kept, and deleting only what has expired, on the record.

A policy is a number of days per record class (prediction log, drift reports, usage, artifacts of
retired or rejected versions). An admin sets it, never below the legal minimum configured for the class
(``CVG_RETENTION_MINIMUM_DAYS``); ``apply`` deletes what is older than each policy in the caller's
transaction, with one ``retention.applied`` event saying what went. Audit events are not a class:
nothing here can delete one (the database refuses it anyway).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import ControlSetting, DriftReport, ModelVersion, PredictionLog, StageTransition, Usage
from convergence.governance._principal import Principal
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class RecordClass:
    name: str
    what: str
    default_days: int


CLASSES: dict[str, RecordClass] = {c.name: c for c in (
    RecordClass("prediction_log", "every served prediction: features, output, latency, version", 365),
    RecordClass("drift_reports", "drift reports with their Evidently HTML and JSON", 1826),
    RecordClass("usage", "compute and energy per step, run and served batch", 1826),
    RecordClass("artifacts", "the stored bytes of retired or rejected model versions (their registry rows, "
                             "SHA-256 and events stay)", 2557),
)}
_KEY = "retention."
ENDED = ("retired", "rejected")


def _record_class(name: str) -> RecordClass:
    if name not in CLASSES:
        raise InvalidInput(f"no record class {name[:60]!r}; classes: {', '.join(CLASSES)}")
    return CLASSES[name]


DEFAULT_MINIMUM_DAYS = 183  # six months: the EU AI Act's Art. 19 for the logs of a high-risk system


def minimum_days(record_class: str) -> int:
    """The legal minimum configured for a class (CVG_RETENTION_MINIMUM_DAYS, a JSON object of class → days);
    a class the configuration leaves out keeps the default six months, never none."""
    from convergence.platform.settings import get_settings

    configured = get_settings().retention_minimum_days
    return int(configured.get(record_class, DEFAULT_MINIMUM_DAYS))


def policies(*, session: Session, principal: Principal) -> list[dict[str, Any]]:
    """Every class with its policy (set, or the default), its legal minimum, and who set it when."""
    require(session=session, principal=principal, permission="retention.read")
    rows = {r.key: r for r in session.execute(select(ControlSetting).where(ControlSetting.key.like(_KEY + "%"))).scalars()}
    out = []
    for c in CLASSES.values():
        row = rows.get(_KEY + c.name)
        out.append({"class": c.name, "what": c.what, "days": int(row.value["days"]) if row else c.default_days,
                    "minimum_days": minimum_days(c.name), "set": row is not None,
                    "set_at": row.updated_at.isoformat() if row else None,
                    "reason": row.value.get("reason") if row else None})
    return out


def set_policy(*, session: Session, principal: Principal, record_class: str, days: int, reason: str) -> dict[str, Any]:
    """Keep ``record_class`` for ``days``; refused below the class's legal minimum. Audited with the old value."""
    require(session=session, principal=principal, permission="retention.manage", subject=Subject("retention", record_class))
    c = _record_class(record_class)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36_500:
        raise InvalidInput("days must be a whole number from 1 to 36,500")
    floor = minimum_days(c.name)
    if days < floor:
        raise InvalidInput(f"{c.name} must be kept at least {floor:,} days (the legal minimum configured for it); "
                           f"{days:,} is shorter", hint="CVG_RETENTION_MINIMUM_DAYS sets the minimums")
    if not reason or not reason.strip():
        raise InvalidInput("a retention change needs a reason (--reason): it is what an examiner will read")
    serialize_writes(session=session)
    row = session.get(ControlSetting, _KEY + c.name)
    before = int(row.value["days"]) if row else c.default_days
    row = row or ControlSetting(key=_KEY + c.name)
    row.value, row.updated_at, row.updated_by_id = {"days": days, "reason": reason.strip()}, utcnow(), principal.id
    session.add(row)
    append(session=session, principal=principal, action="retention.set", subject=Subject("retention", c.name),
           payload={"days": days, "before": before, "minimum_days": floor, "reason": reason.strip()})
    return {"class": c.name, "days": days, "before": before, "minimum_days": floor}


def apply(*, session: Session, principal: Principal, now: dt.datetime | None = None,
          dry_run: bool = False) -> dict[str, Any]:
    """Delete every record older than its class's policy (``dry_run``: only count them), with one audited
    ``retention.applied`` event in the same transaction. Artifact bytes go after the commit (``discard``)."""
    require(session=session, principal=principal, permission="retention.apply" if not dry_run else "retention.read",
            subject=Subject("retention", "all"))
    now = now or utcnow()
    days = {p["class"]: p["days"] for p in policies(session=session, principal=principal)}
    for name, kept in days.items():  # a minimum raised after a policy was set wins
        days[name] = max(kept, minimum_days(name))
    cutoff = {name: now - dt.timedelta(days=d) for name, d in days.items()}
    if not dry_run:
        serialize_writes(session=session)
    usage_cutoff = min(cutoff["usage"], _open_budgets_start(session, now))  # an open budget still sums them
    found = {"prediction_log": _rows(session, PredictionLog, PredictionLog.ts, cutoff["prediction_log"], dry_run),
             "usage": _rows(session, Usage, Usage.created_at, usage_cutoff, dry_run)}
    reports, report_blobs = _drift_reports(session, cutoff["drift_reports"])
    versions, artifact_blobs = _ended_artifacts(session, cutoff["artifacts"])
    blobs = sorted(_unreferenced(session, report_blobs | artifact_blobs, versions=versions, reports=reports))
    if not dry_run and reports:
        session.execute(delete(DriftReport).where(DriftReport.id.in_(reports)))
    found["drift_reports"], found["artifacts"] = len(reports), len(versions)
    summary = {"dry_run": dry_run, "now": now.isoformat(), "blobs": len(blobs),
               "classes": {name: {"days": days[name], "cutoff": cutoff[name].isoformat(), "expired": found[name]}
                           for name in CLASSES}}
    if not dry_run:
        append(session=session, principal=principal, action="retention.applied", subject=Subject("retention", "all"),
               payload=summary)
        _discard_after_commit(session, blobs, reports, versions)
    return summary


def _open_budgets_start(session: Session, now: dt.datetime) -> dt.datetime:
    """The start of the earliest budget period not yet over: usage since then still counts against a limit."""
    from convergence.governance._models import Budget

    start = session.execute(select(func.min(Budget.period_start)).where(Budget.period_end > now)).scalar()
    return start if start is not None else now


def _rows(session: Session, table: Any, column: Any, cutoff: dt.datetime, dry_run: bool) -> int:
    expired = column < cutoff
    if dry_run:
        return int(session.execute(select(func.count()).select_from(table).where(expired)).scalar_one())
    return int(session.execute(delete(table).where(expired)).rowcount or 0)


def _drift_reports(session: Session, cutoff: dt.datetime) -> tuple[list[int], set[str]]:
    """Reports made before ``cutoff``, and the SHA-256 of their Evidently HTML and JSON."""
    rows = session.execute(select(DriftReport.id, DriftReport.evidently_html_uri, DriftReport.evidently_json_uri)
                           .where(DriftReport.created_at < cutoff)).all()
    return [r.id for r in rows], {uri.rsplit("/", 1)[-1] for r in rows for uri in r[1:] if uri}


def _ended_artifacts(session: Session, cutoff: dt.datetime) -> tuple[list[int], set[str]]:
    """Versions retired or rejected before ``cutoff`` (their last stage change), and their artifacts' SHA-256.
    Their rows stay: the registry, the ledger and lineage still name them; only the bytes go. The version
    each name's rollback would restore (its most recently retired) keeps its bytes, however old."""
    last = (select(StageTransition.model_version_id, func.max(StageTransition.at).label("at"))
            .group_by(StageTransition.model_version_id).subquery())
    rows = session.execute(select(ModelVersion.id, ModelVersion.name, ModelVersion.stage, ModelVersion.artifact_sha256,
                                  last.c.at).join(last, last.c.model_version_id == ModelVersion.id)
                           .where(ModelVersion.stage.in_(ENDED))).all()
    fallback: dict[str, tuple[dt.datetime, int]] = {}
    for r in rows:
        if r.stage == "retired" and (r.name not in fallback or r.at > fallback[r.name][0]):
            fallback[r.name] = (r.at, r.id)
    keep = {version for _, version in fallback.values()}
    ended = [r for r in rows if r.at < cutoff and r.id not in keep]
    return [r.id for r in ended], {r.artifact_sha256 for r in ended if r.artifact_sha256}


def _unreferenced(session: Session, blobs: set[str], *, versions: list[int], reports: list[int]) -> set[str]:
    """The blobs nothing kept points at: content-addressed, one file can be several versions' or reports'."""
    if not blobs:
        return set()
    live = set(session.execute(select(ModelVersion.artifact_sha256).where(
        ModelVersion.artifact_sha256.in_(blobs), ModelVersion.id.not_in(versions or [-1]))).scalars())
    kept = select(DriftReport.evidently_html_uri, DriftReport.evidently_json_uri).where(
        DriftReport.id.not_in(reports or [-1]))
    for r in session.execute(kept).all():
        live |= {uri.rsplit("/", 1)[-1] for uri in r if uri}
    return blobs - live


def _discard_after_commit(session: Session, blobs: list[str], reports: list[int], versions: list[int]) -> None:
    """Remove the blobs, and the readable copies of deleted drift reports, once the deletions are committed
    (a rollback leaves every byte where it was)."""
    if not blobs and not reports:
        return
    from sqlalchemy import event

    event.listen(session, "after_commit", lambda _: discard(blobs, reports, versions), once=True)


def discard(blobs: list[str], reports: list[int], versions: list[int] = ()) -> list[str]:  # type: ignore[assignment]
    """Remove the stored blobs still unreferenced now (the same rule as at apply, looked at again after the
    commit: a version registered with the same bytes since then keeps them), and the readable copies of
    deleted drift reports. ``versions``: the expired versions, whose rows stay but no longer hold bytes."""
    from convergence.governance._artifacts import get_artifact_store
    from convergence.platform.db import session_scope
    from convergence.platform.settings import get_settings

    with session_scope(write=False) as session:
        unreferenced = _unreferenced(session, set(blobs), versions=list(versions), reports=list(reports))
    store = get_artifact_store()
    gone = [sha for sha in blobs if sha in unreferenced and store.discard(sha)]
    copies = get_settings().home / "reports"
    for report in reports:
        for copy in copies.glob(f"drift-{report}-*.html"):
            copy.unlink(missing_ok=True)
    return gone
