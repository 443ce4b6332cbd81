"""principals, role grants, API keys, sandbox flag; principal ids beside names; safe outputs; killed answers

Names recorded before this revision become "legacy" principals (one per case-folded NFKC name), and the
new id columns are filled from them, so separation of duties compares ids for old rows too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 10:00:00
"""
from __future__ import annotations

import datetime as dt
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

ROLES = ("registrant", "validator", "approver", "operator", "risk", "finance", "auditor", "admin")
LEGACY = "urn:convergence:legacy"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _create_tables() -> None:
    op.create_table(
        'principals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('issuer', sa.String(length=500), nullable=False),
        sa.Column('subject', sa.String(length=500), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('name_key', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_in('kind', ('human', 'service', 'system')), name=op.f('ck_principals_kind')),
        sa.ForeignKeyConstraint(['created_by_id'], ['principals.id'],
                                name=op.f('fk_principals_created_by_id_principals')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_principals')),
        sa.UniqueConstraint('issuer', 'subject', name='uq_principals_issuer_subject'),
        sa.UniqueConstraint('name_key', name=op.f('uq_principals_name_key')),
    )
    op.create_table(
        'role_grants',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('principal_id', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('requested_by_id', sa.Integer(), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by_id', sa.Integer(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_by_id', sa.Integer(), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_in('role', ROLES), name=op.f('ck_role_grants_role')),
        sa.CheckConstraint(_in('status', ('pending', 'active', 'rejected', 'revoked')),
                           name=op.f('ck_role_grants_status')),
        sa.ForeignKeyConstraint(['principal_id'], ['principals.id'],
                                name=op.f('fk_role_grants_principal_id_principals')),
        sa.ForeignKeyConstraint(['requested_by_id'], ['principals.id'],
                                name=op.f('fk_role_grants_requested_by_id_principals')),
        sa.ForeignKeyConstraint(['decided_by_id'], ['principals.id'],
                                name=op.f('fk_role_grants_decided_by_id_principals')),
        sa.ForeignKeyConstraint(['revoked_by_id'], ['principals.id'],
                                name=op.f('fk_role_grants_revoked_by_id_principals')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_role_grants')),
    )
    op.create_index('ix_role_grants_principal_status', 'role_grants', ['principal_id', 'status'])
    op.create_table(
        'api_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.String(length=40), nullable=False),
        sa.Column('principal_id', sa.Integer(), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=False),
        sa.Column('approved_by_id', sa.Integer(), nullable=True),
        sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_by_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_api_keys_principal_id_principals')),
        sa.ForeignKeyConstraint(['created_by_id'], ['principals.id'],
                                name=op.f('fk_api_keys_created_by_id_principals')),
        sa.ForeignKeyConstraint(['revoked_by_id'], ['principals.id'],
                                name=op.f('fk_api_keys_revoked_by_id_principals')),
        sa.ForeignKeyConstraint(['approved_by_id'], ['principals.id'],
                                name=op.f('fk_api_keys_approved_by_id_principals')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
        sa.UniqueConstraint('key_id', name=op.f('uq_api_keys_key_id')),
    )
    op.create_index(op.f('ix_api_keys_principal_id'), 'api_keys', ['principal_id'])
    op.create_table(
        'control_settings',
        sa.Column('key', sa.String(length=100), nullable=False),
        sa.Column('value', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['updated_by_id'], ['principals.id'],
                                name=op.f('fk_control_settings_updated_by_id_principals')),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_control_settings')),
    )


def _add_columns() -> None:
    with op.batch_alter_table('model_versions') as batch:
        batch.add_column(sa.Column('registrant_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('safe_output', sa.Double(), nullable=True))
        batch.create_foreign_key(op.f('fk_model_versions_registrant_id_principals'), 'principals',
                                 ['registrant_id'], ['id'])
        batch.create_index(op.f('ix_model_versions_registrant_id'), ['registrant_id'])
    with op.batch_alter_table('approvals') as batch:
        batch.add_column(sa.Column('principal_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_approvals_principal_id_principals'), 'principals', ['principal_id'], ['id'])
        batch.create_index(op.f('ix_approvals_principal_id'), ['principal_id'])
    with op.batch_alter_table('budget_changes') as batch:
        batch.add_column(sa.Column('requested_by_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('decided_by_id', sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f('fk_budget_changes_requested_by_id_principals'), 'principals',
                                 ['requested_by_id'], ['id'])
        batch.create_foreign_key(op.f('fk_budget_changes_decided_by_id_principals'), 'principals',
                                 ['decided_by_id'], ['id'])
    with op.batch_alter_table('prediction_log') as batch:
        batch.add_column(sa.Column('killed', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Filter indexes that end in seq: an actor's, subject's or action's events in order without a sort.
    # (Plain index operations, never a batch copy: the table's append-only triggers must survive.)
    for name, columns in (('ix_audit_events_subject', ['subject_type', 'subject_id', 'seq']),
                          ('ix_audit_events_actor', ['actor', 'seq']), ('ix_audit_events_action', ['action', 'seq'])):
        op.drop_index(name, table_name='audit_events')
        op.create_index(name, 'audit_events', columns)


def _key(name: str) -> str:
    """The name key new principals get, so a legacy "alice" and a person called alice share one name."""
    from convergence.governance._principal import name_key

    return name_key(unicodedata.normalize("NFKC", name).strip())[:200] or "?"


def _backfill() -> None:
    """One legacy principal per normalised name found in the old rows; fill the new id columns from it."""
    bind = op.get_bind()
    principals = sa.table('principals', sa.column('id', sa.Integer), sa.column('issuer', sa.String),
                          sa.column('subject', sa.String), sa.column('name', sa.String),
                          sa.column('name_key', sa.String), sa.column('kind', sa.String),
                          sa.column('created_at', sa.DateTime(timezone=True)))
    sources = [('model_versions', 'created_by', 'registrant_id'), ('approvals', 'actor', 'principal_id'),
               ('budget_changes', 'requested_by', 'requested_by_id'), ('budget_changes', 'decided_by', 'decided_by_id')]
    names: set[str] = set()
    for table, column, _ in sources:
        names.update(n for (n,) in bind.execute(sa.text(f"SELECT DISTINCT {column} FROM {table} "
                                                         f"WHERE {column} IS NOT NULL")))
    ids: dict[str, int] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for name in sorted(names):
        key = _key(name)
        if key not in ids:
            bind.execute(principals.insert().values(issuer=LEGACY, subject=key, name=name[:200], name_key=key,
                                                    kind='human', created_at=now))
            ids[key] = bind.execute(sa.select(principals.c.id).where(principals.c.name_key == key)).scalar_one()
    for table, column, id_column in sources:
        for name in names:
            bind.execute(sa.text(f"UPDATE {table} SET {id_column} = :pid WHERE {column} = :name"),
                         {"pid": ids[_key(name)], "name": name})


def upgrade() -> None:
    _create_tables()
    _add_columns()
    _backfill()


def downgrade() -> None:
    for name, columns in (('ix_audit_events_subject', ['subject_type', 'subject_id']),
                          ('ix_audit_events_actor', ['actor']), ('ix_audit_events_action', ['action'])):
        op.drop_index(name, table_name='audit_events')
        op.create_index(name, 'audit_events', columns)
    with op.batch_alter_table('prediction_log') as batch:
        batch.drop_column('killed')
    with op.batch_alter_table('budget_changes') as batch:
        batch.drop_constraint(op.f('fk_budget_changes_decided_by_id_principals'), type_='foreignkey')
        batch.drop_constraint(op.f('fk_budget_changes_requested_by_id_principals'), type_='foreignkey')
        batch.drop_column('decided_by_id')
        batch.drop_column('requested_by_id')
    with op.batch_alter_table('approvals') as batch:
        batch.drop_index(op.f('ix_approvals_principal_id'))
        batch.drop_constraint(op.f('fk_approvals_principal_id_principals'), type_='foreignkey')
        batch.drop_column('principal_id')
    with op.batch_alter_table('model_versions') as batch:
        batch.drop_index(op.f('ix_model_versions_registrant_id'))
        batch.drop_constraint(op.f('fk_model_versions_registrant_id_principals'), type_='foreignkey')
        batch.drop_column('safe_output')
        batch.drop_column('registrant_id')
    op.drop_table('control_settings')
    op.drop_index(op.f('ix_api_keys_principal_id'), table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_index('ix_role_grants_principal_status', table_name='role_grants')
    op.drop_table('role_grants')
    op.drop_table('principals')
