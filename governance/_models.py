"""The governance data model (SQLAlchemy 2.0): audit chain, registry, lineage, approvals.

Every table here is created by an Alembic revision in ``migrations/``; ``alembic check`` in the
tests proves the two never drift apart. Stages, families and roles are strings guarded by CHECK
constraints rather than native enums, so adding a value is a plain migration on both databases.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import false as sa_false
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from convergence.governance._principal import ACCESS_ROLES, KINDS

FAMILIES = ("trading", "language")
ROLES = ("teacher", "student", "quantized", "compiled")
STAGES = ("candidate", "validated", "approved", "production", "retired", "rejected")
DECISIONS = ("validated", "approved", "rejected")
RUN_STATUSES = ("running", "succeeded", "failed", "gates_failed", "stopped")

# Stable constraint names on both databases, so migrations can drop what they created.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python on both databases (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AuditEvent(Base):
    """One link of the hash chain; append-only (a trigger refuses UPDATE/DELETE on the database)."""

    __tablename__ = "audit_events"
    # Each filter index ends in seq, so "the first N events of this actor in order" is an index range scan,
    # not a sort of everything the actor ever did (cvg audit query --actor over a million events).
    __table_args__ = (
        Index("ix_audit_events_subject", "subject_type", "subject_id", "seq"),
        Index("ix_audit_events_actor", "actor", "seq"),
        Index("ix_audit_events_action", "action", "seq"),
        Index("ix_audit_events_ts", "ts"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(100), nullable=False)
    subject_type: Mapped[str] = mapped_column(String(50), nullable=False)
    subject_id: Mapped[str] = mapped_column(String(200), nullable=False)
    # Stored as the canonical JSON text that was hashed, so verification never depends on how a
    # database re-serialises JSON (PostgreSQL's jsonb reorders keys).
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # Deliberately not indexed: the chain is walked by seq, and a unique index on random 64-hex keys
    # costs a third of the batched append rate (measured in bench/audit_bench.py).
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditCheckpoint(Base):
    """A signed checkpoint of the ledger: the Merkle root of the first ``seq`` events as a C2SP signed note,
    and where it was published outside the database (append-only, like the events)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)  # = the tree size it signs
    head_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    event_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)
    # Null on checkpoints taken before the ledger was signed (revision 0008).
    root_hash: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(String(300))  # the verifier key that signed it
    anchors: Mapped[list[str] | None] = mapped_column(JSON)  # where it was published


class AuditTreeNode(Base):
    """The hash of a perfect subtree of 2**level events (level >= 8) of the ledger's Merkle tree, starting at
    event ``idx * 2**level + 1``; smaller subtrees are recomputed from the events (append-only)."""

    __tablename__ = "audit_tree_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


GRANT_STATUSES = ("pending", "active", "rejected", "revoked")


class PrincipalRow(Base):
    """One identity per (issuer, subject): a person from an OIDC issuer or the OS, a service account, or a
    part of convergence itself. ``name_key`` (NFKC, case-folded) is unique, so "Quinn" is quinn."""

    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_principals_issuer_subject"),
                      CheckConstraint(_in("kind", KINDS), name="kind"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500), nullable=False)
    subject: Mapped[str] = mapped_column(String(500), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    name_key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RoleGrant(Base):
    """A role held by a principal: requested by one admin, active once a second admin approves."""

    __tablename__ = "role_grants"
    __table_args__ = (CheckConstraint(_in("role", ACCESS_ROLES), name="role"),
                      CheckConstraint(_in("status", GRANT_STATUSES), name="status"),
                      Index("ix_role_grants_principal_status", "principal_id", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False)
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A service account's API key: shown once, stored as the SHA-256 of its secret, found by its public id;
    it works only once a second admin (not its requester, not the account) approves it."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False, index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False)
    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))


class ConsoleSession(Base):
    """A signed-in console session: the SHA-256 of its id (only the browser holds the id) and the credential it
    acts with, sealed; every page re-authenticates that credential, so revocation applies at the next click."""

    __tablename__ = "console_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False, index=True)
    method: Mapped[str] = mapped_column(String(20), nullable=False)
    credential: Mapped[str] = mapped_column(Text, nullable=False)
    csrf: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


