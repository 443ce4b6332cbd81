"""Signed checkpoints of the ledger: made on demand or when due, published outside the database, and the
yardstick ``verify`` holds the database against (a rewrite, a truncation or a fork shows against them).

A checkpoint is the C2SP tlog-checkpoint text ``ORIGIN\\nSIZE\\nbase64(root)\\n`` signed by the ledger's key
(and a witness's, when configured), published to every anchor *before* its row and its ``audit.checkpoint``
event commit: the note covers events already committed, so a failed commit leaves a true statement behind.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from convergence.governance import _anchors, _merkle
from convergence.governance._access import require
from convergence.governance._ledger import (
    Event,
    Published,
    Subject,
    VerifyResult,
    _lock_head,
    append,
    head,
    verify,
)
from convergence.governance._models import AuditCheckpoint, AuditEvent
from convergence.governance._notes import (
    Ed25519NoteSigner,
    NoteSigner,
    generate_key,
    read_key_file,
    sign_note,
    write_key_file,
)
from convergence.governance._principal import Principal
from convergence.governance._replay import reconcile
from convergence.governance.auditor import Invalid, verify_checkpoint, verify_rotation
from convergence.platform.db import utcnow
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound
from convergence.platform.settings import Settings, get_settings


@functools.lru_cache(maxsize=4)
def _signer_from(text: str) -> Ed25519NoteSigner:
    return Ed25519NoteSigner.from_key(text)


def signer(settings: Settings | None = None, *, create: bool = False) -> NoteSigner:
    """The ledger's signing key: CVG_LEDGER_KEY, else CVG_LEDGER_KEY_FILE, else HOME/ledger.key (made by the
    first checkpoint, ``create``; reading it elsewhere never invents a key that signed nothing)."""
    settings = settings or get_settings()
    if settings.ledger_key is not None:
        return _signer_from(settings.ledger_key.get_secret_value())
    path = settings.ledger_key_file or settings.home / "ledger.key"
    if settings.ledger_key_file is None and not path.exists():
        if not create:
            raise NotFound("this ledger has no signing key yet: the first `cvg audit checkpoint` makes one in "
                           f"{path} (or set CVG_LEDGER_KEY / CVG_LEDGER_KEY_FILE)")
        try:
            write_key_file(path, generate_key(f"convergence.local/ledger-{secrets.token_hex(4)}"))
        except InvalidInput:  # another process made it first
            pass
    return _signer_from(read_key_file(path))


def witness(settings: Settings | None = None) -> NoteSigner | None:
    settings = settings or get_settings()
    path = settings.ledger_witness_key_file
    return _signer_from(read_key_file(path)) if path else None


def verifier_key() -> str:
    """What auditors hold to check checkpoints (``cvg audit pubkey``)."""
    return signer().verifier_key()


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def checkpoint(*, session: Session, principal: Principal) -> AuditCheckpoint:
    """Sign the tree of every committed event, publish it to the anchors, then record it (row + event)."""
    require(session=session, principal=principal, permission="audit.checkpoint")
    return _make(session, principal)


def checkpoint_if_due(*, session: Session, principal: Principal) -> AuditCheckpoint | None:
    """A checkpoint when one is ``due`` (what the chart's CronJob runs), else None."""
    require(session=session, principal=principal, permission="audit.checkpoint")
    return _make(session, principal) if due(session=session) else None


def _make(session: Session, principal: Principal) -> AuditCheckpoint:
    size, digest = _lock_head(session)
    count = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    if count != size:
        raise IntegrityError(f"the audit chain has {count} events but its head is seq {size}",
                             hint="run `cvg audit verify` to find the gap")
    key = signer(create=True)
    root = _merkle.root(session=session, size=size)
    _check_published(session=session, size=size)
    extra = [w] if (w := witness()) else []
    note = sign_note(checkpoint_text(key.name, size, root), key, *extra)
    where = [anchor.publish(size, note) for anchor in _anchors.configured(get_settings())]
    cp = AuditCheckpoint(seq=size, head_hash=digest, event_count=count, created_at=utcnow(), created_by=principal.name,
                         root_hash=root.hex(), note=note, key=key.verifier_key(), anchors=where)
    session.add(cp)
    session.flush()
    data = {"seq": size, "head_hash": digest, "event_count": count, "root_hash": root.hex(), "note": note,
            "key": cp.key, "anchors": where}
    append(session=session, principal=principal, action="audit.checkpoint",
           subject=Subject("audit_checkpoint", str(cp.id)), payload=data)
    from convergence.governance._webhooks import enqueue

    enqueue(session=session, event_type="audit.checkpoint", data={"id": cp.id, **data})  # outsiders keep copies
    return cp


ROTATION_HEADER = "convergence ledger key rotation"


def rotate_key(*, session: Session, principal: Principal, new_key_file: Path) -> dict[str, Any]:
    """Hand signing over to a new key: a statement naming old and new verifier keys, signed by the *old* key,
    published to the anchors and recorded as ``audit.key_rotated``; then point CVG_LEDGER_KEY(_FILE) at it."""
    require(session=session, principal=principal, permission="audit.rotate_key")
    old, new = signer(), Ed25519NoteSigner.from_key(read_key_file(new_key_file))
    if new.verifier_key() == old.verifier_key():
        raise InvalidInput("the new key is the key in use")
    size, _ = _lock_head(session)
    statement = sign_note(f"{ROTATION_HEADER}\n{old.verifier_key()}\n{new.verifier_key()}\n{size}\n", old)
    where = [a.publish(size, statement, kind="rotation") for a in _anchors.configured(get_settings())]
    data = {"old_key": old.verifier_key(), "new_key": new.verifier_key(), "tree_size": size, "statement": statement,
            "anchors": where}
    append(session=session, principal=principal, action="audit.key_rotated",
           subject=Subject("ledger_key", new.verifier_key().split("+")[1]), payload=data)
    return data


def trusted_keys(*, session: Session, key: str | None = None) -> list[str]:
    """The verifier keys published checkpoints may carry: ``key`` (default: this ledger's) and every key it
    took over from through a rotation statement signed by the older key."""
    trusted = [key or signer().verifier_key()]
    rotations = session.execute(select(AuditEvent.payload).where(AuditEvent.action == "audit.key_rotated")
                                .order_by(AuditEvent.seq.desc())).scalars().all()
    for payload in rotations:
        data = json.loads(payload)
        old, new, statement = data.get("old_key"), data.get("new_key"), data.get("statement", "")
        try:
            if new in trusted and old not in trusted and verify_rotation(statement, old) == new:
                trusted.append(old)
        except (Invalid, ValueError):
            continue
    return trusted


def _verified(note: str, keys: list[str]) -> tuple[str, int, bytes]:
    problem: Exception | None = None
    for vkey in keys:
        try:
            return verify_checkpoint(note, vkey)
        except (Invalid, ValueError) as exc:
            problem = problem or exc
    raise Invalid(str(problem))


def _check_published(*, session: Session, size: int) -> None:
    """Never sign a history that contradicts a checkpoint already published: the newest one in each anchor must
    be a prefix of the tree about to be signed (else a rewrite or truncation would be signed over)."""
    keys = trusted_keys(session=session)
    for found in (a.latest() for a in _anchors.configured(get_settings())):
        if not found:
            continue
        where, note = found
        try:
            _origin, old_size, old_root = _verified(note, keys)
        except Invalid as exc:
            raise IntegrityError(f"the checkpoint published at {where} does not verify ({exc}): refusing to sign",
                                 hint="run `cvg audit verify`") from None
        if old_size > size:
            raise IntegrityError(f"the checkpoint published at {where} covers {old_size} events but the ledger has "
                                 f"{size}: the tail was truncated; refusing to sign", hint="run `cvg audit verify`")
        if _merkle.root(session=session, size=old_size) != old_root:
            raise IntegrityError(f"the first {old_size} events no longer have the root published at {where}: the "
                                 "ledger was rewritten; refusing to sign", hint="run `cvg audit verify`")


def due(*, session: Session, settings: Settings | None = None) -> bool:
    """Whether enough events (CVG_LEDGER_CHECKPOINT_EVENTS) or time (…_S, with new events) passed since the last."""
    settings = settings or get_settings()
    size, _ = head(session=session)
    last = latest(session=session)
    if last is None:
        return size > 0
    new = size - last.seq - 1  # the last checkpoint's own event does not count
    age = (utcnow() - last.created_at).total_seconds()
    return new >= settings.ledger_checkpoint_events or (new > 0 and age >= settings.ledger_checkpoint_s)


def latest(*, session: Session, signed: bool = False) -> AuditCheckpoint | None:
    query = select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc()).limit(1)
    if signed:
        query = query.where(AuditCheckpoint.note.is_not(None))
    return session.execute(query).scalars().first()


