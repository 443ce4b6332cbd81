"""Registry state bound to the audit chain, on SQLite and PostgreSQL: every gating change replays from the
ledger, reconcile names the first row a table and the ledger disagree on, serving and promotion trust the
ledger's record rather than the table, and the history tables refuse UPDATE and DELETE in the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from convergence import governance as gov
from convergence.governance import identity
from convergence.governance._models import RoleGrant
from convergence.governance._replay import GATED, adopt
from convergence.platform.db import session_scope, utcnow
from convergence.platform.errors import IntegrityError
from convergence.serving import check_servable
from tests.people import person
from tests.artifacts import synthetic_artifact

# Everyone these tests act as: seeded without events (tests/people.py), so adopted into the ledger first.
PEOPLE = ("bob", "carol", "alice", "ops", "risk", "fin", "cfo", "ada", "sam", "max")


@pytest.fixture
def recorded(db_url: str) -> str:
    """A database whose seeded people are in the ledger, as migration 0009 adopts an existing database's rows."""
    for name in PEOPLE:
        person(name)
    with session_scope() as s:
        adopted = adopt(session=s, principal=identity.system_principal(session=s, name="test-seed"), reason="seed")
    assert adopted > 0
    assert _reconcile() is None
    return db_url


def _reconcile() -> gov.Disagreement | None:
    with session_scope(write=False) as s:
        return gov.reconcile(session=s)


def _register(model_file: Path, name: str, role: str = "student", parent_id: int | None = None) -> int:
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("bob"), name=name, artifact=model_file,
                                  family="trading", role=role, parent_id=parent_id).id


def _approved(model_file: Path, evidence_file: Path, name: str = "alpha", **kwargs: object) -> int:
    vid = _register(model_file, name, **kwargs)  # type: ignore[arg-type]
    with session_scope() as s:
        gov.validate(session=s, version_id=vid, principal=person("carol"), evidence=evidence_file)
    with session_scope() as s:
        gov.approve(session=s, version_id=vid, principal=person("alice"), reason="policy met", safe_output=0.0)
    return vid


def _promote(vid: int) -> None:
    with session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=person("ops"))


def _found(d: gov.Disagreement | None) -> tuple[object, ...]:
    assert d is not None, "reconcile found nothing"
    return d.table, d.id, d.field, d.table_value, d.ledger_value


# --- a whole lifecycle replays to exactly what the tables hold -----------------------------------

def _models_lifecycle(model_file: Path, evidence_file: Path) -> tuple[int, int]:
    teacher = _register(model_file, "teacher", role="teacher")
    first = _approved(model_file, evidence_file, "student", parent_id=teacher)
    second = _approved(model_file, evidence_file, "student", parent_id=teacher)
    with session_scope() as s:
        gov.validate(session=s, version_id=teacher, principal=person("carol"), evidence=evidence_file)
    with session_scope() as s:
        gov.reject(session=s, version_id=teacher, principal=person("alice"), reason="too slow")
    _promote(first)
    _promote(second)  # retires the first
    with session_scope() as s:
        gov.rollback(session=s, name="student", principal=person("ops"), reason="bad fills")
    with session_scope() as s:
        gov.kill(session=s, name="student", reason="runaway", principal=person("risk"), safe_output=True)
    with session_scope() as s:
        gov.resume(session=s, name="student", principal=person("risk"))
    third = _approved(model_file, evidence_file, "student", parent_id=teacher)
    with session_scope() as s:  # a canary, recorded with its state, then rolled back
        gov.rollout.deploy(session=s, principal=person("ops"), version_id=third, mode="canary", percent=5)
    with session_scope() as s:
        gov.rollout.rollback(session=s, principal=person("ops"), name="student", reason="enough")
    return first, second


