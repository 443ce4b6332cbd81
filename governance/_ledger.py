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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from json.encoder import (
    encode_basestring,  # the C string encoder json.dumps(ensure_ascii=False) uses
)
from typing import Any, NamedTuple

from convergence.governance import _merkle
from convergence.governance._models import AuditCheckpoint, AuditEvent, AuditTreeNode
from convergence.governance._principal import Principal
from convergence.platform.db import is_postgres, utcnow
from convergence.platform.errors import InvalidInput, NotFound, Unavailable
from sqlalchemy import select, text
from sqlalchemy.orm import Session

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
    principal: Principal
    action: str
    subject: Subject
    payload: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ts: dt.datetime | None = None


class Event(NamedTuple):
    """A committed (or about-to-commit) link of the chain, as an auditor sees it.

    A NamedTuple rather than a dataclass: batch appends build one per event, and this is 4x cheaper."""

    seq: int
    ts: dt.datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    payload: str  # canonical JSON text, exactly as hashed
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditEvent) -> Event:
        """The event of a stored ``audit_events`` row."""
        return cls(row.seq, row.ts, row.actor, row.action, row.subject_type, row.subject_id, row.payload,
                   row.prev_hash, row.hash)

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

# One encoder for every payload: json.dumps() would build a new one per call with these options.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

def canonical_payload(payload: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: the only form a payload is stored in."""
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"audit payload must be a JSON object, got {type(payload).__name__}")
    try:
        return _CANONICAL.encode(payload)
    except ValueError as exc:
        raise InvalidInput(f"audit payload contains NaN or Infinity, which JSON cannot carry: {exc}") from exc
    except TypeError as exc:
        raise InvalidInput(f"audit payload is not JSON-serialisable: {exc}") from exc


_UTC = dt.UTC


def format_ts(ts: dt.datetime) -> str:
    """``2026-11-24T08:15:00.123456Z``: always UTC, always six fractional digits."""
    if ts.tzinfo is None:
        raise InvalidInput("audit timestamps must be timezone-aware")
    if ts.tzinfo is not _UTC:
        ts = ts.astimezone(_UTC)
    return ts.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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
        raise Unavailable("audit events must be appended in a write session (session_scope(write=True))")
    row = conn.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def _validate(principal: Principal, action: str, subject: Subject) -> None:
    if not isinstance(principal, Principal) or not principal.name:
        raise InvalidInput("an audit event needs an authenticated principal")
    if not action or not subject.type or not str(subject.id):
        raise InvalidInput("an audit event needs an action and a subject")


def _with_principal(principal: Principal, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as hashed: the caller's fields and, under the reserved key ``principal``, who acted and how."""
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"audit payload must be a JSON object, got {type(payload).__name__}")
    if "principal" in payload:
        raise InvalidInput("'principal' is reserved in audit payloads: the ledger records who acted")
    return {**payload, "principal": principal.audit()}


def append(*, session: Session, principal: Principal, action: str, subject: Subject,
           payload: Mapping[str, Any] | None = None, ts: dt.datetime | None = None) -> Event:
    """Append one event inside the caller's transaction; it commits or rolls back with it."""
    return append_many(session=session, events=[EventIn(principal, action, subject, payload or {}, ts)])[0]