def to_dict(cp: AuditCheckpoint) -> dict[str, Any]:
    return {"id": cp.id, "seq": cp.seq, "tree_size": cp.seq, "head_hash": cp.head_hash, "event_count": cp.event_count,
            "root_hash": cp.root_hash, "note": cp.note, "key": cp.key, "anchors": cp.anchors or [],
            "created_at": cp.created_at.isoformat(), "created_by": cp.created_by}


# --- proofs against the latest signed checkpoint ----------------------------------------------------

def _signed(session: Session, size: int | None) -> AuditCheckpoint:
    query = select(AuditCheckpoint).where(AuditCheckpoint.note.is_not(None))
    query = query.where(AuditCheckpoint.seq == size) if size else query
    cp = session.execute(query.order_by(AuditCheckpoint.seq.desc()).limit(1)).scalars().first()
    if cp is None:
        raise NotFound(f"no signed checkpoint of {size} events" if size else "no signed checkpoint yet",
                       hint="run `cvg audit checkpoint`")
    return cp


def prove(*, session: Session, seq: int, size: int | None = None) -> dict[str, Any]:
    """An inclusion proof of event ``seq`` against the latest signed checkpoint (or the one of ``size``)."""
    cp = _signed(session, size)
    if seq > cp.seq:
        raise NotFound(f"seq {seq} is newer than the latest signed checkpoint ({cp.seq} events)",
                       hint="run `cvg audit checkpoint` first")
    proof = _merkle.inclusion(session=session, seq=seq, size=cp.seq)
    event = session.get(AuditEvent, seq)
    return {**proof.to_dict(), "checkpoint": cp.note, "event": Event.of(event).to_dict() if event else None}


