"""Registry state bound to the audit chain: the rows that gate behaviour, replayed from event payloads.

Every change of a gating row (``GATED``: model versions, approvals, stage history, kill switches, budgets and
their raises, role grants, service accounts and their keys, webhook subscriptions) is appended with the row's
gating fields after the change under the payload's reserved key ``state``: ``[{"table", "id", "fields"}]``
(or ``{"table", "id", "deleted": true}``). ``replay`` rebuilds the latest state per row from the ledger,
``reconcile`` names the first row a table and the ledger disagree on, and ``check_recorded`` holds one model
version to its record before it is served, promoted or used as a teacher. The tables are projections; the
chain (``_ledger``) is the record. A field added to ``GATED`` needs a migration that records it for existing
rows (``adopt`` covers rows with no record at all, as migration 0009 found them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from convergence.governance._ledger import EventIn, Subject, append_many, format_ts
from convergence.governance._models import AuditEvent, Base, ModelVersion
from convergence.governance._principal import Principal
from convergence.platform.errors import IntegrityError

ADOPTED = "ledger.state_adopted"
# Payloads are canonical JSON (sorted keys, no whitespace): a top-level state list always reads like this.
_STATE_LIKE = '%"state":[%'


@dataclasses.dataclass(frozen=True)
class Gated:
    """One gating table: the fields its events record, the subject an adopted row is filed under, the
    columns recorded only as a SHA-256 (secrets), and which rows gate at all (``only``: column, value)."""

    fields: tuple[str, ...]
    subject: tuple[str, str]  # (subject type, the field holding its id)
    digests: Mapping[str, str] = dataclasses.field(default_factory=dict)  # state field → hashed column
    only: tuple[str, str] | None = None


# The one declaration of what gates behaviour. approvals and stage_transitions are history: insert-only
# (database triggers refuse UPDATE and DELETE, migration 0009).
GATED: dict[str, Gated] = {
    "model_versions": Gated(("name", "version", "family", "role", "stage", "parent_id", "artifact_uri",
                             "artifact_sha256", "registrant_id", "safe_output"), ("model_version", "id")),
    "approvals": Gated(("model_version_id", "decision", "principal_id", "evidence_sha256"),
                       ("model_version", "model_version_id")),
    "stage_transitions": Gated(("model_version_id", "from_stage", "to_stage"), ("model_version", "model_version_id")),
    "kill_switches": Gated(("model_name", "active", "safe_output"), ("model", "model_name")),
    "budgets": Gated(("project_id", "family", "metric", "period_start", "period_end", "hard_limit", "soft_limit"),
                     ("budget", "id")),
    "budget_changes": Gated(("budget_id", "hard_limit", "soft_limit", "status", "requested_by_id", "decided_by_id"),
                            ("budget", "budget_id")),
    "role_grants": Gated(("principal_id", "role", "status", "requested_by_id", "decided_by_id", "revoked_by_id"),
                         ("principal", "principal_id")),
    "principals": Gated(("name", "kind", "disabled_at"), ("principal", "id"), only=("kind", "service")),
    "api_keys": Gated(("key_id", "principal_id", "secret_sha256", "approved_by_id", "expires_at", "revoked_at"),
                      ("principal", "principal_id")),
    "webhook_subscriptions": Gated(("url", "event_types", "format", "active"), ("webhook_subscription", "id"),
                                   digests={"secret_sha256": "secret"}),
    "deployments": Gated(("model_name", "version_id", "production_id", "mode", "percent", "guards", "min_requests",
                          "status"), ("model_version", "version_id")),
}


# --- recording --------------------------------------------------------------------------------

def _json(value: Any, type_: Any) -> Any:
    """A column value as the ledger records it: UTC text for times, floats for float columns."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return format_ts(value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc))
    if isinstance(type_, sa.Numeric):  # Float and Double too; a Python int given to one is still a float
        return float(value)
    if isinstance(type_, sa.Boolean):
        return bool(value)
    return value


def _fields(table: str, columns: Any, row: Any) -> dict[str, Any]:
    """The gating fields of ``row`` (an ORM object or a Core row), ``columns`` giving each column's type."""
    spec = GATED[table]
    out = {name: _json(getattr(row, name), columns[name].type) for name in spec.fields}
    for name, column in spec.digests.items():
        out[name] = hashlib.sha256(getattr(row, column).encode()).hexdigest()
    return out


def _gates(table: str, row: Any) -> bool:
    only = GATED[table].only
    return only is None or getattr(row, only[0]) == only[1]


def row_state(row: Base) -> dict[str, Any]:
    """The state entry for a flushed ORM row: what its event records so the ledger can rebuild it."""
    table = row.__table__
    if table.name not in GATED:
        raise ValueError(f"{table.name} is not a gating table")
    return {"table": table.name, "id": row.id, "fields": _fields(table.name, table.c, row)}


