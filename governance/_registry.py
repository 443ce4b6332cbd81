"""Model registry with lineage: projects, datasets, pipeline runs and model versions.

A registration stores the artifact in the content-addressed store first (harmless if the process
dies later: an unreferenced blob), then writes the version, its first stage transition and its
audit event in one transaction. Stage changes after registration live in ``_approvals``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from convergence.governance._access import refuse, require
from convergence.governance._artifacts import StoredArtifact, get_artifact_store, sha256_file
from convergence.governance._safeartifact import check_artifact
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import (
    FAMILIES,
    ROLES,
    RUN_STATUSES,
    Dataset,
    ModelVersion,
    PipelineRun,
    Project,
    StageTransition,
)
from convergence.governance._principal import Principal, check_text
from convergence.governance._replay import check_recorded, state_entries
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation

DEFAULT_PROJECT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidInput(f"{kind} name {name!r} is not valid: use letters, digits, '.', '_' or '-' (max 200)")
    return name


def finite_number(value: Any, *, what: str) -> float:
    """``value`` as a float when it is a finite number (not a bool, not NaN or ±inf, not an integer past a
    float's range), else one clear ``InvalidInput``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{what} must be a number, got {str(value)[:40]!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise InvalidInput(f"{what} is too large: it must be a finite number") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{what} is {value}: it must be a finite number")
    return number


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput("metrics must be a JSON object of name → number")
    for key, value in metrics.items():
        finite_number(value, what=f"metric {key!r}")
    return dict(metrics)


def _plain_json(kind: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{kind} must be a JSON object")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{kind} is not plain JSON: {exc}") from exc
    return dict(value)


# --- projects ---------------------------------------------------------------------------------

def ensure_project(*, session: Session, name: str = DEFAULT_PROJECT, principal: Principal) -> Project:
    """The project called ``name``, created (and audited) on first use."""
    _check_name("project", name)
    project = session.execute(select(Project).where(Project.name == name)).scalar_one_or_none()
    if project is None:
        project = Project(name=name, created_at=utcnow(), created_by=principal.name)
        session.add(project)
        session.flush()
        append(session=session, principal=principal, action="project.created", subject=Subject("project", str(project.id)),
               payload={"name": name})
    return project


# --- datasets ---------------------------------------------------------------------------------

def _describe_csv(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = sum(1 for _ in reader)
    return rows, {"format": "csv", "columns": header}


def register_dataset(*, session: Session, principal: Principal, path: Path | None = None, sha256: str | None = None,
                     name: str | None = None, rows: int | None = None, schema: Mapping[str, Any] | None = None,
                     uri: str | None = None, project: str = DEFAULT_PROJECT) -> Dataset:
    """Record a dataset by file (hashed here) or by a known SHA-256; the same content twice is one row."""
    require(session=session, principal=principal, permission="model.register")
    serialize_writes(session=session)
    proj = ensure_project(session=session, name=project, principal=principal)
    size = None
    if path is not None:
        path = Path(path)
        sha256, size = sha256_file(path)
        uri = uri or path.resolve().as_uri()
        name = name or path.name
        if rows is None and schema is None and path.suffix.lower() == ".csv":
            rows, schema = _describe_csv(path)
    elif sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA.match(sha256):
            raise InvalidInput(f"{sha256!r} is neither an existing file nor a 64-hex-digit SHA-256")
        found = session.execute(select(Dataset).where(Dataset.sha256 == sha256)).scalars().first()
        if found is not None:
            return found
        uri = uri or f"sha256:{sha256}"
        name = name or f"dataset-{sha256[:12]}"
    else:
        raise InvalidInput("a dataset needs a file or a SHA-256")
    existing = session.execute(
        select(Dataset).where(Dataset.project_id == proj.id, Dataset.sha256 == sha256)).scalar_one_or_none()
    if existing is not None:
        return existing
    ds = Dataset(project_id=proj.id, name=name, uri=uri, sha256=sha256, rows=rows, size_bytes=size,
                 schema=_plain_json("schema", schema) or None, created_at=utcnow(), created_by=principal.name)
    session.add(ds)
    session.flush()
    append(session=session, principal=principal, action="dataset.registered", subject=Subject("dataset", str(ds.id)),
           payload={"name": name, "sha256": sha256, "rows": rows, "uri": uri, "project": project})
    return ds


def valid_id(value: int, what: str) -> int:
    """Ids are positive 64-bit integers: anything else is simply not there (no driver overflow)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise NotFound(f"no {what} with id {value}")
    return value


def get_dataset(*, session: Session, dataset_id: int) -> Dataset:
    ds = session.get(Dataset, valid_id(dataset_id, "dataset"))
    if ds is None:
        raise NotFound(f"no dataset with id {dataset_id}")
    return ds


# --- pipeline runs ----------------------------------------------------------------------------

def code_version() -> tuple[str, bool]:
    """(git commit, dirty) of the source tree when it is a checkout, else (package version, False)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5, check=True).stdout.strip())
        return f"git:{commit}", dirty
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"convergence=={version('convergence')}", False
        except PackageNotFoundError:
            return "unknown", True