def _admin_lifecycle() -> None:
    ada, sam, max_, bob = person("ada"), person("sam"), person("max"), person("bob")
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project="default", metric="kwh", period="2026", hard=10)
    with session_scope() as s:
        gov.set_budget(session=s, principal=person("fin"), project="default", metric="kwh", period="2026", hard=5,
                       soft=2)
    with session_scope() as s:
        _, change = gov.set_budget(session=s, principal=person("fin"), project="default", metric="kwh",
                                   period="2026", hard=20)
        assert change is not None
    with session_scope() as s:
        gov.decide_change(session=s, principal=person("cfo"), change_id=change.id, approve=True)
    with session_scope() as s:
        grant = identity.request_grant(session=s, principal=ada, grantee=f"#{bob.id}", role="auditor")
    with session_scope() as s:
        identity.decide_grant(session=s, principal=sam, grant_id=grant.id, approve=True)
    with session_scope() as s:
        identity.revoke_grant(session=s, principal=sam, grantee=f"#{bob.id}", role="auditor")
    with session_scope() as s:
        sub = gov.subscribe(session=s, principal=ada, url="http://127.0.0.1:9/hooks", events=["drift.alert"])
    with session_scope() as s:
        gov.unsubscribe(session=s, principal=ada, subscription_id=sub.id)
    with session_scope() as s:
        identity.create_service_account(session=s, principal=ada, name="robot")
    with session_scope() as s:
        key, _ = identity.create_api_key(session=s, principal=ada, account="robot")
    with session_scope() as s:
        identity.approve_api_key(session=s, principal=sam, key_id=key.key_id)
    with session_scope() as s:
        identity.revoke_api_key(session=s, principal=max_, key_id=key.key_id)


def test_a_whole_lifecycle_replays_to_the_tables(recorded: str, model_file: Path, evidence_file: Path) -> None:
    first, second = _models_lifecycle(model_file, evidence_file)
    _admin_lifecycle()
    assert _reconcile() is None
    with session_scope(write=False) as s:
        state = gov.replay(session=s)
        versions = {vid: gov.get_model(session=s, version_id=vid).stage for vid in (first, second)}
    assert {table for table, _ in state} == set(GATED)  # every gating table was recorded by its service
    assert versions == {first: "production", second: "retired"}
    assert state["model_versions", first].fields["stage"] == "production"
    assert state["model_versions", second].fields["stage"] == "retired"
    # the rolled-back version serves: its record is found under its own subject
    served = check_servable(family="trading", name="student", prefer_int8=False)
    assert served["version_id"] == first


def test_secrets_are_recorded_only_as_their_sha256(recorded: str) -> None:
    import hashlib

    with session_scope() as s:
        sub = gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/h", events=["*"],
                            secret="s3cret-value")
    with session_scope(write=False) as s:
        events = gov.query_events(session=s, action="webhook.subscribed")
    assert "s3cret-value" not in events[-1].payload
    fields = events[-1].payload_obj["state"][0]["fields"]
    with session_scope(write=False) as s:
        sealed = s.get(gov.WebhookSubscription, sub.id).secret
    # the sealed value's digest: the ledger holds nothing a weak secret could be guessed back from
    assert fields["secret_sha256"] == hashlib.sha256(sealed.encode()).hexdigest()
    assert fields["secret_sha256"] != hashlib.sha256(b"s3cret-value").hexdigest()
    assert _reconcile() is None and sub.id


# --- insider attacks: the table edited behind convergence's back ---------------------------------

def test_a_swapped_artifact_hash_is_named_and_refused(recorded: str, raw_sql, model_file: Path,
                                                      evidence_file: Path) -> None:
    vid = _approved(model_file, evidence_file)
    with session_scope(write=False) as s:
        original = gov.get_model(session=s, version_id=vid).artifact_sha256
    raw_sql(f"UPDATE model_versions SET artifact_sha256 = '{'b' * 64}' WHERE id = {vid}")
    assert _found(_reconcile()) == ("model_versions", vid, "artifact_sha256", "b" * 64, original)
    with pytest.raises(IntegrityError, match=f"artifact_sha256 is '{'b' * 64}' in the table but '{original}'"):
        check_servable(family="trading", version_id=vid, prefer_int8=False)
    with pytest.raises(IntegrityError, match="artifact_sha256"), session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=person("ops"))


