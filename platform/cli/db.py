"""``cvg db``: schema migrations (Alembic) for the governance database."""

from __future__ import annotations

from typing import Annotated

import typer

from convergence.platform.cli._common import JsonOpt, print_json, print_mapping

app = typer.Typer(help="Governance database schema: upgrade, downgrade, current revision, drift check.",
                  no_args_is_help=True)


def _show(status: object, title: str, json_out: bool) -> None:
    data = status.to_dict()  # type: ignore[attr-defined]
    if json_out:
        print_json(data)
    else:
        print_mapping(title, data)


@app.command()
def upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
            sandbox: Annotated[bool, typer.Option("--sandbox", help="Make a new, empty database a sandbox, where "
                                                  "--as NAME picks who you act as (for trying things out; every "
                                                  "event then says so). Never for a database with a ledger.")] = False,
            json_out: JsonOpt = False) -> None:
    """Migrate the database forward (creates it on first use). Safe to run repeatedly."""
    from convergence.platform import migrate

    status = migrate.upgrade(revision)
    if sandbox:
        from convergence.governance import identity
        from convergence.platform.db import session_scope

        with session_scope() as session:
            identity.make_sandbox(session=session)
    _show(status, "database upgraded" + (" (sandbox)" if sandbox else ""), json_out)


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision: an id, -1 for one step back, or base.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm dropping tables (needed for 'base').")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Migrate the database back. Going to 'base' drops every governance table, audit trail included."""
    from convergence.platform import migrate
    from convergence.platform.errors import InvalidInput

    if revision == "base" and not yes:
        raise InvalidInput("downgrading to base deletes the audit trail and the registry; add --yes if you mean it")
    _show(migrate.downgrade(revision), "database downgraded", json_out)


@app.command()
def current(json_out: JsonOpt = False) -> None:
    """Show the database's revision and the code's head revision."""
    from convergence.platform import migrate

    _show(migrate.status(), "schema", json_out)


@app.command()
def check(json_out: JsonOpt = False) -> None:
    """Fail unless the database is at head and the models match the migrations (alembic check)."""
    from convergence.platform import migrate

    _show(migrate.check(), "schema is current", json_out)