def check_trigger(*, session: Session, principal: Principal, trigger: Mapping[str, Any] | None) -> None:
    """A trigger that names who asked for a run (whose models count as theirs) is written by the system that
    starts it — a Kubernetes Job's service account — never by a person (refused, audited)."""
    if trigger and "requested_by" in trigger and principal.kind != "service":
        refuse(session=session, principal=principal, permission="pipeline.run", rule="trigger-by-system",
               message="a run's trigger is recorded by the system that starts it (a Kubernetes Job, a drift "
                       "retraining); people start runs without one")


def start_run(*, session: Session, principal: Principal, pipeline: str, params: Mapping[str, Any] | None = None,
              dataset_id: int | None = None, project: str = DEFAULT_PROJECT) -> PipelineRun:
    """Record a run before any work starts (the principal needs the registrant role: runs register models)."""
    require(session=session, principal=principal, permission="pipeline.run", subject=Subject("pipeline", pipeline))
    trigger = (params or {}).get("trigger")
    check_trigger(session=session, principal=principal, trigger=trigger if isinstance(trigger, Mapping) else None)
    serialize_writes(session=session)
    proj = ensure_project(session=session, name=project, principal=principal)
    if dataset_id is not None:
        get_dataset(session=session, dataset_id=dataset_id)
    version, dirty = code_version()
    now = utcnow()
    run = PipelineRun(project_id=proj.id, pipeline=pipeline, status="running", params=_plain_json("params", params),
                      code_version=version, code_dirty=dirty, dataset_id=dataset_id, started_at=now,
                      heartbeat_at=now, created_by=principal.name)
    session.add(run)
    session.flush()
    append(session=session, principal=principal, action="run.started", subject=Subject("pipeline_run", str(run.id)),
           payload={"pipeline": pipeline, "code_version": version, "code_dirty": dirty, "dataset_id": dataset_id,
                    "params": run.params})
    return run


def finish_run(*, session: Session, principal: Principal, run_id: int, error: str | None = None,
               status: str | None = None, summary: Mapping[str, Any] | None = None) -> PipelineRun:
    """Close a run: succeeded, failed (with ``error``), gates_failed or stopped; audited."""
    serialize_writes(session=session)
    run = session.get(PipelineRun, run_id)
    if run is None:
        raise NotFound(f"no pipeline run with id {run_id}")
    session.refresh(run)
    if run.status != "running":
        raise PolicyViolation(f"pipeline run {run_id} already ended as {run.status}")
    status = status or ("failed" if error else "succeeded")
    if status not in RUN_STATUSES or status == "running":
        raise InvalidInput(f"a run cannot finish as {status!r}")
    run.status, run.error, run.finished_at = status, error, utcnow()
    append(session=session, principal=principal, action=f"run.{status}", subject=Subject("pipeline_run", str(run.id)),
           payload={"error": error, "seconds": (run.finished_at - run.started_at).total_seconds(),
                    **({"summary": _plain_json("summary", summary)} if summary else {})})
    return run


