"""The audit ledger: an append-only, SHA-256 hash-chained log of every state change.

Events are appended inside the caller's transaction, so a change and its record commit together or
not at all. Writers serialize on the chain head (PostgreSQL: a transaction-scoped advisory lock;
SQLite: the write lock taken by ``BEGIN IMMEDIATE``), which keeps ``seq`` gap-free and the chain
unforked across threads and processes. The canonical encoding is documented in the README and
re-implemented by the standalone ``auditor.py`` so anyone can re-verify an export offline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) uses
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from convergence.governance._models import AuditCheckpoint, AuditEvent
from convergence.platform.db import is_postgres, utcnow
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound

GENESIS_HASH = "0" * 64
# Arbitrary constant naming the chain head's advisory lock on PostgreSQL ("cvgaudit" in ASCII, truncated).
_PG_LOCK_KEY = 0x637667617564


@dataclasses.dataclass(frozen=True)
class Subject:
    """What an event is about: ``Subject("model_version", "12")``."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @classmethod
    def parse(cls, value: str) -> Subject:
        kind, sep, ident = value.partition(":")
        if not sep or not kind or not ident:
            raise InvalidInput(f"subject must look like TYPE:ID (e.g. model_version:12), got {value!r}")
        return cls(kind, ident)


@dataclasses.dataclass(frozen=True)
class EventIn:
    actor: str
    action: str
    subject: Subject
    payload: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ts: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Event:
    """A committed (or about-to-commit) link of the chain, as an auditor sees it."""

    seq: int
    ts: dt.datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    payload: str  # canonical JSON text, exactly as hashed
    prev_hash: str
    hash: str

    @property
    def payload_obj(self) -> Any:
        return json.loads(self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": format_ts(self.ts), "actor": self.actor, "action": self.action,
            "subject_type": self.subject_type, "subject_id": self.subject_id,
            "payload": self.payload_obj, "prev_hash": self.prev_hash, "hash": self.hash,
        }


# --- canonical encoding -----------------------------------------------------------------------

