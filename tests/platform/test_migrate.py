"""Migrations on both databases: upgrade, downgrade to base, upgrade again, and no model drift."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from convergence.platform import migrate
from convergence.platform.db import get_engine
from convergence.platform.errors import SchemaOutdated
from tests.people import detached

TABLES = {"audit_events", "audit_checkpoints", "audit_tree_nodes", "projects", "datasets", "pipeline_runs", "model_versions", "usage",
          "budgets", "budget_changes", "alerts", "prediction_log", "reference_profiles", "drift_reports",
          "principals", "role_grants", "api_keys", "control_settings",
          "webhook_subscriptions", "webhook_deliveries", "kill_switches",
          "approvals", "stage_transitions", "console_sessions", "deployments", "deployment_tallies"}


def _tables() -> set[str]:
    return set(inspect(get_engine()).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_and_check(empty_db_url: str) -> None:
    with pytest.raises(SchemaOutdated, match="no revision"):
        migrate.check()
    status = migrate.upgrade()
    assert status.at_head and _tables() == TABLES
    assert migrate.check().at_head  # alembic check: models == migrations
    status = migrate.downgrade("base")
    assert status.current is None and _tables() == set()
    assert migrate.upgrade().at_head and _tables() == TABLES
    migrate.check()
    # the append-only protection comes back with the schema
    from sqlalchemy.exc import DBAPIError

    from convergence.governance import Subject, append
    from convergence.platform.db import session_scope

    with session_scope() as s:
        append(session=s, principal=detached("a"), action="x", subject=Subject("t", "1"))
    with pytest.raises(DBAPIError, match="append-only"), get_engine().begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_events")


def test_check_notices_a_model_change_without_a_migration(db_url: str) -> None:
    from sqlalchemy import Column, Integer, Table

    from convergence.governance import Base

    extra = Table("unmigrated_table", Base.metadata, Column("id", Integer, primary_key=True))
    try:
        with pytest.raises(SchemaOutdated, match="models and the migrations differ"):
            migrate.check()
    finally:
        Base.metadata.remove(extra)


def test_names_recorded_before_principals_keep_separation_of_duties(empty_db_url: str, tmp_path) -> None:
    """A 0006 database with history (alice registered two versions, val validated one) upgrades — on SQLite
    too, where the batch copy of a table others refer to used to fail — and the people those names meant still
    cannot approve or validate their own work."""
    import datetime as dt

    from sqlalchemy import text

    from convergence import governance as gov
    from convergence.governance import identity
    from convergence.platform.db import dispose_engines, session_scope
    from convergence.platform.errors import Forbidden

    migrate.upgrade("0006")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with get_engine().begin() as conn:
        conn.execute(text("INSERT INTO projects (name, created_at, created_by) VALUES ('default', :t, 'alice')"),
                     {"t": now})
        for version, stage in ((1, "candidate"), (2, "validated")):
            conn.execute(text(
                "INSERT INTO model_versions (project_id, name, version, family, role, stage, params, metrics, "
                "artifact_uri, artifact_sha256, artifact_bytes, created_at, created_by) VALUES (1, 'm', :v, "
                "'trading', 'student', :s, '{}', '{}', 'file:///x', :sha, 1, :t, 'Alice')"),
                {"v": version, "s": stage, "sha": "a" * 64, "t": now})
        conn.execute(text("INSERT INTO approvals (model_version_id, decision, actor, reason, created_at) "
                          "VALUES (2, 'validated', 'val', 'ok', :t)"), {"t": now})
    dispose_engines()
    assert migrate.upgrade().at_head
    auth = identity.AuthContext("oidc")
    evidence = tmp_path / "evidence.md"
    evidence.write_text("# reviewed\n")
    with session_scope() as s:
        legacy = {p["name"]: p for p in identity.list_principals(session=s, principal=identity.Principal(
            id=0, name="reader", kind="human", issuer="t", subject="t", roles=frozenset({"auditor"})))}
        assert {legacy["Alice"]["issuer"], legacy["val"]["issuer"]} == {"urn:convergence:legacy"}
        alice_row = identity.ensure_principal(session=s, issuer="https://idp.test", subject="alice", name="alice",
                                              kind="human", auth=auth)
        val_row = identity.ensure_principal(session=s, issuer="https://idp.test", subject="val", name="val",
                                            kind="human", auth=auth)
    # the names are taken by the legacy principals, so the new ones are alice@idp.test and val@idp.test …
    alice = identity.to_principal(alice_row, auth=auth, roles={"validator", "approver"})
    val = identity.to_principal(val_row, auth=auth, roles={"approver"})
    assert (alice.name, val.name) == ("alice@idp.test", "val@idp.test")
    # … and they are still the people who registered and validated those versions
    with pytest.raises(Forbidden) as refused, session_scope() as s:
        gov.validate(session=s, version_id=1, principal=alice, evidence=evidence)
    assert refused.value.rule == "validator-not-registrant"
    with pytest.raises(Forbidden) as refused, session_scope() as s:
        gov.approve(session=s, version_id=2, principal=val, reason="mine")
    assert refused.value.rule == "approver-not-validator"
    with pytest.raises(Forbidden) as refused, session_scope() as s:
        gov.approve(session=s, version_id=2, principal=alice, reason="mine")
    assert refused.value.rule == "approver-not-registrant"