def heartbeat(*, session: Session, run_id: int) -> None:
    """Mark a running run as alive (no audit event: liveness is not a state change)."""
    run = session.get(PipelineRun, run_id)
    if run is not None and run.status == "running":
        run.heartbeat_at = utcnow()


def fail_stale_runs(*, session: Session, principal: Principal, stale_after_s: float) -> list[int]:
    """Mark failed every running run whose heartbeat (or start) is older than ``stale_after_s``."""
    serialize_writes(session=session)
    cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
    stale = [run for run in session.execute(select(PipelineRun).where(PipelineRun.status == "running")).scalars()
             if (run.heartbeat_at or run.started_at) < cutoff]
    for run in stale:
        last = run.heartbeat_at or run.started_at
        run.status, run.finished_at = "failed", utcnow()
        run.error = f"stale: no heartbeat since {last.isoformat()}; the process running it died"
        append(session=session, principal=principal, action="run.failed", subject=Subject("pipeline_run", str(run.id)),
               payload={"error": run.error, "stale": True})
    return [run.id for run in stale]


def get_run(*, session: Session, run_id: int) -> PipelineRun:
    run = session.get(PipelineRun, valid_id(run_id, "pipeline run"))
    if run is None:
        raise NotFound(f"no pipeline run with id {run_id}")
    return run


def run_to_dict(run: PipelineRun) -> dict[str, Any]:
    return {"id": run.id, "pipeline": run.pipeline, "status": run.status, "code_version": run.code_version,
            "code_dirty": run.code_dirty, "dataset_id": run.dataset_id, "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None, "error": run.error,
            "created_by": run.created_by, "trigger": (run.params or {}).get("trigger")}


def list_runs(*, session: Session, limit: int = 20) -> list[PipelineRun]:
    """Recent pipeline runs, newest first."""
    return list(session.execute(select(PipelineRun).order_by(PipelineRun.id.desc()).limit(limit)).scalars())


# --- model versions ---------------------------------------------------------------------------

def register_model(*, session: Session, principal: Principal, name: str, artifact: Path | StoredArtifact,
                   family: str, role: str,
                   dataset: str | Path | int | None = None, metrics: Mapping[str, Any] | None = None,
                   params: Mapping[str, Any] | None = None, parent_id: int | None = None,
                   run_id: int | None = None, description: str | None = None,
                   project: str = DEFAULT_PROJECT) -> ModelVersion:
    """Register a model file (or an already stored artifact) as a new candidate version of ``name``, with its
    lineage; the principal is its registrant, whom separation of duties keeps away from its approval."""
    require(session=session, principal=principal, permission="model.register", subject=Subject("model", str(name)[:200]))
    _check_name("model", name)
    description = check_text(description, what="description")
    if family not in FAMILIES:
        raise InvalidInput(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    metrics = _check_metrics(metrics)
    params = _plain_json("params", params)
    stored = _store_safe_artifact(artifact, family=family)

    serialize_writes(session=session)
    proj = ensure_project(session=session, name=project, principal=principal)
    parent = _check_parent(session=session, parent_id=parent_id, family=family, role=role)
    ds = _resolve_dataset(session=session, principal=principal, dataset=dataset, project=project)
    if run_id is not None and session.get(PipelineRun, run_id) is None:
        raise NotFound(f"no pipeline run with id {run_id}")
    version = (session.execute(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)).scalar() or 0) + 1
    now = utcnow()
    mv = ModelVersion(project_id=proj.id, name=name, version=version, family=family, role=role, stage="candidate",
                      parent_id=parent.id if parent else None, dataset_id=ds.id if ds else None, run_id=run_id,
                      params=params, metrics=metrics, artifact_uri=stored.uri, artifact_sha256=stored.sha256,
                      artifact_bytes=stored.size, description=description, created_at=now, created_by=principal.name,
                      registrant_id=principal.id)
    session.add(mv)
    session.flush()
    first = StageTransition(model_version_id=mv.id, from_stage=None, to_stage="candidate", actor=principal.name,
                            reason="registered", at=now)
    session.add(first)
    append(session=session, principal=principal, action="model.registered", subject=Subject("model_version", str(mv.id)),
           payload={"name": name, "version": version, "family": family, "role": role,
                    "artifact_sha256": stored.sha256, "artifact_bytes": stored.size,
                    "dataset_sha256": ds.sha256 if ds else None, "parent_id": mv.parent_id, "run_id": run_id,
                    "metrics": metrics, "project": project, "state": state_entries(session, mv, first)}, ts=now)
    return mv


