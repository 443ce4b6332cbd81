"""Signed checkpoints published outside the database, and the insider attacks they catch: a consistent rewrite
with the checkpoint table edited too, a truncated tail, a checkpoint signed by the wrong key, a fork."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from convergence import governance as gov
from convergence.governance import AuditEvent, Subject, append, event_hash, ledger
from convergence.governance.auditor import Invalid, verify_checkpoint, verify_note
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, IntegrityError, NotFound
from convergence.platform.settings import get_settings
from tests.people import detached, person

AUDITOR = Path(gov.__file__).with_name("auditor.py")
NOTE = json.loads((Path(__file__).with_name("vectors") / "signed_note.json").read_text())



@pytest.fixture(autouse=True)
def _seed_recorded(adopted: str) -> None:
    """Every test here ends in a full verification, which reconciles the tables with the ledger."""


def _checkpoint() -> dict:  # type: ignore[type-arg]
    auditor = person("auditor")
    with session_scope() as s:
        return ledger.to_dict(ledger.checkpoint(session=s, principal=auditor))


def _verify(**kwargs) -> gov.VerifyResult:  # type: ignore[no-untyped-def]
    with session_scope(write=False) as s:
        return ledger.verify_ledger(session=s, **kwargs)


def _run_auditor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(AUDITOR), *args], capture_output=True, text=True)


def test_signed_notes_reproduce_the_c2sp_known_answer_byte_for_byte() -> None:
    signer = ledger.Ed25519NoteSigner.from_key(NOTE["signer_key_test_only"])
    assert signer.verifier_key() == NOTE["verifier_key"]
    assert ledger.sign_note(NOTE["text"], signer) == NOTE["signed_note"]
    assert verify_note(NOTE["signed_note"], NOTE["verifier_key"]) == NOTE["text"]
    with pytest.raises(Invalid, match="does not verify"):
        verify_note(NOTE["signed_note"].replace("answer", "answers"), NOTE["verifier_key"])
    assert "PRIVATE" not in repr(signer)


def test_a_checkpoint_is_signed_published_recorded_and_sent_to_subscribers(chain: int) -> None:
    admin = person("ada")
    with session_scope() as s:
        gov.subscribe(session=s, principal=admin, url="https://127.0.0.1:9/hook", events=["audit.checkpoint"])
    cp = _checkpoint()
    with session_scope(write=False) as s:
        size = gov.head(session=s)[0] - 1  # all but the checkpoint's own event
    key = ledger.verifier_key()
    origin, signed_size, root = verify_checkpoint(cp["note"], key)
    assert (signed_size, root.hex(), cp["key"]) == (size, cp["root_hash"], key)
    published = Path(cp["anchors"][0])
    assert published.parent == get_settings().home / "checkpoints" and published.read_text() == cp["note"]
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="audit.checkpoint")
        [delivery] = gov.list_deliveries(session=s)
    assert event.payload_obj["note"] == cp["note"] and delivery.event_type == "audit.checkpoint"
    assert cp["note"] in json.loads(delivery.body)["data"]["note"]
    assert _verify().ok


def test_a_consistent_rewrite_with_the_checkpoint_table_edited_is_caught_by_the_published_checkpoint(
        chain: int, unprotect, raw_sql) -> None:
    cp = _checkpoint()
    unprotect("audit_events", "audit_checkpoints")
    raw_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    prev = gov.GENESIS_HASH
    with session_scope(write=False) as s:
        rows = list(s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
    statements = []
    for r in rows:  # the insider rehashes the whole chain consistently
        digest = event_hash(r.seq, gov.format_ts(r.ts), r.actor, r.action, r.subject_type, r.subject_id, r.payload, prev)
        statements.append(f"UPDATE audit_events SET prev_hash = '{prev}', hash = '{digest}' WHERE seq = {r.seq}")
        prev = digest
    raw_sql(*statements)
    with session_scope(write=False) as s:  # ...and the checkpoint table, even re-signed with the stolen key
        root = ledger.root(session=s, size=cp["seq"])
        head = s.execute(select(AuditEvent.hash).where(AuditEvent.seq == cp["seq"])).scalar_one()
    note = ledger.sign_note(ledger.checkpoint_text(ledger.signer().name, cp["seq"], root), ledger.signer())
    raw_sql(f"UPDATE audit_checkpoints SET head_hash = '{head}', root_hash = '{root.hex()}', note = '{note}'")
    with session_scope(write=False) as s:
        assert gov.verify(session=s).ok  # the database alone is fooled
    result = _verify()
    assert (result.ok, result.problem, result.first_bad_seq) == (False, "rewritten", cp["seq"])
    assert cp["anchors"][0] in result.detail


def test_a_truncated_tail_is_caught_by_the_published_checkpoint(chain: int, unprotect, raw_sql) -> None:
    cp = _checkpoint()
    unprotect("audit_events", "audit_checkpoints")
    raw_sql(f"DELETE FROM audit_events WHERE seq > {chain - 3}", "DELETE FROM audit_checkpoints")
    with session_scope(write=False) as s:
        assert gov.verify(session=s).ok
    result = _verify()
    assert (result.ok, result.problem) == (False, "truncated")
    assert f"covers {cp['seq']} events" in result.detail


def test_a_checkpoint_signed_by_another_key_is_refused(chain: int, tmp_path: Path) -> None:
    _checkpoint()
    other = ledger.Ed25519NoteSigner.from_key(ledger.generate_key("mallory.example/log"))
    forged = ledger.sign_note(ledger.checkpoint_text(ledger.signer().name, 3, b"\0" * 32), other)
    (tmp_path / "forged.note").write_text(forged)
    result = _verify(notes=[("forged.note", forged)])
    assert (result.ok, result.problem) == (False, "bad signature") and "mallory.example/log" in result.detail
    wrong_key = _verify(key=other.verifier_key())
    assert (wrong_key.ok, wrong_key.problem) == (False, "bad signature")


def test_a_different_checkpoint_for_a_published_size_is_a_fork(chain: int) -> None:
    cp = _checkpoint()
    anchor = ledger.DirectoryAnchor(Path(cp["anchors"][0]).parent)
    assert anchor.publish(cp["seq"], cp["note"]) == cp["anchors"][0]  # the same one again: fine
    with pytest.raises(IntegrityError, match="the ledger forked"):
        anchor.publish(cp["seq"], cp["note"].replace(cp["note"].split("\n")[2], "A" * 43 + "="))
    assert Path(cp["anchors"][0]).read_text() == cp["note"]


def test_checkpoints_fall_due_by_events_or_by_time(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_LEDGER_CHECKPOINT_EVENTS", "5")
    monkeypatch.setenv("CVG_LEDGER_CHECKPOINT_S", "3600")
    get_settings.cache_clear()
    with session_scope(write=False) as s:
        assert ledger.due(session=s)  # events, never checkpointed
    _checkpoint()
    for i in range(4):
        with session_scope() as s:
            append(session=s, principal=detached("a"), action="x", subject=Subject("t", str(i)))
    auditor, bob = person("auditor"), person("bob")
    with session_scope(write=False) as s:
        assert not ledger.due(session=s)
    with session_scope() as s:
        assert ledger.checkpoint_if_due(session=s, principal=auditor) is None
    with pytest.raises(Forbidden), session_scope() as s:
        ledger.checkpoint_if_due(session=s, principal=bob)  # asking is checkpointing: the auditor's or an admin's
    monkeypatch.setenv("CVG_LEDGER_CHECKPOINT_S", "0.001")
    get_settings.cache_clear()
    with session_scope(write=False) as s:
        assert ledger.due(session=s)
    with session_scope() as s:
        made = ledger.checkpoint_if_due(session=s, principal=auditor)
    assert made is not None and made.note


def test_a_witness_cosigns_and_the_auditor_can_demand_it(chain: int, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    witness_file = tmp_path / "witness.key"
    ledger.write_key_file(witness_file, ledger.generate_key("compliance.example/witness"))
    witness = ledger.Ed25519NoteSigner.from_key(ledger.read_key_file(witness_file)).verifier_key()
    monkeypatch.setenv("CVG_LEDGER_WITNESS_KEY_FILE", str(witness_file))
    get_settings.cache_clear()
    note = tmp_path / "cp.note"
    note.write_text(_checkpoint()["note"])
    key = ledger.verifier_key()
    ok = _run_auditor("checkpoint", str(note), "--key", key, "--witness", witness)
    assert ok.returncode == 0 and "witnessed" in ok.stdout, ok.stdout + ok.stderr
    stranger = ledger.Ed25519NoteSigner.from_key(ledger.generate_key("someone.example/w")).verifier_key()
    refused = _run_auditor("checkpoint", str(note), "--key", key, "--witness", stranger)
    assert refused.returncode == 1 and "not signed by someone.example/w" in refused.stdout


def test_the_auditor_alone_reaches_the_same_verdicts(chain: int, tmp_path: Path, unprotect, raw_sql) -> None:
    """With only the public key and exported files: the export against the checkpoint, an inclusion proof,
    a consistency proof; and each fails once the evidence is altered."""
    first = _checkpoint()
    for i in range(5):
        with session_scope() as s:
            append(session=s, principal=detached("b"), action="later", subject=Subject("t", str(i)))
    second = _checkpoint()
    key = ledger.verifier_key()
    with session_scope(write=False) as s:
        inclusion = ledger.prove(session=s, seq=4)
        consistency = ledger.prove_consistency(session=s, old_size=first["seq"])
        gov.export_events(session=s, out=tmp_path / "audit.jsonl", fmt="jsonl")
    (tmp_path / "inc.json").write_text(json.dumps(inclusion))
    (tmp_path / "con.json").write_text(json.dumps(consistency))
    (tmp_path / "cp.note").write_text(second["note"])
    for args in (["inclusion", str(tmp_path / "inc.json")], ["consistency", str(tmp_path / "con.json")],
                 ["export", str(tmp_path / "audit.jsonl"), "--checkpoint", str(tmp_path / "cp.note")]):
        result = _run_auditor(*args, "--key", key)
        assert result.returncode == 0 and result.stdout.startswith("OK"), result.stdout + result.stderr

    inclusion["event"]["payload"]["i"] = 999  # an edited event
    (tmp_path / "inc.json").write_text(json.dumps(inclusion))
    assert _run_auditor("inclusion", str(tmp_path / "inc.json"), "--key", key).returncode == 1
    consistency["proof"][0] = "00" * 32
    (tmp_path / "con.json").write_text(json.dumps(consistency))
    assert _run_auditor("consistency", str(tmp_path / "con.json"), "--key", key).returncode == 1
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:5]) + "\n")
    truncated = _run_auditor("export", str(tmp_path / "short.jsonl"), "--checkpoint", str(tmp_path / "cp.note"),
                             "--key", key)
    assert truncated.returncode == 1 and "truncated" in truncated.stdout
    other = ledger.Ed25519NoteSigner.from_key(ledger.generate_key("x.example/log")).verifier_key()
    assert _run_auditor("checkpoint", str(tmp_path / "cp.note"), "--key", other).returncode == 1
    assert _run_auditor("checkpoint", str(tmp_path / "missing.note"), "--key", key).returncode == 2


def test_a_key_rotation_is_signed_by_the_old_key_and_followed_by_the_auditor(
        chain: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFound, match="no signing key yet"):  # reading never invents a key
        ledger.verifier_key()
    _checkpoint()
    old = ledger.verifier_key()
    new_file = tmp_path / "new.key"
    ledger.write_key_file(new_file, ledger.generate_key("convergence.local/ledger-2"))
    auditor, admin = person("auditor"), person("ada")
    with pytest.raises(Forbidden, match="rotate the key"), session_scope() as s:
        ledger.rotate_key(session=s, principal=auditor, new_key_file=new_file)  # admins only
    with session_scope() as s:
        data = ledger.rotate_key(session=s, principal=admin, new_key_file=new_file)
    statement = Path(data["anchors"][0])
    assert statement.name.startswith("rotation-") and data["old_key"] == old
    followed = _run_auditor("rotation", str(statement), "--key", old)
    assert followed.returncode == 0 and data["new_key"] in followed.stdout, followed.stdout + followed.stderr
    assert _run_auditor("rotation", str(statement), "--key", data["new_key"]).returncode == 1
    monkeypatch.setenv("CVG_LEDGER_KEY_FILE", str(new_file))
    get_settings.cache_clear()
    cp = _checkpoint()
    assert verify_checkpoint(cp["note"], data["new_key"])[1] == cp["seq"]
    with session_scope(write=False) as s:
        [event] = gov.query_events(session=s, action="audit.key_rotated")
    assert event.payload_obj["statement"] == statement.read_text()
    assert _verify().ok


def test_the_signer_refuses_to_sign_over_a_rewrite_or_a_truncation(chain: int, unprotect, raw_sql) -> None:
    """What a scheduled checkpoint would otherwise do after an insider's consistent rewrite: sign it."""
    cp = _checkpoint()
    unprotect("audit_events", "audit_checkpoints")
    raw_sql("DELETE FROM audit_checkpoints", f"DELETE FROM audit_events WHERE seq > {cp['seq'] - 2}")
    with pytest.raises(IntegrityError, match="truncated; refusing to sign"):
        _checkpoint()
    with session_scope() as s:
        for i in range(4):
            append(session=s, principal=detached("m"), action="x", subject=Subject("t", str(i)))
    with pytest.raises(IntegrityError, match="rewritten; refusing to sign"):
        _checkpoint()
    assert len(list(Path(cp["anchors"][0]).parent.glob("checkpoint-*.note"))) == 1
    assert _verify().problem in ("rewritten", "broken link", "hash mismatch")


def test_every_published_checkpoint_is_held_against_the_database_not_only_the_newest(
        chain: int, unprotect, raw_sql) -> None:
    first = _checkpoint()
    with session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "later"))
    _checkpoint()
    unprotect("audit_events")
    raw_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    prev = gov.GENESIS_HASH
    with session_scope(write=False) as s:
        rows = list(s.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
    statements = []
    for r in rows:
        digest = event_hash(r.seq, gov.format_ts(r.ts), r.actor, r.action, r.subject_type, r.subject_id, r.payload, prev)
        statements.append(f"UPDATE audit_events SET prev_hash = '{prev}', hash = '{digest}' WHERE seq = {r.seq}")
        prev = digest
    raw_sql(*statements)
    result = _verify()
    assert (result.ok, result.problem, result.first_bad_seq) == (False, "rewritten", first["seq"])


def test_something_planted_in_the_anchor_directory_is_one_clear_error(chain: int) -> None:
    import os

    cp = _checkpoint()
    folder = Path(cp["anchors"][0]).parent
    os.mkfifo(folder / "checkpoint-999999999999.note")
    with pytest.raises(IntegrityError, match="not a regular file"):
        _verify()