def test_a_version_pointed_at_another_real_file_does_not_serve(recorded: str, raw_sql, model_file: Path,
                                                              evidence_file: Path, tmp_path: Path) -> None:
    """The attack that once passed: another file, stored, with its own correct SHA-256 in the table."""
    vid = _approved(model_file, evidence_file)
    _promote(vid)
    other = synthetic_artifact(tmp_path / "other.safetensors", tag="an attacker's weights")
    stored = gov.get_artifact_store().put(other)
    raw_sql(f"UPDATE model_versions SET artifact_uri = '{stored.uri}', artifact_sha256 = '{stored.sha256}' "
            f"WHERE id = {vid}")
    assert _found(_reconcile())[:3] == ("model_versions", vid, "artifact_uri")
    with pytest.raises(IntegrityError, match="artifact_uri"):
        check_servable(family="trading", name="alpha", prefer_int8=False)
    with pytest.raises(IntegrityError, match="in the audit ledger"), session_scope(write=False) as s:
        gov.load_artifact(session=s, version_id=vid)  # how anything else (a teacher) gets the bytes


def test_a_candidate_set_to_approved_in_the_table_is_named_and_refused(recorded: str, raw_sql,
                                                                        model_file: Path) -> None:
    vid = _register(model_file, "alpha")
    raw_sql(f"UPDATE model_versions SET stage = 'approved' WHERE id = {vid}")
    assert _found(_reconcile()) == ("model_versions", vid, "stage", "approved", "candidate")
    with pytest.raises(IntegrityError, match="stage is 'approved' in the table but 'candidate'"):
        check_servable(family="trading", version_id=vid, prefer_int8=False)
    with pytest.raises(IntegrityError, match="stage"), session_scope() as s:
        gov.promote(session=s, version_id=vid, principal=person("ops"))


def test_a_kill_switch_flipped_off_in_the_table_is_named(recorded: str, raw_sql, model_file: Path,
                                                         evidence_file: Path) -> None:
    _promote(_approved(model_file, evidence_file))
    with session_scope() as s:
        switch_id = gov.kill(session=s, name="alpha", reason="runaway", principal=person("risk")).id
    raw_sql(f"UPDATE kill_switches SET active = FALSE WHERE id = {switch_id}")
    assert _found(_reconcile()) == ("kill_switches", switch_id, "active", False, True)


def test_an_edited_grant_status_is_named(recorded: str, raw_sql) -> None:
    with session_scope() as s:
        grant = identity.request_grant(session=s, principal=person("ada"), grantee=f"#{person('bob').id}",
                                       role="admin")
    raw_sql(f"UPDATE role_grants SET status = 'active' WHERE id = {grant.id}")
    assert _found(_reconcile()) == ("role_grants", grant.id, "status", "active", "pending")


def test_a_row_inserted_without_an_event_is_named(recorded: str) -> None:
    bob = person("bob")
    with session_scope() as s:
        row = RoleGrant(principal_id=bob.id, role="admin", status="active", requested_by_id=bob.id,
                        requested_at=utcnow(), decided_by_id=bob.id, decided_at=utcnow())
        s.add(row)
    found = _reconcile()
    assert found is not None and (found.table, found.id, found.problem) == ("role_grants", row.id, "unrecorded")
    assert found.table_value["status"] == "active" and found.ledger_value is None
    assert "no record" in found.message


def test_a_deleted_row_is_named_as_missing(recorded: str, raw_sql) -> None:
    with session_scope() as s:
        sub = gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/h", events=["*"])
    raw_sql(f"DELETE FROM webhook_subscriptions WHERE id = {sub.id}")
    found = _reconcile()
    assert found is not None and (found.table, found.id, found.problem) == ("webhook_subscriptions", sub.id, "missing")
    assert found.ledger_value["url"] == "http://127.0.0.1:9/h"