def _store_safe_artifact(artifact: Path | StoredArtifact, *, family: str) -> StoredArtifact:
    """Store a model file and accept it only if the stored bytes are a safe artifact of its family
    (UnsafeArtifact otherwise). Outside the transaction: an orphan blob is harmless."""
    store = get_artifact_store()
    stored = artifact if isinstance(artifact, StoredArtifact) else store.put(Path(artifact))
    check_artifact(store.fetch(stored.uri, sha256=stored.sha256), family=family)  # the bytes that were stored
    return stored


def _check_parent(*, session: Session, parent_id: int | None, family: str, role: str) -> ModelVersion | None:
    if parent_id is None:
        return None
    parent = session.get(ModelVersion, parent_id)
    if parent is None:
        raise NotFound(f"no model version with id {parent_id} (given as --parent)")
    if parent.family != family:
        raise InvalidInput(f"parent {parent_id} is a {parent.family} model; a {family} model cannot descend from it")
    allowed = {"student": {"teacher", "student"}, "quantized": {"student", "teacher"}, "teacher": {"teacher"},
               "compiled": {"student", "teacher"}}[role]
    if parent.role not in allowed:
        raise InvalidInput(f"a {role} cannot have a {parent.role} as parent (allowed: {', '.join(sorted(allowed))})")
    return parent


def _resolve_dataset(*, session: Session, principal: Principal, dataset: str | Path | int | None,
                     project: str) -> Dataset | None:
    if dataset is None:
        return None
    if isinstance(dataset, int):
        return get_dataset(session=session, dataset_id=dataset)
    text = str(dataset)
    if Path(text).is_file():
        return register_dataset(session=session, principal=principal, path=Path(text), project=project)
    if text.isdigit():
        return get_dataset(session=session, dataset_id=int(text))
    if _SHA.match(text.lower()):
        return register_dataset(session=session, principal=principal, sha256=text, project=project)
    raise InvalidInput(f"--dataset {text!r} is not a file, a dataset id or a SHA-256")


def get_model(*, session: Session, version_id: int) -> ModelVersion:
    mv = session.get(ModelVersion, valid_id(version_id, "model version"))
    if mv is None:
        raise NotFound(f"no model version with id {version_id}", hint="`cvg models list` shows the registry")
    return mv


def list_models(*, session: Session, name: str | None = None, stage: str | None = None,
                family: str | None = None, limit: int = 200) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)
    if name:
        query = query.where(ModelVersion.name == name)
    if stage:
        query = query.where(ModelVersion.stage == stage)
    if family:
        query = query.where(ModelVersion.family == family)
    return list(session.execute(query).scalars())


def model_to_dict(mv: ModelVersion) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": mv.id, "name": mv.name, "version": mv.version, "family": mv.family, "role": mv.role,
        "stage": mv.stage, "parent_id": mv.parent_id, "dataset_id": mv.dataset_id, "run_id": mv.run_id,
        "params": mv.params, "metrics": mv.metrics, "artifact_uri": mv.artifact_uri,
        "artifact_sha256": mv.artifact_sha256, "artifact_bytes": mv.artifact_bytes,
        "description": mv.description, "created_at": iso(mv.created_at), "created_by": mv.created_by,
        "registrant_id": mv.registrant_id, "safe_output": mv.safe_output,
    }


def load_artifact(*, session: Session, version_id: int) -> Path:
    """The verified local path of a version's artifact (IntegrityError if the bytes changed, or if the table's
    URI or SHA-256 is not what the audit ledger recorded): how serving and teachers get model bytes."""
    mv = get_model(session=session, version_id=version_id)
    check_recorded(session=session, version=mv)
    return get_artifact_store().fetch(mv.artifact_uri, sha256=mv.artifact_sha256)