def append_many(*, session: Session, events: Iterable[EventIn], chunk: int = 5000) -> list[Event]:
    """Append many events under one head lock with batched inserts (for high-rate producers)."""
    seq, prev = _lock_head(session)
    first = seq
    conn = session.connection()
    sqlite = not is_postgres(conn.engine)
    out: list[Event] = []
    rows: list[tuple[Any, ...]] = []
    for ev in events:
        _validate(ev.principal, ev.action, ev.subject)
        actor = ev.principal.name
        ts = ev.ts or utcnow()
        ts_text = format_ts(ts)
        payload = canonical_payload(_with_principal(ev.principal, ev.payload))
        seq += 1
        sid = str(ev.subject.id)
        digest = event_hash(seq, ts_text, actor, ev.action, ev.subject.type, sid, payload, prev)
        out.append(Event(seq, ts, actor, ev.action, ev.subject.type, sid, payload, prev, digest))
        # Straight to the driver: SQLite gets SQLAlchemy's own text form of the UTC time, PostgreSQL the datetime.
        rows.append((seq, ts_text[:10] + " " + ts_text[11:-1] if sqlite else ts, actor, ev.action,
                     ev.subject.type, sid, payload, prev, digest))
        prev = digest
        if len(rows) >= chunk:
            _insert(conn, rows, sqlite)
            rows = []
    if rows:
        _insert(conn, rows, sqlite)
    if out:
        _merkle.extend(session=session, old_size=first, new_hashes=[e.hash for e in out])
    return out


_INSERT = ("INSERT INTO audit_events (seq, ts, actor, action, subject_type, subject_id, payload, prev_hash, hash) "
           "VALUES ({})")


def _insert(conn: Any, rows: list[tuple[Any, ...]], sqlite: bool) -> None:
    marks = ", ".join(["?" if sqlite else "%s"] * 9)
    conn.exec_driver_sql(_INSERT.format(marks), rows)


# --- reading ----------------------------------------------------------------------------------

def head(*, session: Session) -> tuple[int, str]:
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (0, GENESIS_HASH)


def _stream(session: Session, after_seq: int, batch: int = 20_000) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of rows in seq order straight from the driver: constant memory.

    PostgreSQL renders ``ts`` in the canonical text form itself; SQLite hands back SQLAlchemy's stored
    text ('YYYY-MM-DD HH:MM:SS.ffffff', UTC), which the caller finishes (cheaper in Python than in SQL)."""
    conn = session.connection()
    raw = conn.connection.driver_connection
    columns = "seq, {ts}, actor, action, subject_type, subject_id, payload, prev_hash, hash"
    if is_postgres(conn.engine):
        ts = """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        cur = raw.cursor(name="cvg_audit_stream")  # server-side cursor: PostgreSQL streams too
        cur.itersize = batch
        cur.execute(f"SELECT {columns.format(ts=ts)} FROM audit_events WHERE seq > %s ORDER BY seq", (after_seq,))
    else:
        cur = raw.cursor()
        cur.execute(f"SELECT {columns.format(ts='ts')} FROM audit_events WHERE seq > ? ORDER BY seq", (after_seq,))
    try:
        while rows := cur.fetchmany(batch):
            yield rows
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
    published: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # checkpoints checked outside the db
    disagreement: dict[str, Any] | None = None  # a gating table that differs from the ledger's replay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Published(NamedTuple):
    """A signed checkpoint found outside the database: the tree of its first ``size`` events has ``root``."""

    size: int
    root: bytes
    where: str


class _Quoted(dict[str, str]):
    """JSON-quoted strings, computed on first use."""

    def __missing__(self, key: str) -> str:
        value = self[key] = encode_basestring(key)
        return value


def _written_as(session: Session, row: tuple[Any, ...], ts_text: str) -> int | None:
    """The seq a row was hashed with, when it is not where it stands: nearby seqs first, then the row its
    prev_hash names (a row that moved far)."""
    seq, _ts, actor, action, st, sid, payload, prev_hash, stored = row
    for delta in range(1, 65):
        for candidate in (seq - delta, seq + delta):
            if candidate > 0 and event_hash(candidate, ts_text, actor, action, st, sid, payload, prev_hash) == stored:
                return candidate
    if prev_hash == GENESIS_HASH:
        return 1 if event_hash(1, ts_text, actor, action, st, sid, payload, prev_hash) == stored else None
    before = session.execute(select(AuditEvent.seq).where(AuditEvent.hash == prev_hash).limit(1)).scalar()
    if before is not None and event_hash(before + 1, ts_text, actor, action, st, sid, payload, prev_hash) == stored:
        return before + 1
    return None