@pytest.mark.parametrize("statement", [
    "UPDATE approvals SET decision = 'approved'",
    "DELETE FROM approvals",
    "UPDATE stage_transitions SET to_stage = 'production'",
    "DELETE FROM stage_transitions",
])
def test_history_tables_refuse_update_and_delete(recorded: str, raw_sql, model_file: Path, evidence_file: Path,
                                                 statement: str) -> None:
    _approved(model_file, evidence_file)
    with pytest.raises(DBAPIError, match="append-only"):
        raw_sql(statement)
    with session_scope(write=False) as s:
        assert s.execute(select(gov.Approval.decision).order_by(gov.Approval.id)).scalars().all() == [
            "validated", "approved"]
    assert _reconcile() is None


# --- a database from before this change ----------------------------------------------------------

def _old_rows(model_file: Path) -> int:
    """Rows as a 0008 database holds them (written without state in the ledger); how many gate."""
    from sqlalchemy import insert

    from convergence.governance import _models as m
    from convergence.platform.db import get_engine

    stored, now = gov.get_artifact_store().put(model_file), utcnow()
    with get_engine().begin() as conn:
        def add(model: type, **values: object) -> int:
            return conn.execute(insert(model.__table__).values(**values)).inserted_primary_key[0]

        person_id = add(m.PrincipalRow, issuer="https://idp.test", subject="bob", name="bob", name_key="bob",
                        kind="human", created_at=now)
        robot = add(m.PrincipalRow, issuer="urn:convergence:service", subject="robot", name="robot",
                    name_key="robot", kind="service", created_at=now)
        project = add(m.Project, name="default", created_at=now, created_by="bob")
        vid = add(m.ModelVersion, project_id=project, name="alpha", version=1, family="trading", role="student",
                  stage="production", params={}, metrics={}, artifact_uri=stored.uri, artifact_sha256=stored.sha256,
                  artifact_bytes=stored.size, created_at=now, created_by="bob", registrant_id=person_id)
        add(m.Approval, model_version_id=vid, decision="approved", actor="alice", reason="ok", created_at=now)
        add(m.StageTransition, model_version_id=vid, to_stage="production", actor="ops", at=now)
        add(m.KillSwitch, model_name="alpha", active=True, reason="r", actor="risk", changed_at=now)
        add(m.RoleGrant, principal_id=person_id, role="registrant", status="active", requested_by_id=person_id,
            requested_at=now)
        add(m.ApiKey, key_id="cvgk_000000000000", principal_id=robot, secret_sha256="c" * 64, created_at=now,
            created_by_id=person_id)
        add(m.Budget, project_id=project, family="*", metric="kwh", period_start=now, period_end=now, hard_limit=3,
            created_at=now, created_by="fin", updated_at=now)
        add(m.WebhookSubscription, url="http://127.0.0.1:9/h", secret="x", event_types=["*"], format="generic",
            active=True, created_at=now, created_by="ada")
    return 9  # every row above but the human principal and the project


def test_an_existing_database_is_adopted_by_the_upgrade(empty_db_url: str, model_file: Path) -> None:
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines, get_engine

    migrate.upgrade("0008")
    rows = _old_rows(model_file)
    dispose_engines()
    migrate.upgrade()
    assert _reconcile() is None
    with session_scope(write=False) as s:
        adopted = gov.query_events(session=s, action="ledger.state_adopted")
        assert gov.verify(session=s).ok
    assert len(adopted) == rows and {e.actor for e in adopted} == {"system:migration"}
    assert check_servable(family="trading", name="alpha", prefer_int8=False)["stage"] == "production"
    with get_engine().begin() as conn:
        conn.exec_driver_sql("UPDATE model_versions SET stage = 'approved'")
    assert _found(_reconcile())[2:] == ("stage", "approved", "production")


def test_a_fresh_database_adopts_nothing(db_url: str) -> None:
    with session_scope(write=False) as s:
        assert gov.head(session=s)[0] == 0  # the migrated template's chain is empty
