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
    """One line on stderr, whatever the message holds: newlines and terminal controls are escaped."""
    from convergence.platform.cli._common import printable

    typer.echo(f"cvg: error: {printable(message)}", err=True)
    sys.exit(code)


def _database_url() -> str | None:
    """The configured database URL, to scrub from a driver's message; None when the settings cannot load."""
    from convergence.platform.settings import get_settings

    try:
        return get_settings().database_url
    except Exception:  # noqa: BLE001 - a bad setting is reported on its own
        return None


def _foreign(exc: Exception) -> ConvergenceError | None:
    """Our error for a driver's (never its SQL or values) or a bad CVG_ setting's, else None: a bug."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        from convergence.platform.db import database_error

        return database_error(exc, _database_url())
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError) and exc.title == "Settings":
        from convergence.platform.errors import InvalidInput

        first = exc.errors()[0]
        name = "CVG_" + "_".join(str(part) for part in first.get("loc", ())).upper()
        return InvalidInput(f"{name}: {first.get('msg', 'invalid')} ({exc.error_count()} setting(s) invalid)")
    return None


def _debug() -> bool:
    """CVG_DEBUG, from the settings; an error in the settings themselves is shown as one line."""
    from convergence.platform.settings import get_settings

    try:
        return get_settings().debug
    except Exception:  # noqa: BLE001 - the settings may be what failed
        return False


class _Root(TyperGroup):
    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConvergenceError as exc:
            if _debug():
                raise
            _fail(str(exc), exc.exit_code)
        except (TyperException, typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `cvg … | head`: the reader left; that is not an error of ours
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except Exception as exc:  # a driver's error, or a bug of ours: still one line, traceback on request
            if _debug():
                raise
            if (ours := _foreign(exc)) is not None:
                _fail(str(ours), ours.exit_code)
            first = (str(exc).strip().splitlines() or [""])[0]
            _fail(f"internal error: {type(exc).__name__}: {first} (run with CVG_DEBUG=1 for the traceback)", 1)


app = typer.Typer(
    cls=_Root,
    name="cvg",
    help="convergence: govern, train, serve and audit trading and language models.\n\n"
         "Works on the database directly (CVG_DATABASE_URL; default SQLite under CVG_HOME) as your OS account, "
         "or, with CVG_API_URL, as a client of `cvg api` authenticated by CVG_API_KEY, CVG_TOKEN or `cvg login`. "
         "Each step needs its role and four eyes; every change is on a hash-chained audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from convergence.platform.cli import (
        access,
        audit,
        budgets,
        db,
        demo,
        doctor,
        drift,
        models,
        pipelines,
        principals,
        retention,
        serve,
        webhooks,
    )

    app.add_typer(db.app, name="db")
    app.add_typer(models.app, name="models")
    app.add_typer(audit.app, name="audit")
    app.add_typer(pipelines.app, name="pipelines")
    app.add_typer(budgets.app, name="budgets")
    app.add_typer(drift.app, name="drift")
    app.add_typer(webhooks.app, name="webhooks")
    app.add_typer(serve.app, name="serve")
    app.add_typer(principals.app, name="principals")
    app.add_typer(retention.app, name="retention")
    app.command("api")(access.api)
    app.command("login")(access.login)
    app.command("logout")(access.logout)
    app.command("whoami")(access.whoami)
    app.command("doctor")(doctor.doctor)
    app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"cvg (convergence) {version('convergence')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("cvg (convergence) not installed: run `bash .ci/bootstrap`")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the installed version and exit.",
                                       callback=_version, is_eager=True)) -> None:
    """convergence: govern, train, serve and audit trading and language models."""


_register()


def _click_classes() -> tuple[type[Exception], type[Exception]]:
    """(ClickException, UsageError) of the click that typer vendors, found through its public BadParameter."""
    mro = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    return mro["ClickException"], mro["UsageError"]


def main() -> None:
    """The console script: usage mistakes are one line and exit 2, like every other bad input."""
    click_exception, usage_error = _click_classes()
    try:
        code = app(prog_name="cvg", standalone_mode=False)
    except click_exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `cvg` or `cvg models` alone: the help, not an error
            exc.show()  # type: ignore[attr-defined]
            sys.exit(0)
        message = exc.format_message()  # type: ignore[attr-defined]
        if isinstance(exc, usage_error):
            path = getattr(getattr(exc, "ctx", None), "command_path", "cvg")
            _fail(f"{message} (see `{path} --help`)", 2)
        _fail(message, getattr(exc, "exit_code", 1) or 1)
    except typer.Abort:
        _fail("aborted", 1)
    sys.exit(code if isinstance(code, int) else 0)
