"""Migrations on both databases: upgrade, downgrade to base, upgrade again, and no model drift."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from convergence.platform import migrate
from convergence.platform.db import get_engine
from convergence.platform.errors import SchemaOutdated
from tests.people import detached

TABLES = {"audit_events", "audit_checkpoints", "projects", "datasets", "pipeline_runs", "model_versions", "usage",
          "budgets", "budget_changes", "alerts", "prediction_log", "reference_profiles", "drift_reports",
          "principals", "role_grants", "api_keys", "control_settings",
          "webhook_subscriptions", "webhook_deliveries", "kill_switches",
          "approvals", "stage_transitions"}


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