class ControlSetting(Base):
    """Facts about this control plane that must outlive processes, e.g. that the database is a sandbox."""

    __tablename__ = "control_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "sha256", name="uq_datasets_project_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    uri: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    schema: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class PipelineRun(Base):
    __tablename__ = "pipeline_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), nullable=False, index=True)
    pipeline: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    code_version: Mapped[str] = mapped_column(String(200), nullable=False)
    code_dirty: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Refreshed by the runner while it works; a 'running' row whose heartbeat went stale belonged to a
    # process that died (SIGKILL, OOM, node loss) and is marked failed by the next start.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)

    dataset: Mapped[Dataset | None] = relationship()


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
        CheckConstraint(_in("family", FAMILIES), name="family"),
        CheckConstraint(_in("role", ROLES), name="role"),
        CheckConstraint(_in("stage", STAGES), name="stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    family: Mapped[str] = mapped_column(String(20), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    stage: Mapped[str] = mapped_column(String(20), nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_runs.id"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    artifact_uri: Mapped[str] = mapped_column(Text, nullable=False)
    artifact_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)
    # Separation of duties compares principal ids, never names.
    registrant_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"), index=True)
    # What a killed model answers instead of 503, fixed by its approver (trading: 0.0 = flat).
    safe_output: Mapped[float | None] = mapped_column()

    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])
    dataset: Mapped[Dataset | None] = relationship()
    run: Mapped[PipelineRun | None] = relationship()