def reflected_state(table: str, columns: Any, row: Any) -> dict[str, Any]:
    """The state entry of a row read through reflection (``columns``: the reflected table's), as migrations see it."""
    return {"table": table, "id": row.id, "fields": _fields(table, columns, row)}


def state_entries(session: Session, *rows: Base) -> list[dict[str, Any]]:
    """Flush, then the state entries of those ``rows`` that gate (a service's event payload's ``state``)."""
    session.flush()
    return [row_state(row) for row in rows if _gates(row.__table__.name, row)]


# --- replaying --------------------------------------------------------------------------------

class Recorded(NamedTuple):
    """A row as the ledger last recorded it: by which event, and its fields (None: recorded as deleted)."""

    seq: int
    fields: dict[str, Any] | None


def _entries(seq: int, payload: str) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """(table, id, fields or None) for each state entry of one event; a malformed entry breaks the record."""
    state = json.loads(payload).get("state")
    if state is None:
        return
    if not isinstance(state, list):
        raise IntegrityError(f"audit event seq {seq} carries a state that is not a list")
    for entry in state:
        ok = (isinstance(entry, dict) and entry.get("table") in GATED and type(entry.get("id")) is int
              and (entry.get("deleted") is True or isinstance(entry.get("fields"), dict)))
        if not ok:
            raise IntegrityError(f"audit event seq {seq} carries a malformed state entry: {str(entry)[:120]}")
        yield entry["table"], entry["id"], None if entry.get("deleted") is True else entry["fields"]


def replay(*, session: Session, batch: int = 5000) -> dict[tuple[str, int], Recorded]:
    """The latest recorded state of every gating row, by (table, id), streamed from the events that carry one."""
    query = (sa.select(AuditEvent.seq, AuditEvent.payload).where(AuditEvent.payload.like(_STATE_LIKE))
             .order_by(AuditEvent.seq).execution_options(yield_per=batch))
    out: dict[tuple[str, int], Recorded] = {}
    for seq, payload in session.execute(query):
        for table, row_id, fields in _entries(seq, payload):
            out[table, row_id] = Recorded(seq, fields)
    return out


# --- reconciling ------------------------------------------------------------------------------

class _Absent:
    """A field the ledger's record does not have (recorded before the field gated)."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """Where a gating table and the ledger's replay differ: a field, a row the ledger never recorded
    (``unrecorded``), or a recorded row the table lacks (``missing``)."""

    table: str
    id: int
    field: str | None
    table_value: Any
    ledger_value: Any
    problem: str  # "field" | "unrecorded" | "missing" | "deleted" (recorded as deleted, yet in the table)
    seq: int | None = None  # the event that recorded the row last

    @property
    def message(self) -> str:
        where = f" (seq {self.seq})" if self.seq else ""
        if self.problem == "unrecorded":
            return f"{self.table} {self.id} is in the table but the audit ledger has no record of it"
        if self.problem == "deleted":
            return f"{self.table} {self.id} is in the table but the audit ledger recorded its deletion{where}"
        if self.problem == "missing":
            return f"{self.table} {self.id} is recorded in the audit ledger{where} but missing from the table"
        return (f"{self.table} {self.id}: {self.field} is {self.table_value!r} in the table but "
                f"{self.ledger_value!r} in the audit ledger{where}")

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a field the ledger lacks reads as null there; the message says absent)."""
        ledger = None if self.ledger_value is _ABSENT else self.ledger_value
        return {"table": self.table, "id": self.id, "field": self.field, "table_value": self.table_value,
                "ledger_value": ledger, "problem": self.problem, "seq": self.seq, "message": self.message}


def _table_rows(session: Session, name: str, table: sa.Table) -> Iterator[Any]:
    spec = GATED[name]
    wanted = {"id", *spec.fields, *spec.digests.values(), *((spec.only[0],) if spec.only else ())}
    query = sa.select(*(c for c in table.c if c.name in wanted)).order_by(table.c.id)
    if spec.only is not None:
        query = query.where(table.c[spec.only[0]] == spec.only[1])
    yield from session.execute(query)


def _differs(ledger: Any, table: Any) -> bool:
    """1 and 1.0 are one value; True and 1 are not."""
    if isinstance(ledger, bool) or isinstance(table, bool):
        return type(ledger) is not type(table) or ledger != table
    return ledger != table


def _compare(name: str, row_id: int, fields: dict[str, Any], recorded: Recorded | None) -> Disagreement | None:
    if recorded is None:
        return Disagreement(name, row_id, None, fields, None, "unrecorded")
    if recorded.fields is None:
        return Disagreement(name, row_id, None, fields, None, "deleted", recorded.seq)
    for field, value in fields.items():
        ledger = recorded.fields.get(field, _ABSENT)
        if _differs(ledger, value):
            return Disagreement(name, row_id, field, value, ledger, "field", recorded.seq)
    return None


