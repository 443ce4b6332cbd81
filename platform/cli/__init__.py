"""The ``cvg`` admin CLI: the top layer, above governance, pipelines and serving.

Sub-command modules import their services inside each command, so ``cvg --help`` loads neither
SQLAlchemy nor any ML library. The one error handler lives here: a ``ConvergenceError`` becomes one
line on stderr and its exit code; anything unexpected becomes one line too, with the traceback
printed only when ``CVG_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.exceptions import TyperException
from typer.core import TyperGroup

from convergence.platform.errors import ConvergenceError

__all__ = ["app", "main"]


def _fail(message: str, code: int) -> None:
    typer.echo(f"cvg: error: {message}", err=True)
    sys.exit(code)


class _Root(TyperGroup):
    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvergenceError as exc:
            if os.environ.get("CVG_DEBUG") == "1":
                raise
            _fail(str(exc), exc.exit_code)
        except (TyperException, typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `cvg … | head`: the reader left; that is not an error of ours
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except Exception as exc:  # a bug of ours: still one line, traceback on request
            if os.environ.get("CVG_DEBUG") == "1":
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with CVG_DEBUG=1 for the traceback)", 1)


app = typer.Typer(
    cls=_Root,
    name="cvg",
    help="convergence: govern, train, serve and audit trading and language models.\n\n"
         "Set CVG_DATABASE_URL to use PostgreSQL (default: SQLite under CVG_HOME) and CVG_ACTOR or --as "
         "to say who you are; every change is recorded on a hash-chained audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from convergence.platform.cli import audit, budgets, db, demo, doctor, drift, models, pipelines, serve, webhooks

    app.add_typer(db.app, name="db")
    app.add_typer(models.app, name="models")
    app.add_typer(audit.app, name="audit")
    app.add_typer(pipelines.app, name="pipelines")
    app.add_typer(budgets.app, name="budgets")
    app.add_typer(drift.app, name="drift")
    app.add_typer(webhooks.app, name="webhooks")
    app.add_typer(serve.app, name="serve")
    app.command("doctor")(doctor.doctor)
    app.command("demo")(demo.demo)


_register()


def main() -> None:
    app(prog_name="cvg")