def canonical_payload(payload: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the only form a payload is stored in."""
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"audit payload must be a JSON object, got {type(payload).__name__}")
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise InvalidInput(f"audit payload contains NaN or Infinity, which JSON cannot carry: {exc}") from exc
    except TypeError as exc:
        raise InvalidInput(f"audit payload is not JSON-serialisable: {exc}") from exc


def format_ts(ts: dt.datetime) -> str:
    if ts.tzinfo is None:
        raise InvalidInput("audit timestamps must be timezone-aware")
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_bytes(seq: int, ts: str, actor: str, action: str, subject_type: str, subject_id: str,
                payload: str, prev_hash: str) -> bytes:
    """The bytes that are hashed: the same as ``json.dumps([seq, ts, actor, action, subject_type,
    subject_id, payload_object, prev_hash], sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()``, built without re-encoding the already-canonical payload."""
    e = encode_basestring
    return (f"[{seq},{e(ts)},{e(actor)},{e(action)},{e(subject_type)},{e(subject_id)},"
            f"{payload},{e(prev_hash)}]").encode()


def event_hash(seq: int, ts: str, actor: str, action: str, subject_type: str, subject_id: str,
               payload: str, prev_hash: str) -> str:
    return hashlib.sha256(event_bytes(seq, ts, actor, action, subject_type, subject_id, payload, prev_hash)).hexdigest()


# --- appending --------------------------------------------------------------------------------

def _lock_head(session: Session) -> tuple[int, str]:
    """Take the chain-head lock for this transaction and return (last seq, last hash)."""
    conn = session.connection()
    if is_postgres(conn.engine):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    elif conn.get_execution_options().get("sqlite_begin") != "IMMEDIATE":
        # A deferred SQLite transaction that read the head could not later take the write lock.
        raise RuntimeError("audit events must be appended in a write session (session_scope(write=True))")
    row = conn.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def _validate(actor: str, action: str, subject: Subject) -> None:
    if not actor or not actor.strip():
        raise InvalidInput("an audit event needs an actor: pass --as NAME or set CVG_ACTOR")
    if not action or not subject.type or not str(subject.id):
        raise InvalidInput("an audit event needs an action and a subject")


def append(*, session: Session, actor: str, action: str, subject: Subject,
           payload: Mapping[str, Any] | None = None, ts: dt.datetime | None = None) -> Event:
    """Append one event inside the caller's transaction; it commits or rolls back with it."""
    return append_many(session=session, events=[EventIn(actor, action, subject, payload or {}, ts)])[0]


def append_many(*, session: Session, events: Iterable[EventIn], chunk: int = 5000) -> list[Event]:
    """Append many events under one head lock with batched inserts (for high-rate producers)."""
    seq, prev = _lock_head(session)
    out: list[Event] = []
    rows: list[dict[str, Any]] = []
    conn = session.connection()
    for ev in events:
        _validate(ev.actor, ev.action, ev.subject)
        ts = ev.ts or utcnow()
        ts_text = format_ts(ts)
        payload = canonical_payload(ev.payload)
        seq += 1
        digest = event_hash(seq, ts_text, ev.actor, ev.action, ev.subject.type, str(ev.subject.id), payload, prev)
        event = Event(seq, ts, ev.actor, ev.action, ev.subject.type, str(ev.subject.id), payload, prev, digest)
        out.append(event)
        rows.append(dataclasses.asdict(event))
        prev = digest
        if len(rows) >= chunk:
            conn.execute(insert(AuditEvent), rows)
            rows = []
    if rows:
        conn.execute(insert(AuditEvent), rows)
    return out


# --- reading ----------------------------------------------------------------------------------

def head(*, session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def _ts_text(value: Any) -> str:
    # Raw driver values: SQLite hands back SQLAlchemy's stored text, PostgreSQL a datetime.
    if isinstance(value, str):
        return value.replace(" ", "T", 1) + "Z"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return format_ts(value)


def _stream(session: Session, after_seq: int, batch: int = 20_000) -> Iterator[tuple[Any, ...]]:
    """Rows in seq order straight from the driver in fixed-size batches: constant memory."""
    conn = session.connection()
    raw = conn.connection.driver_connection
    sql = ("SELECT seq, ts, actor, action, subject_type, subject_id, payload, prev_hash, hash "
           "FROM audit_events WHERE seq > %s ORDER BY seq")
    if is_postgres(conn.engine):
        cur = raw.cursor(name="cvg_audit_stream")  # server-side cursor: PostgreSQL streams too
        cur.itersize = batch
        cur.execute(sql, (after_seq,))
    else:
        cur = raw.cursor()
        cur.execute(sql.replace("%s", "?"), (after_seq,))
    try:
        while rows := cur.fetchmany(batch):
            yield from rows
    finally:
        cur.close()


@dataclasses.dataclass
class VerifyResult:
    ok: bool
    checked: int
    start_seq: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _diagnose_mismatch(row: tuple[Any, ...], ts_text: str) -> tuple[int, str, str]:
    """A hash mismatch at seq s; if the row hashes as seq s±1 the chain was renumbered around it."""
    seq, _ts, actor, action, st, sid, payload, prev_hash, stored = row
    if event_hash(seq - 1, ts_text, actor, action, st, sid, payload, prev_hash) == stored:
        return (seq - 1, "inserted row",
                f"the row now at seq {seq} was written as seq {seq - 1}: a row was inserted at seq {seq - 1}")
    if event_hash(seq + 1, ts_text, actor, action, st, sid, payload, prev_hash) == stored:
        return (seq, "deleted row",
                f"the row now at seq {seq} was written as seq {seq + 1}: the original seq {seq} was deleted")
    return (seq, "hash mismatch", f"the stored hash of seq {seq} does not match its content (edited row)")


def verify(*, session: Session, from_checkpoint: int | None = None,
           progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Recompute the chain in seq order, streaming; name the first bad seq and what is wrong."""
    expected, prev = 1, GENESIS_HASH
    checkpoints = session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars().all()
    if from_checkpoint is not None:
        cp = session.get(AuditCheckpoint, from_checkpoint)
        if cp is None:
            raise NotFound(f"no audit checkpoint with id {from_checkpoint}")
        anchor = session.execute(select(AuditEvent.hash).where(AuditEvent.seq == cp.seq)).scalar()
        if anchor != cp.head_hash:
            return VerifyResult(False, 0, cp.seq, cp.seq, cp.head_hash, cp.seq, "checkpoint mismatch",
                                f"seq {cp.seq} no longer has the hash recorded by checkpoint {cp.id}")
        expected, prev = cp.seq + 1, cp.head_hash
    start = expected
    anchors = {cp.seq: cp for cp in checkpoints if cp.seq >= start}
    checked = 0
    for row in _stream(session, expected - 1):
        seq, ts, actor, action, st, sid, payload, prev_hash, stored = row
        ts_text = _ts_text(ts)
        if seq != expected:
            return VerifyResult(False, checked, start, expected - 1, prev, expected, "gap",
                                f"seq {expected} is missing: the next row is seq {seq}")
        if event_hash(seq, ts_text, actor, action, st, sid, payload, prev_hash) != stored:
            bad, problem, detail = _diagnose_mismatch(row, ts_text)
            return VerifyResult(False, checked, start, seq - 1, prev, bad, problem, detail)
        if prev_hash != prev:
            return VerifyResult(False, checked, start, seq - 1, prev, seq, "broken link",
                                f"prev_hash of seq {seq} is not the hash of seq {seq - 1}")
        cp = anchors.get(seq)
        if cp is not None and cp.head_hash != stored:
            return VerifyResult(False, checked, start, seq, stored, seq, "checkpoint mismatch",
                                f"seq {seq} differs from checkpoint {cp.id} taken {format_ts(cp.created_at)}")
        prev, expected, checked = stored, expected + 1, checked + 1
        if progress is not None and checked % 100_000 == 0:
            progress(checked)
    last_cp = checkpoints[-1] if checkpoints else None
    if last_cp is not None and expected - 1 < last_cp.seq:
        return VerifyResult(False, checked, start, expected - 1, prev, expected, "truncated",
                            f"checkpoint {last_cp.id} saw the chain reach seq {last_cp.seq}; it now ends at {expected - 1}")
    return VerifyResult(True, checked, start, expected - 1, prev)


def checkpoint(*, session: Session, actor: str) -> AuditCheckpoint:
    """Record the current head (seq, hash, count) for anchoring outside the database."""
    seq, digest = _lock_head(session)
    count = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    if count != seq:
        raise IntegrityError(f"the audit chain has {count} events but its head is seq {seq}",
                             hint="run `cvg audit verify` to find the gap")
    cp = AuditCheckpoint(seq=seq, head_hash=digest, event_count=count, created_at=utcnow(), created_by=actor)
    session.add(cp)
    session.flush()
    append(session=session, actor=actor, action="audit.checkpoint", subject=Subject("audit_checkpoint", str(cp.id)),
           payload={"seq": seq, "head_hash": digest, "event_count": count})
    return cp


def serialize_writes(*, session: Session) -> None:
    """Take the chain-head lock now: services call this before reading what they will change, so
    concurrent writers of the registry queue here instead of racing (e.g. for a version number)."""
    _lock_head(session)