def reconcile(*, session: Session) -> Disagreement | None:
    """Compare every gating table with the ledger's replay; the first disagreement, or None when they agree."""
    recorded = replay(session=session)
    by_table: dict[str, set[int]] = {name: set() for name in GATED}
    for name, row_id in recorded:
        by_table[name].add(row_id)
    present = set(sa.inspect(session.connection()).get_table_names())
    for name in GATED:
        table = Base.metadata.tables[name]
        # a migration reconciling at an older revision has no table a later one creates; a table that is gone
        # while the ledger recorded rows of it still disagrees, below ("missing")
        rows = _table_rows(session, name, table) if name in present else iter(())
        for row in rows:
            by_table[name].discard(row.id)
            found = _compare(name, row.id, _fields(name, table.c, row), recorded.get((name, row.id)))
            if found is not None:
                return found
        for row_id in sorted(by_table[name]):
            rec = recorded[name, row_id]
            if rec.fields is not None:  # recorded as deleted and gone: they agree
                return Disagreement(name, row_id, None, None, rec.fields, "missing", rec.seq)
    return None


# --- one model version against its record -----------------------------------------------------

def _latest_record(session: Session, version_id: int, table: str = "model_versions",
                   row_id: int | None = None) -> Recorded | None:
    """The last state of a model version (or of another row filed under it: ``table``, ``row_id``) recorded by
    an event about that version (index on subject, then seq)."""
    query = (sa.select(AuditEvent.seq, AuditEvent.payload)
             .where(AuditEvent.subject_type == "model_version", AuditEvent.subject_id == str(version_id),
                    AuditEvent.payload.like(_STATE_LIKE))
             .order_by(AuditEvent.seq.desc()))
    for seq, payload in session.execute(query):
        for name, entry_id, fields in _entries(seq, payload):
            if name == table and entry_id == (version_id if row_id is None else row_id):
                return Recorded(seq, fields)
    return None


def check_recorded(*, session: Session, version: ModelVersion) -> None:
    """Refuse (IntegrityError) a model version whose row differs from the ledger's last record of it: what
    serving, promotion and teacher loading trust is the chain, not a table an administrator can edit."""
    hint = "the table was changed outside convergence; `cvg audit verify` reconciles every gating table"
    recorded = _latest_record(session, version.id)
    if recorded is None or recorded.fields is None:
        what = "no record" if recorded is None else f"a record of its deletion (seq {recorded.seq})"
        raise IntegrityError(f"model version {version.id} has {what} in the audit ledger", hint=hint)
    found = _compare("model_versions", version.id, row_state(version)["fields"], recorded)
    if found is not None:
        raise IntegrityError(f"model version {version.id}: {found.field} is {found.table_value!r} in the table "
                             f"but {found.ledger_value!r} in the audit ledger (seq {found.seq})", hint=hint)


def check_filed(*, session: Session, row: Base, version_id: int) -> None:
    """``check_recorded`` for a gating row filed under a model version's events (a deployment): IntegrityError
    when the table says something the ledger never recorded."""
    table = row.__table__.name
    hint = "the table was changed outside convergence; `cvg audit verify` reconciles every gating table"
    recorded = _latest_record(session, version_id, table, row.id)
    if recorded is None or recorded.fields is None:
        raise IntegrityError(f"{table} row {row.id} has no record in the audit ledger", hint=hint)
    found = _compare(table, row.id, row_state(row)["fields"], recorded)
    if found is not None:
        raise IntegrityError(f"{table} row {row.id}: {found.field} is {found.table_value!r} in the table but "
                             f"{found.ledger_value!r} in the audit ledger (seq {found.seq})", hint=hint)


# --- rows from before the ledger recorded state -----------------------------------------------

def unrecorded(*, session: Session) -> list[tuple[str, int, dict[str, Any]]]:
    """(table, id, fields) of every gating row the ledger has no state for, read through reflection so it
    works at whatever schema revision a migration runs."""
    recorded = replay(session=session)
    meta, out = sa.MetaData(), []
    present = set(sa.inspect(session.connection()).get_table_names())
    for name in GATED:
        if name not in present:  # a gating table a later revision creates: nothing to adopt yet
            continue
        table = sa.Table(name, meta, autoload_with=session.connection())
        out.extend((name, row.id, _fields(name, table.c, row)) for row in _table_rows(session, name, table)
                   if (name, row.id) not in recorded)
    return out


def adopt(*, session: Session, principal: Principal, reason: str) -> int:
    """Record every gating row the ledger has no state for, one ``ledger.state_adopted`` event each; run once,
    by the migration that made the ledger the record (rows found later are reported, not adopted)."""
    events = []
    for name, row_id, fields in unrecorded(session=session):
        kind, field = GATED[name].subject
        subject = Subject(kind, str(row_id if field == "id" else fields[field]))
        events.append(EventIn(principal, ADOPTED, subject,
                              {"reason": reason, "state": [{"table": name, "id": row_id, "fields": fields}]}))
    return len(append_many(session=session, events=events)) if events else 0