def prove_consistency(*, session: Session, old_size: int, new_size: int | None = None) -> dict[str, Any]:
    """A consistency proof between the signed checkpoints of ``old_size`` and ``new_size`` (default: the latest)."""
    old, new = _signed(session, old_size), _signed(session, new_size)
    if old.seq > new.seq:
        raise InvalidInput(f"the old checkpoint ({old.seq} events) is newer than the new one ({new.seq})")
    proof = _merkle.consistency(session=session, old_size=old.seq, new_size=new.seq)
    return {**proof.to_dict(), "old_checkpoint": old.note, "new_checkpoint": new.note}


# --- verifying the database against published checkpoints --------------------------------------------

@dataclasses.dataclass
class PublishedCheck:
    where: str
    size: int
    signed: bool
    problem: str | None = None


def verify_ledger(*, session: Session, notes: list[tuple[str, str]] | None = None, key: str | None = None,
                  from_checkpoint: int | None = None) -> VerifyResult:
    """The chain, the tree, the database's checkpoints, every checkpoint published in the anchors plus the given
    ``notes`` (where, text), signed by ``key`` (default: this ledger's) or a key it rotated from; then every
    gating table against the ledger's replay (the first disagreement: table, id, field, both values)."""
    found = [n for a in _anchors.configured(get_settings()) for n in a.notes()] + list(notes or [])
    published, checks = [], []
    keys = trusted_keys(session=session, key=key) if found else []
    for where, note in found:
        try:
            _origin, size, root = _verified(note, keys)
        except Invalid as exc:
            checks.append(PublishedCheck(where, 0, False, str(exc)))
            result = VerifyResult(False, 0, 0, 0, "", None, "bad signature",
                                  f"the checkpoint at {where} does not verify with {keys[0]}: {exc}")
            result.published = [dataclasses.asdict(c) for c in checks]
            return result
        published.append(Published(size, root, where))
        checks.append(PublishedCheck(where, size, True))
    result = verify(session=session, from_checkpoint=from_checkpoint, published=published)
    result.published = [dataclasses.asdict(c) for c in checks]
    if result.ok and (differs := reconcile(session=session)) is not None:
        result.ok, result.problem, result.detail = False, "table differs from ledger", differs.message
        result.disagreement = differs.to_dict()
    return result


def anchor_locations() -> list[str]:
    """Where checkpoints go (for ``cvg doctor`` and the API)."""
    return [a.location for a in _anchors.configured(get_settings())]