def _diagnose_mismatch(session: Session, row: tuple[Any, ...], ts_text: str) -> tuple[int, str, str]:
    """A hash mismatch at seq s: an edited row, or a row that was written as another seq (moved: inserted
    before, deleted before, or reordered — two rows swapped)."""
    seq = row[0]
    written = _written_as(session, row, ts_text)
    if written is None:
        return (seq, "hash mismatch", f"the stored hash of seq {seq} does not match its content (edited row)")
    other = session.execute(text("SELECT seq, ts, actor, action, subject_type, subject_id, payload, prev_hash, hash "
                                 "FROM audit_events WHERE seq = :s"), {"s": written}).first()
    if other is not None and _written_as(session, tuple(other), _canonical_ts(other[1])) == seq:
        first = min(seq, written)
        return (first, "reordered", f"the rows at seq {seq} and {written} were swapped: each was written as the other")
    if written == seq - 1:
        return (seq - 1, "inserted row",
                f"the row now at seq {seq} was written as seq {seq - 1}: a row was inserted at seq {seq - 1}")
    if written == seq + 1:
        return (seq, "deleted row",
                f"the row now at seq {seq} was written as seq {seq + 1}: the original seq {seq} was deleted")
    return (seq, "reordered", f"the row now at seq {seq} was written as seq {written}: rows were reordered")


