"""Governed rollout: a newcomer served beside a name's production version as a shadow (scored on live traffic,
never answered) or a canary (a share of requests answered), its guards, promotion and rollback.

A deployment is state in the database, like a kill switch, so every serving replica follows it; starting,
promoting and rolling one back are ledger events. Guards are limits on what replicas measure of the newcomer
(error rate, p99 latency, disagreement with production, drift of its outputs); ``breaches`` is the one
judgement of them, used by the replica that trips a rollback and by promotion, which also wants the guards to
have held over ``min_requests`` answers.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._alerts import raise_alert
from convergence.governance._approvals import _not_registrant, _production
from convergence.governance._approvals import promote as promote_version
from convergence.governance._approvals import rollback as rollback_production
from convergence.governance._deploystate import active as _active
from convergence.governance._deploystate import end as _end
from convergence.governance._deploystate import finite
from convergence.governance._identity import system_principal
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import AuditEvent, Deployment, DeploymentTally, ModelVersion
from convergence.governance._principal import Principal, check_text
from convergence.governance._registry import finite_number, get_model, load_artifact
from convergence.governance._replay import check_filed, state_entries
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation

# guard → (lowest, highest, inclusive low, what it limits); None in a deployment's guards means "not set"
GUARDS: dict[str, tuple[float, float, bool, str]] = {
    "max_error_rate": (0.0, 1.0, True, "share of the newcomer's answers that failed"),
    "max_p99_ms": (0.0, 3_600_000.0, False, "the newcomer's p99 latency in milliseconds"),
    "max_disagreement": (0.0, 1.0, True, "share of answers differing from production's by more than the bound"),
    "disagreement_bound": (0.0, math.inf, True, "how far an answer may differ from production's and still agree "
                                                "(trading: absolute; language: any differing continuation)"),
    "max_mean_abs_diff": (0.0, math.inf, False, "mean absolute difference from production's answers"),
    "max_output_drift": (0.0, 1.0, False, "two-sample Kolmogorov-Smirnov statistic of the newcomer's outputs "
                                          "against production's on the same requests"),
    "guard_after": (1.0, 1e9, True, "answers measured before a guard may trip"),
}
DEFAULT_GUARDS: dict[str, float | None] = {"max_error_rate": 0.02, "max_p99_ms": None, "max_disagreement": None,
                                           "disagreement_bound": 0.0, "max_mean_abs_diff": None,
                                           "max_output_drift": None, "guard_after": 50}
COUNTS = ("requests", "errors", "compared", "disagreements", "abs_diff_sum")


def check_guards(guards: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The defaults with ``guards`` laid over them, each a finite number in its range (one clear line if not)."""
    out = dict(DEFAULT_GUARDS)
    for name, value in (guards or {}).items():
        if name not in GUARDS:
            raise InvalidInput(f"unknown guard {str(name)[:40]!r}; guards: {', '.join(GUARDS)}")
        if value is None:
            out[name] = None if name not in ("guard_after", "disagreement_bound") else DEFAULT_GUARDS[name]
            continue
        lo, hi, low_ok, _ = GUARDS[name]
        if name == "guard_after" and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise InvalidInput(f"guard guard_after must be a whole number of answers, not {str(value)[:40]}")
        number = _number(value)
        if number is None or not (lo <= number if low_ok else lo < number) or number > hi:
            raise InvalidInput(f"guard {name} must be a number {'≥' if low_ok else '>'} {lo:g}"
                               + (f" and ≤ {hi:g}" if math.isfinite(hi) else "") + f", not {str(value)[:40]}")
        out[name] = int(number) if name == "guard_after" else number
    return out


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (a bool, a string, NaN, ±inf, an integer past a float's range)."""
    try:
        return finite_number(value, what="a number")
    except InvalidInput:
        return None


def breaches(guards: Mapping[str, Any], counts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Which guards ``counts`` (requests, errors, compared, disagreements, abs_diff_sum, p99_ms, output_drift)
    break, each with its limit and the measured value; none until ``guard_after`` answers were measured."""
    after = int(guards.get("guard_after") or 1)
    requests, compared = int(counts.get("requests", 0)), int(counts.get("compared", 0))
    measured: dict[str, float | None] = {
        "max_error_rate": counts.get("errors", 0) / requests if requests >= after else None,
        "max_p99_ms": counts.get("p99_ms") if requests - counts.get("errors", 0) >= after else None,
        "max_disagreement": counts.get("disagreements", 0) / compared if compared >= after else None,
        "max_mean_abs_diff": counts.get("abs_diff_sum", 0.0) / compared if compared >= after else None,
        "max_output_drift": counts.get("output_drift") if compared >= after else None,
    }
    return [{"guard": name, "limit": guards[name], "measured": round(float(value), 6)}
            for name, value in measured.items()
            if value is not None and math.isfinite(value) and guards.get(name) is not None and value > guards[name]]


def deploy(*, session: Session, principal: Principal, version_id: int, mode: str, percent: float | None = None,
           guards: Mapping[str, Any] | None = None, min_requests: int = 500, reason: str | None = None) -> Deployment:
    """Serve an approved version beside its name's production version as a shadow or a canary of ``percent`` %
    (the operator role, not its registrant); refused when its stage or artifact is not what the ledger says."""
    reason = check_text(reason, what="the reason")
    require(session=session, principal=principal, permission="model.promote",
            subject=Subject("model_version", str(version_id)))
    if mode not in ("shadow", "canary"):
        raise InvalidInput("mode must be shadow or canary")
    share = _share(mode, percent)
    checked = check_guards(guards)
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or not 1 <= min_requests <= 10**9:
        raise InvalidInput("min_requests must be an integer from 1 to 1,000,000,000")
    serialize_writes(session=session)
    mv = get_model(session=session, version_id=version_id)
    _not_registrant(session, mv, principal, permission="model.promote", verb="deploy",
                    rule="promoter-not-registrant")
    if mv.stage != "approved":
        raise PolicyViolation(f"model version {mv.id} ({mv.name} v{mv.version}) is {mv.stage}; only an approved "
                              "version can be deployed as a shadow or canary",
                              hint="validate and approve it (two different people) first")
    load_artifact(session=session, version_id=mv.id)  # stage, URI and SHA-256 as the ledger recorded; the bytes too
    production = _production(session, mv.name)
    if production is None:
        raise PolicyViolation(f"{mv.name} has no version in production to serve beside",
                              hint=f"promote it directly with `cvg models promote {mv.id}`")
    if (active := _active(session, mv.name)) is not None:
        raise PolicyViolation(f"{mv.name} already has an active {active.mode} (deployment {active.id}, version "
                              f"{active.version_id})", hint=f"promote it or `cvg models rollback {mv.name}` first")
    d = Deployment(model_name=mv.name, version_id=mv.id, production_id=production.id, mode=mode, percent=share,
                   guards=checked, min_requests=min_requests, status="active", started_at=utcnow(),
                   started_by_id=principal.id)
    session.add(d)
    append(session=session, principal=principal, action="deployment.started", subject=Subject("model_version",
                                                                                                 str(mv.id)),
           payload={"name": mv.name, "mode": mode, "percent": share, "production_id": production.id,
                    "artifact_sha256": mv.artifact_sha256, "guards": checked, "min_requests": min_requests,
                    "reason": reason, "state": state_entries(session, d)})
    return d


def _share(mode: str, percent: float | None) -> float:
    if mode == "shadow":
        if percent not in (None, 100, 100.0):
            raise InvalidInput("a shadow scores every request; --canary PCT answers a share")
        return 100.0
    share = _number(percent)
    if share is None or not 0 < share <= 100:
        raise InvalidInput("a canary needs a share of requests: a percentage above 0 and at most 100")
    return share


def totals(*, session: Session, deployment_id: int) -> dict[str, Any]:
    """What the replicas measured of a deployment, summed (p99 and drift: the worst replica's)."""
    out: dict[str, Any] = {k: 0 for k in COUNTS} | {"abs_diff_sum": 0.0, "p99_ms": None, "output_drift": None,
                                                     "replicas": 0}
    for tally in session.execute(select(DeploymentTally).where(
            DeploymentTally.deployment_id == deployment_id)).scalars():
        out["replicas"] += 1
        given = tally.counts if isinstance(tally.counts, dict) else {}
        # numbers only: a report is never trusted blindly
        counts = {k: v for k, v in given.items() if (n := _number(v)) is not None and n >= 0}
        for key in COUNTS:
            out[key] += counts.get(key, 0)
        for key in ("p99_ms", "output_drift"):
            if (value := counts.get(key)) is not None:
                out[key] = max(value, out[key] or 0.0)
    out["answered"] = out["requests"] - out["errors"]  # what promotion counts: answers, not attempts
    return finite(out)


def promote(*, session: Session, principal: Principal, version_id: int, reason: str | None = None) -> Deployment:
    """Finish a rollout: the newcomer becomes production (the previous one retires) once its guards have held
    for ``min_requests`` answers over all replicas."""
    require(session=session, principal=principal, permission="model.promote",
            subject=Subject("model_version", str(version_id)))
    serialize_writes(session=session)
    mv = get_model(session=session, version_id=version_id)
    d = _active(session, mv.name)
    if d is None or d.version_id != mv.id:
        raise PolicyViolation(f"version {mv.id} ({mv.name} v{mv.version}) is not being rolled out",
                              hint=f"`cvg models deploy {mv.id} --canary 10` first, or promote it directly")
    check_filed(session=session, row=d, version_id=d.version_id)  # its guards and evidence rule, as recorded
    measured = totals(session=session, deployment_id=d.id)
    if measured["answered"] < d.min_requests:
        raise PolicyViolation(f"the guards have held for {measured['answered']:,} of the {d.min_requests:,} answers "
                              f"promotion needs", hint="let it serve more traffic, then promote")
    if broken := breaches(d.guards, measured):
        raise PolicyViolation(f"guard {broken[0]['guard']} is broken ({broken[0]['measured']} > "
                              f"{broken[0]['limit']}): it cannot be promoted")
    promote_version(session=session, principal=principal, version_id=mv.id, reason=reason or f"rollout {d.id}",
                    rollout=d.id)
    _end(session, d, status="promoted", principal=principal, reason=reason or "promoted", measured=measured,
         payload={"replaced": d.production_id, "reason": reason})
    return d


RECENT_S = 600.0  # a rollout that ended this recently makes a bare `cvg models rollback` ask which one


def rollback(*, session: Session, principal: Principal, name: str, reason: str | None = None,
             target: str = "rollout") -> Deployment | ModelVersion | None:
    """Roll ``name`` back (the operator role). ``rollout``: end its active shadow or canary (None if none runs);
    every replica answers with production alone at its next poll. ``production``: restore the version production
    replaced (refused while a rollout runs). ``auto``: the rollout if one runs, else production, except right
    after a rollout ended (a guard may just have ended the one the caller meant): then it asks."""
    reason = check_text(reason, what="the reason")
    if target not in ("auto", "rollout", "production"):
        raise InvalidInput("target must be auto, rollout or production")
    require(session=session, principal=principal, permission="model.rollback", subject=Subject("model", name))
    serialize_writes(session=session)
    d = _active(session, name)
    if d is not None and target in ("auto", "rollout"):
        _end(session, d, status="rolled_back", principal=principal, reason=reason or "rolled back",
             measured=totals(session=session, deployment_id=d.id), payload={"automatic": False, "reason": reason})
        return d
    if target == "rollout":
        return None
    if target == "auto" and (recent := _ended_lately(session, name)) is not None:
        how = recent.status.replace("_", " ")
        raise PolicyViolation(f"{name}'s {recent.mode} of version {recent.version_id} ended {how} at "
                              f"{recent.ended_at:%H:%M:%S} UTC ({recent.end_reason}); nothing is being rolled out now",
                              hint="to roll production itself back, say so: `cvg models rollback NAME --production`")
    return rollback_production(session=session, principal=principal, name=name, reason=reason)


def _ended_lately(session: Session, name: str) -> Deployment | None:
    since = utcnow() - dt.timedelta(seconds=RECENT_S)
    return session.execute(select(Deployment).where(Deployment.model_name == name, Deployment.ended_at >= since)
                           .order_by(Deployment.ended_at.desc()).limit(1)).scalars().first()


def trip(*, session: Session, deployment_id: int, replica: str, broken: list[dict[str, Any]],
         measured: Mapping[str, Any]) -> Deployment | None:
    """A guard broke on ``replica``: roll the deployment back (as ``system:rollout-guard``, on the operator's
    guards), audited with the measured values, and raise a critical alert with its webhook. None when it had
    already ended (another replica was first)."""
    serialize_writes(session=session)
    # read again under the lock: this session may hold the row from before (report), and PostgreSQL lets a
    # promotion or another replica's trip commit in between
    d = session.get(Deployment, deployment_id, populate_existing=True)
    if d is None or d.status != "active":
        return None
    guard = system_principal(session=session, name="rollout-guard")
    broken = finite(list(broken))
    what = ", ".join(f"{b['guard']} {b['measured']} > {b['limit']}" for b in broken)
    message = f"{d.model_name}: {d.mode} of version {d.version_id} rolled back automatically ({what})"
    payload = _end(session, d, status="rolled_back", principal=guard, reason=message, measured=measured,
                   payload={"automatic": True, "breached": broken, "replica": replica, "guards": d.guards,
                            "message": message})
    raise_alert(session=session, principal=guard, kind="rollback", severity="critical",
                dedupe_key=f"rollback:{d.id}", subject=Subject("deployment", str(d.id)), message=message,
                payload=payload)
    return d


def report(*, session: Session, deployment_id: int, replica: str, counts: Mapping[str, Any]) -> None:
    """A replica's measurements of an active deployment so far (replacing its last report); ignored once it ended."""
    d = session.get(Deployment, deployment_id)
    if d is None or d.status != "active":
        return
    tally = session.execute(select(DeploymentTally).where(DeploymentTally.deployment_id == deployment_id,
                                                          DeploymentTally.replica == replica)).scalars().first()
    counts = finite(dict(counts))
    if tally is None:
        session.add(DeploymentTally(deployment_id=deployment_id, replica=replica, counts=counts, updated_at=utcnow()))
    else:
        tally.counts, tally.updated_at = counts, utcnow()


def states(*, session: Session, recent_s: float = 600.0) -> dict[str, dict[str, Any]]:
    """Per model name, its newest deployment that is active or ended in the last ``recent_s`` (what replicas
    poll: an ended one tells a replica whether to drop its newcomer or make it production)."""
    since = utcnow() - dt.timedelta(seconds=recent_s)
    rows = session.execute(select(Deployment, ModelVersion.stage).join(ModelVersion,
                                                                       ModelVersion.id == Deployment.version_id)
                           .where(or_(Deployment.status == "active", Deployment.ended_at >= since))
                           .order_by(Deployment.id)).all()
    # an active deployment of a version no longer approved (rejected, retired, edited) serves nothing
    return {d.model_name: {"id": d.id, "version_id": d.version_id, "production_id": d.production_id, "mode": d.mode,
                           "percent": d.percent, "guards": d.guards if isinstance(d.guards, dict) else {},
                           "status": d.status if d.status != "active" or stage == "approved" else "stale"}
            for d, stage in rows}


def status(*, session: Session, deployment_id: int) -> str | None:
    """A deployment's status now (a replica asks about the one it serves when the poll shows another)."""
    return session.execute(select(Deployment.status).where(Deployment.id == deployment_id)).scalar()


def check_promoted(*, session: Session, deployment_id: int) -> ModelVersion:
    """A deployment a replica is told was promoted, as the ledger recorded it, and its version in production as
    the ledger recorded it: only then does the replica make it answer everything (IntegrityError otherwise)."""
    d = session.get(Deployment, deployment_id)
    if d is None:
        raise NotFound(f"no deployment {deployment_id}")
    check_filed(session=session, row=d, version_id=d.version_id)
    mv = get_model(session=session, version_id=d.version_id)
    from convergence.governance._replay import check_recorded

    check_recorded(session=session, version=mv)
    if d.status != "promoted" or mv.stage != "production":
        raise PolicyViolation(f"deployment {deployment_id} is {d.status}; version {mv.id} is {mv.stage}")
    return mv


def check_deployment(*, session: Session, deployment_id: int) -> Deployment:
    """The deployment a replica is about to follow, as the ledger recorded it: IntegrityError when its row was
    edited (a mode, share, guard or status the ledger never saw), PolicyViolation when it is not active."""
    d = session.get(Deployment, deployment_id)
    if d is None:
        raise NotFound(f"no deployment {deployment_id}")
    check_filed(session=session, row=d, version_id=d.version_id)
    if d.status != "active":
        raise PolicyViolation(f"deployment {deployment_id} is {d.status}")
    return d


def approval_seq(*, session: Session, version_id: int) -> int | None:
    """The ledger ``seq`` of the approval that lets ``version_id`` serve (its latest ``model.approved`` event)."""
    return session.execute(select(AuditEvent.seq).where(
        AuditEvent.subject_type == "model_version", AuditEvent.subject_id == str(version_id),
        AuditEvent.action == "model.approved").order_by(AuditEvent.seq.desc()).limit(1)).scalar()


def current(*, session: Session, name: str) -> dict[str, Any]:
    """``name``'s active deployment with what replicas measured and how the guards stand; NotFound if none."""
    if session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    d = _active(session, name)
    if d is None:
        raise NotFound(f"{name} has no active shadow or canary", hint="`cvg models deploy ID --canary 10` starts one")
    measured = totals(session=session, deployment_id=d.id)
    return {**to_dict(d), "measured": measured, "breached": breaches(d.guards, measured),
            "promotable": measured["answered"] >= d.min_requests and not breaches(d.guards, measured)}


def active_at(*, session: Session, name: str, at: dt.datetime) -> Deployment | None:
    """The shadow or canary of ``name`` that was running at instant ``at``, if any."""
    return session.execute(select(Deployment).where(
        Deployment.model_name == name, Deployment.started_at <= at,
        or_(Deployment.ended_at.is_(None), Deployment.ended_at > at)).order_by(Deployment.id.desc())).scalars().first()


def to_dict(d: Deployment) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": d.id, "name": d.model_name, "version_id": d.version_id, "production_id": d.production_id,
            "mode": d.mode, "percent": d.percent, "guards": dict(d.guards), "min_requests": d.min_requests,
            "status": d.status, "started_at": iso(d.started_at), "started_by_id": d.started_by_id,
            "ended_at": iso(d.ended_at), "ended_by_id": d.ended_by_id, "end_reason": d.end_reason,
            "measured": d.measured}