class Approval(Base):
    """A second-line decision on a model version: validated, approved or rejected, with reasons."""

    __tablename__ = "approvals"
    __table_args__ = (CheckConstraint(_in("decision", DECISIONS), name="decision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False, index=True)
    decision: Mapped[str] = mapped_column(String(20), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    principal_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"), index=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    evidence_uri: Mapped[str | None] = mapped_column(Text)
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class StageTransition(Base):
    """Every stage change of a model version: the registry's history and 'what ran when'."""

    __tablename__ = "stage_transitions"
    __table_args__ = (Index("ix_stage_transitions_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False, index=True)
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


METRICS = ("cpu_hours", "gpu_hours", "kwh", "gco2e")
CHANGE_STATUSES = ("pending", "applied", "rejected")
SEVERITIES = ("info", "warning", "critical")


class Usage(Base):
    """Compute and energy used by one pipeline step, one run, or a batch of served predictions."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_project_created", "project_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), nullable=False)
    family: Mapped[str | None] = mapped_column(String(20))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_runs.id"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    step: Mapped[str | None] = mapped_column(String(100))
    wall_s: Mapped[float] = mapped_column(nullable=False)
    cpu_s: Mapped[float] = mapped_column(nullable=False)
    gpu_s: Mapped[float] = mapped_column(nullable=False)
    kwh: Mapped[float] = mapped_column(nullable=False)
    gco2e: Mapped[float] = mapped_column(nullable=False)
    peak_mem_mb: Mapped[float | None] = mapped_column()
    predictions: Mapped[int | None] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(40), nullable=False)  # rapl | nvml | … | estimate
    measured: Mapped[bool] = mapped_column(Boolean, nullable=False)
    scope: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class Budget(Base):
    """A hard (and optional soft) limit on one metric for a project, optionally one family, over a period."""

    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("project_id", "family", "metric", "period_start", name="uq_budgets_scope"),
        CheckConstraint(_in("metric", METRICS), name="metric"),
        CheckConstraint("hard_limit > 0", name="hard_positive"),
        CheckConstraint("soft_limit IS NULL OR (soft_limit > 0 AND soft_limit <= hard_limit)", name="soft_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), nullable=False)
    family: Mapped[str] = mapped_column(String(20), nullable=False)  # "*" = every family
    metric: Mapped[str] = mapped_column(String(20), nullable=False)
    period_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    period_end: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    hard_limit: Mapped[float] = mapped_column(nullable=False)
    soft_limit: Mapped[float | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class BudgetChange(Base):
    """A requested raise of a budget; a second person must approve it before it applies."""

    __tablename__ = "budget_changes"
    __table_args__ = (CheckConstraint(_in("status", CHANGE_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"), nullable=False, index=True)
    hard_limit: Mapped[float] = mapped_column(nullable=False)
    soft_limit: Mapped[float | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(200), nullable=False)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Alert(Base):
    """Something a person should know: a budget's soft limit crossed, drift detected; deduplicated by key."""

    __tablename__ = "alerts"
    __table_args__ = (CheckConstraint(_in("severity", SEVERITIES), name="severity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    severity: Mapped[str] = mapped_column(String(20), nullable=False)
    dedupe_key: Mapped[str] = mapped_column(String(300), nullable=False, index=True)
    subject_type: Mapped[str] = mapped_column(String(50), nullable=False)
    subject_id: Mapped[str] = mapped_column(String(200), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    count: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


DELIVERY_STATUSES = ("pending", "delivered", "dead")
WEBHOOK_FORMATS = ("generic", "slack")


class KillSwitch(Base):
    """Whether a model may serve: state in the database so every replica sees it (read by serving, audited)."""

    __tablename__ = "kill_switches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    safe_output: Mapped[float | None] = mapped_column()  # answer this instead of 503 (trading: 0.0 = flat)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class PredictionLog(Base):
    """One served prediction: what went in, what came out, which version, how fast (written by serving).

    Inputs are a JSON list (``features``) or, from the serving hot path, little-endian float32 bytes
    (``features_f32``): encoding 200 floats as JSON costs ~100 µs a row, the bytes almost nothing."""

    __tablename__ = "prediction_log"
    __table_args__ = (Index("ix_prediction_log_version_ts", "model_version_id", "ts"),
                      CheckConstraint("features IS NOT NULL OR features_f32 IS NOT NULL", name="features_present"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(String(36), nullable=False, unique=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    features: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    features_f32: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    output: Mapped[float] = mapped_column(nullable=False)
    latency_ms: Mapped[float | None] = mapped_column()
    # Answered by a kill switch's safe output, not the model: logged for the record, left out of drift.
    killed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=sa_false())
    # Computed by a shadow deployment off the request's path and never returned to the caller.
    shadow: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=sa_false())

    @property
    def vector(self) -> list[float]:
        """The inputs as floats, whichever way they were stored."""
        if self.features_f32 is not None:
            import array

            values = array.array("f")
            values.frombytes(self.features_f32)  # little-endian on every platform we run
            return values.tolist()
        return list(self.features or [])


ROLLOUT_MODES = ("shadow", "canary")
ROLLOUT_STATUSES = ("active", "promoted", "rolled_back")


class Deployment(Base):
    """A newcomer served beside a name's production version: shadow (scored, never answered) or canary (a share
    answers), with the guards that roll it back. At most one is active per name (a partial unique index)."""

    __tablename__ = "deployments"
    __table_args__ = (
        CheckConstraint(_in("mode", ROLLOUT_MODES), name="mode"),
        CheckConstraint(_in("status", ROLLOUT_STATUSES), name="status"),
        CheckConstraint("percent > 0 AND percent <= 100", name="percent"),
        Index("uq_deployments_active_name", "model_name", unique=True, sqlite_where=text("status = 'active'"),
              postgresql_where=text("status = 'active'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False, index=True)
    production_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    mode: Mapped[str] = mapped_column(String(20), nullable=False)
    percent: Mapped[float] = mapped_column(nullable=False)
    guards: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    min_requests: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    started_by_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_by_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"))
    end_reason: Mapped[str | None] = mapped_column(Text)
    measured: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DeploymentTally(Base):
    """What one serving replica measured of a deployment's newcomer so far (replaced on each report): the
    evidence promotion needs, summed over replicas."""

    __tablename__ = "deployment_tallies"
    __table_args__ = (UniqueConstraint("deployment_id", "replica", name="uq_deployment_tallies_replica"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), nullable=False)
    replica: Mapped[str] = mapped_column(String(64), nullable=False)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class ReferenceProfile(Base):
    """What a version's inputs and outputs looked like in training: the baseline drift is measured against."""

    __tablename__ = "reference_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False, unique=True)
    columns: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    # which positions of the logged feature vector each column reads (the output is "output")
    positions: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # per column: quantiles, bins, mean, std
    sample_uri: Mapped[str] = mapped_column(Text, nullable=False)  # parquet sample for Evidently's report
    sample_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class DriftReport(Base):
    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_version_created", "model_version_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), nullable=False)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    window_end: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    rows: Mapped[int] = mapped_column(BigInteger, nullable=False)
    columns: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)  # per column: statistics and verdict
    drift_share: Mapped[float] = mapped_column(nullable=False)
    drifted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    severity: Mapped[str | None] = mapped_column(String(20))
    evidently_html_uri: Mapped[str | None] = mapped_column(Text)
    evidently_json_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"
    __table_args__ = (CheckConstraint(_in("format", WEBHOOK_FORMATS), name="format"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    secret: Mapped[str] = mapped_column(Text, nullable=False)  # sealed (enc:v1:…), migration 0010
    event_types: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    format: Mapped[str] = mapped_column(String(20), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False)


class WebhookDelivery(Base):
    """The transactional outbox: written with the event, delivered (and retried) by a deliverer."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_subscription_event"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"), nullable=False)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)  # the exact bytes sent (and signed) on every attempt
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