def _canonical_ts(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return format_ts(value if value.tzinfo else value.replace(tzinfo=_UTC))
    text_ = str(value)
    return text_.replace(" ", "T", 1) + ("" if text_.endswith("Z") else "Z")


class _Tree:
    """The Merkle tree recomputed while the chain streams by: checks every stored node and any signed root."""

    def __init__(self, session: Session, start: int, published: Sequence[Published]) -> None:
        self.range = _merkle.CompactRange(start - 1, _merkle.compact_range(session=session, size=start - 1))
        self.nodes = {(lv, ix): h for lv, ix, h in session.execute(
            select(AuditTreeNode.level, AuditTreeNode.idx, AuditTreeNode.hash))}
        self.roots: dict[int, list[Published]] = {}
        for p in published:
            self.roots.setdefault(p.size, []).append(p)
        self.problem: str | None = None

    def _check(self, level: int, index: int, digest: bytes) -> None:
        if self.problem is None and self.nodes.get((level, index)) != digest.hex():
            self.problem = (f"the Merkle tree's node ({level}, {index}) does not match the events up to seq "
                            f"{self.range.size + 1} (the tree table was edited)")

    def add(self, digest: str) -> str | None:
        """Append the next leaf; a problem when a stored node differs from the events."""
        self.range.append(_merkle.leaf_hash(bytes.fromhex(digest)), self._check, _merkle.CHUNK_LEVEL)
        return self.problem

    def root(self) -> bytes:
        return self.range.root()


def verify(*, session: Session, from_checkpoint: int | None = None, published: Sequence[Published] = (),
           progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Recompute the chain and its Merkle tree in seq order, streaming; name the first bad seq and what is
    wrong, including against the database's checkpoints and any ``published`` (signed, outside) ones."""
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
    published = [p for p in published if p.size >= start]
    tree = _Tree(session, start, published)
    sha256, enc = hashlib.sha256, encode_basestring  # the hot loop: locals, no call we can avoid
    quoted = _Quoted()  # actors, actions and subject types repeat: encode each once
    sqlite = not is_postgres(session.connection().engine)

    def broken(seq: int, problem: str, detail: str, bad: int | None = None) -> VerifyResult:
        return VerifyResult(False, seq - start, start, seq - 1, prev, seq if bad is None else bad, problem, detail)

    for rows in _stream(session, expected - 1):
        for row in rows:
            seq, ts_text, actor, action, st, sid, payload, prev_hash, stored = row
            if sqlite:
                ts_text = ts_text.replace(" ", "T", 1) + "Z"
            if seq != expected:
                return broken(expected, "gap", f"seq {expected} is missing: the next row is seq {seq}")
            if prev_hash != prev:
                # Diagnose a broken link through the content hash first: it can tell insertion from edits.
                if event_hash(seq, ts_text, actor, action, st, sid, payload, prev_hash) != stored:
                    bad, problem, detail = _diagnose_mismatch(session, row, ts_text)
                    return broken(seq, problem, detail, bad)
                return broken(seq, "broken link", f"prev_hash of seq {seq} is not the hash of seq {seq - 1}")
            # prev_hash equals the previous computed hex digest here, so quoting it needs no escaping.
            if sha256(f'[{seq},{enc(ts_text)},{quoted[actor]},{quoted[action]},{quoted[st]},{enc(sid)},'
                      f'{payload},"{prev_hash}"]'.encode()).hexdigest() != stored:
                bad, problem, detail = _diagnose_mismatch(session, row, ts_text)
                return broken(seq, problem, detail, bad)
            if (problem := tree.add(stored)) is not None:
                return broken(seq, "tree mismatch", problem)
            prev = stored
            expected = seq + 1
            if (seq in anchors or seq in tree.roots) and (
                    failed := _at_checkpoint(seq, stored, anchors.get(seq), tree)) is not None:
                return VerifyResult(False, seq - start + 1, start, seq, stored, seq, *failed)
        if progress is not None:
            progress(expected - start)
        if len(quoted) > 10_000:
            quoted.clear()
    return _tail(expected, start, prev, checkpoints, published)


def _at_checkpoint(seq: int, stored: str, cp: AuditCheckpoint | None, tree: _Tree) -> tuple[str, str] | None:
    root = tree.root()
    for p in tree.roots.get(seq, ()):
        if p.root != root:
            return ("rewritten", (f"the first {seq} events no longer have the Merkle root signed in the checkpoint "
                                  f"published at {p.where}: the ledger was rewritten (consistently) after it"))
    if cp is not None and cp.head_hash != stored:
        return ("checkpoint mismatch", f"seq {seq} differs from checkpoint {cp.id} taken {format_ts(cp.created_at)}")
    if cp is not None and cp.root_hash is not None and cp.root_hash != root.hex():
        return ("checkpoint mismatch", f"the first {seq} events do not have the root of checkpoint {cp.id}")
    return None


def _tail(expected: int, start: int, prev: str, checkpoints: Sequence[AuditCheckpoint],
          published: Sequence[Published]) -> VerifyResult:
    checked, end = expected - start, expected - 1
    for p in sorted(published, key=lambda p: -p.size):
        if end < p.size:
            return VerifyResult(False, checked, start, end, prev, expected, "truncated",
                                f"the checkpoint published at {p.where} covers {p.size} events; the database now "
                                f"ends at seq {end}: the tail was truncated")
    last_cp = checkpoints[-1] if checkpoints else None
    if last_cp is not None and end < last_cp.seq:
        return VerifyResult(False, checked, start, end, prev, expected, "truncated",
                            f"checkpoint {last_cp.id} saw the chain reach seq {last_cp.seq}; it now ends at {end}")
    return VerifyResult(True, checked, start, end, prev)


def commit_refusal(*, session: Session, principal: Principal, action: str, subject: Subject,
                   payload: Mapping[str, Any] | None = None) -> None:
    """Record a refused attempt and commit it on its own: the attempted change is rolled back, but the
    refusal itself is evidence (four-eyes violations, missing roles, budget refusals)."""
    session.rollback()
    # The caller may have opened a read session: the refusal's transaction takes the write lock itself.
    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
    append(session=session, principal=principal, action=action, subject=subject, payload=payload)
    session.commit()


def serialize_writes(*, session: Session) -> None:
    """Take the chain-head lock now: services call this before reading what they will change, so
    concurrent writers of the registry queue here instead of racing (e.g. for a version number)."""
    _lock_head(session)
