"""The audit ledger: canonical hashing, tamper detection, database-level immutability, concurrency."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select, text

from convergence.governance import (
    GENESIS_HASH,
    AuditEvent,
    EventIn,
    Subject,
    append,
    append_many,
    ledger,
    event_hash,
    verify,
)
from convergence.platform.db import get_engine, session_scope
from convergence.platform.errors import InvalidInput, NotFound
from tests.governance.conftest import verify_now
from tests.people import detached, person


def _rows():  # type: ignore[no-untyped-def]
    with session_scope(write=False) as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())


# --- the chain as written ---------------------------------------------------------------------

def test_chain_links_and_documented_hash(chain: int) -> None:
    rows = _rows()
    assert [r.seq for r in rows] == list(range(1, chain + 1))
    assert rows[0].prev_hash == GENESIS_HASH
    for before, after in zip(rows, rows[1:]):
        assert after.prev_hash == before.hash
    for r in rows:  # the README's formula, written out independently of the fast path
        fields = [r.seq, r.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), r.actor, r.action, r.subject_type, r.subject_id,
                  json.loads(r.payload), r.prev_hash]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == r.hash
    result = verify_now()
    assert result.ok and result.checked == chain and result.head_seq == chain and result.head_hash == rows[-1].hash


def test_rolled_back_append_leaves_no_event_and_no_gap(db_url: str) -> None:
    with session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "1"))
    with pytest.raises(RuntimeError), session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "2"))
        raise RuntimeError("the change failed")
    with session_scope() as s:
        event = append(session=s, principal=detached("a"), action="x", subject=Subject("t", "3"))
    assert event.seq == 2
    assert [r.subject_id for r in _rows()] == ["1", "3"]
    assert verify_now().ok


@pytest.mark.parametrize("payload,message", [
    ({"x": float("nan")}, "NaN"),
    ({"x": object()}, "not JSON"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_payload_is_refused_before_anything_is_written(db_url: str, payload, message: str) -> None:
    with pytest.raises(InvalidInput, match=message), session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "1"), payload=payload)
    assert _rows() == []


def test_an_event_without_an_authenticated_principal_is_refused(db_url: str) -> None:
    with pytest.raises(InvalidInput, match="authenticated principal"), session_scope() as s:
        append(session=s, principal="alice", action="x", subject=Subject("t", "1"))  # type: ignore[arg-type]


def test_the_payload_key_principal_is_reserved_for_the_ledger(db_url: str) -> None:
    with pytest.raises(InvalidInput, match="reserved"), session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "1"),
               payload={"principal": {"id": 99, "name": "someone else"}})


def test_batch_append_keeps_one_chain(db_url: str) -> None:
    with session_scope() as s:
        append(session=s, principal=detached("a"), action="single", subject=Subject("t", "0"))
    with session_scope() as s:
        events = append_many(session=s, events=(EventIn(detached("svc"), "prediction.logged", Subject("prediction", str(i)),
                                                        {"y": i / 7}) for i in range(12_000)), chunk=5000)
    assert events[0].seq == 2 and events[-1].seq == 12_001
    result = verify_now()
    assert result.ok and result.checked == 12_001


def test_subject_parse() -> None:
    assert Subject.parse("model_version:12") == Subject("model_version", "12")
    with pytest.raises(InvalidInput, match="TYPE:ID"):
        Subject.parse("model_version")


# --- tampering: each case names the exact first bad seq -----------------------------------------

def test_edited_payload_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("""UPDATE audit_events SET payload = '{"i":999}' WHERE seq = 4""")
    result = verify_now()
    assert not result.ok and result.first_bad_seq == 4 and result.problem == "hash mismatch"
    assert result.checked == 3


def test_edited_actor_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5")
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 5, "hash mismatch")


def test_edited_timestamp_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("UPDATE audit_events SET ts = '2001-01-01 00:00:00.000000' WHERE seq = 6")
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 6, "hash mismatch")


def test_deleted_row_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("DELETE FROM audit_events WHERE seq = 7")
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 7, "gap")


def test_deleted_row_with_renumbering_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("DELETE FROM audit_events WHERE seq = 7",
            *[f"UPDATE audit_events SET seq = {s - 1} WHERE seq = {s}" for s in range(8, chain + 1)])
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 7, "deleted row")


def test_swapped_rows_are_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    raw_sql("UPDATE audit_events SET seq = -1 WHERE seq = 3", "UPDATE audit_events SET seq = 3 WHERE seq = 8",
            "UPDATE audit_events SET seq = 8 WHERE seq = -1")
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 3, "reordered")
    assert "seq 3 and 8 were swapped" in result.detail


def _forge_insert_at(position: int, chain: int, raw_sql) -> None:
    """Shift the tail up by one and insert a well-formed row (correct prev_hash and hash) at ``position``."""
    rows = {r.seq: r for r in _rows()}
    raw_sql(*[f"UPDATE audit_events SET seq = {s + 1} WHERE seq = {s}" for s in range(chain, position - 1, -1)])
    prev = rows[position - 1].hash
    ts = "2026-01-01T00:00:00.000000Z"
    payload = '{"forged":true}'
    digest = event_hash(position, ts, "mallory", "model.approved", "model_version", "1", payload, prev)
    raw_sql(f"INSERT INTO audit_events (seq, ts, actor, action, subject_type, subject_id, payload, prev_hash, hash) "
            f"VALUES ({position}, '2026-01-01 00:00:00.000000', 'mallory', 'model.approved', 'model_version', '1', "
            f"'{payload}', '{prev}', '{digest}')")


def test_forged_row_inserted_in_the_middle_is_named(chain: int, unprotect, raw_sql) -> None:
    unprotect()
    _forge_insert_at(6, chain, raw_sql)
    result = verify_now()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 6, "inserted row")


def _rehash_everything(raw_sql) -> None:
    """What a thorough attacker does after forging: recompute every hash so the chain is self-consistent."""
    prev = GENESIS_HASH
    statements = []
    for r in _rows():
        digest = event_hash(r.seq, r.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), r.actor, r.action, r.subject_type,
                            r.subject_id, r.payload, prev)
        statements.append(f"UPDATE audit_events SET prev_hash = '{prev}', hash = 'x{r.seq}' WHERE seq = {r.seq}")
        statements.append(f"UPDATE audit_events SET hash = '{digest}' WHERE seq = {r.seq}")
        prev = digest
    raw_sql(*statements)


def test_fully_rehashed_forgery_is_caught_by_an_earlier_checkpoint(chain: int, unprotect, raw_sql) -> None:
    with session_scope() as s:
        cp = ledger.checkpoint(session=s, principal=person("auditor"))
    assert cp.seq == chain
    unprotect()
    raw_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    _rehash_everything(raw_sql)
    result = verify_now()
    assert not result.ok and result.problem == "checkpoint mismatch" and result.first_bad_seq == chain


def test_truncated_tail_is_caught_by_a_checkpoint(chain: int, unprotect, raw_sql) -> None:
    with session_scope() as s:
        ledger.checkpoint(session=s, principal=person("auditor"))
    unprotect()
    raw_sql(f"DELETE FROM audit_events WHERE seq > {chain - 3}")
    result = verify_now()
    assert (result.ok, result.problem, result.first_bad_seq) == (False, "truncated", chain - 2)


def test_verify_from_checkpoint_skips_the_verified_prefix(chain: int) -> None:
    with session_scope() as s:
        cp = ledger.checkpoint(session=s, principal=person("auditor"))
    with session_scope() as s:
        append(session=s, principal=detached("a"), action="after", subject=Subject("t", "x"))
    with session_scope(write=False) as s:
        result = verify(session=s, from_checkpoint=cp.id)
    # the checkpoint's own audit event and the one after it
    assert result.ok and result.start_seq == chain + 1 and result.checked == 2
    with pytest.raises(NotFound), session_scope(write=False) as s:
        verify(session=s, from_checkpoint=999)


# --- the database itself refuses changes ---------------------------------------------------------

@pytest.mark.parametrize("statement", ["UPDATE audit_events SET actor = 'mallory' WHERE seq = 1",
                                       "DELETE FROM audit_events WHERE seq = 1",
                                       "TRUNCATE audit_events"])
def test_database_refuses_changes_to_events(chain: int, backend: str, raw_sql, statement: str) -> None:
    from sqlalchemy.exc import DBAPIError

    if backend == "sqlite" and statement.startswith("TRUNCATE"):
        statement = "DELETE FROM audit_events"  # SQLite's TRUNCATE is an unqualified DELETE
    with pytest.raises(DBAPIError, match="append-only"):
        raw_sql(statement)
    assert len(_rows()) == chain and verify_now().ok


# --- concurrency ---------------------------------------------------------------------------------

_WORKER = """
import sys
from convergence.governance import Principal, Subject, append
from convergence.platform.db import session_scope
worker = sys.argv[1]
for i in range(int(sys.argv[2])):
    with session_scope() as s:
        append(session=s, principal=Principal(id=1, name="w" + worker, kind="service", issuer="t", subject=worker),
               action="load.append", subject=Subject("worker", worker), payload={"i": i})
"""


@pytest.mark.slow
def test_eight_processes_never_fork_the_chain(db_url: str, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(w), "500"], stderr=subprocess.PIPE, text=True)
             for w in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with session_scope(write=False) as s:
        seqs = [row[0] for row in s.execute(text("SELECT seq FROM audit_events ORDER BY seq"))]
    assert seqs == list(range(1, 4001))
    result = verify_now()
    assert result.ok and result.checked == 4000


def test_threads_never_fork_the_chain(db_url: str) -> None:
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for i in range(60):
                with session_scope() as s:
                    append(session=s, principal=detached(f"t{w}"), action="load", subject=Subject("thread", str(w)), payload={"i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = verify_now()
    assert result.ok and result.checked == 480
    get_engine().dispose()
