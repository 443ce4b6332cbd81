"""Shared CLI pieces: the options every command spells the same way, and rendering.

Commands only parse, call a service and render; rendering is a rich table for people or JSON
(``--json``) for scripts, always on stdout, while errors and progress go to stderr.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any

import typer

from convergence.platform.errors import InvalidInput

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
ActorOpt = Annotated[str | None, typer.Option("--as", help="Sandbox databases only (the demo's): act as NAME "
                                              "(default: $CVG_ACTOR). Elsewhere who you are comes from your OS "
                                              "account, CVG_API_KEY or `cvg login`.", show_default=False)]


def operations(as_name: str | None = None, *, progress: Any = None, ray_address: str | None = None) -> Any:
    """The control plane's operations for this command: over HTTP when CVG_API_URL is set, else on the
    database directly. Both take the same arguments, return the same data and raise the same errors."""
    from convergence.platform.settings import get_settings

    settings = get_settings()
    as_name = as_name if as_name is not None else settings.actor
    if settings.api_url:
        if as_name:
            raise InvalidInput("--as (or CVG_ACTOR) does not apply with CVG_API_URL: the API knows who you are from "
                               "CVG_API_KEY, CVG_TOKEN or `cvg login`")
        if ray_address:
            raise InvalidInput("--ray-address does not apply with CVG_API_URL: the API server runs the pipeline on "
                               "its own Ray (its CVG_RAY_ADDRESS)")
        from convergence.governance.identity import stored_token
        from convergence.platform.api.client import RemoteOperations

        credential = settings.api_key or settings.token or stored_token(settings)
        return RemoteOperations(settings.api_url, credential, timeout_s=settings.api_timeout_s)
    from convergence.platform.api.operations import local_operations

    return local_operations(as_name=as_name, progress=progress, ray_address=ray_address)


_UNSAFE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))  # controls, format (bidi, zero-width), surrogates, breaks


def printable(text: str, keep: str = "") -> str:
    """``text`` safe to show on a terminal: control and format characters (ESC, C1, bidi overrides, zero-width,
    lone surrogates) written as escapes like ``\\x1b`` and ``\\u202e``; ``keep`` lists any to leave (newlines)."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if ch not in keep and unicodedata.category(ch) in _UNSAFE else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(ch: str) -> str:
    """A JSON escape of one character (astral ones as a surrogate pair): the same data, nothing a terminal acts on."""
    units = ch.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def print_json(data: Any) -> None:
    """Exact JSON; DEL, C1 and format characters (and lone surrogates) as \\u escapes, which json leaves raw."""
    text = json.dumps(data, indent=2, default=_default, ensure_ascii=False)
    if not text.isprintable():
        text = "".join(_json_escape(ch) if ch not in "\n" and unicodedata.category(ch) in _UNSAFE else ch
                       for ch in text)
    sys.stdout.write(text + "\n")


@contextlib.contextmanager
def stdout_for_json(json_out: bool) -> Iterator[None]:
    """While a command whose stdout is JSON works: anything else written to stdout (Ray's driver notices such as
    "task failed, will be retried", at the file-descriptor level too) goes to stderr, so stdout stays parseable."""
    if not json_out:
        yield
        return
    import os

    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors to swap (a closed stdout or stderr): Python-level writers only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@functools.cache
def _console_class() -> type:
    from rich.console import Console
    from rich.errors import MarkupError

    class SafeConsole(Console):
        """Every string it renders (tables, trees, messages) is made printable first, in this one place;
        text that is not valid markup (a reason holding ``[/]``) is shown as it is, not as a crash."""

        def render_str(self, text: str, **kwargs: Any) -> Any:
            text = printable(text, keep="\n\t")
            try:
                return super().render_str(text, **kwargs)
            except MarkupError:
                return super().render_str(text, **{**kwargs, "markup": False})

    return SafeConsole


def console(stderr: bool = False) -> Any:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output is read by people in logs and CI too: don't squeeze it into 80 columns.
    width = None if stream.isatty() else 160
    return _console_class()(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Cells are data: shown literally (no markup) and printable; a rich ``Text`` cell keeps its style."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text("" if cell is None else printable(str(cell)))
                        for cell in row))
    console().print(table)


def print_mapping(title: str, data: Mapping[str, Any]) -> None:
    print_table(title, ("field", "value"),
                ((k, json.dumps(v, default=_default) if isinstance(v, (dict, list)) else v) for k, v in data.items()))


def parse_json_option(value: str | None, option: str) -> Any:
    """A JSON option given inline or as @file."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise InvalidInput(f"{option}: cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{option} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def invocation(program: str = "cvg") -> str:
    """How to run ``program`` (cvg, python) from the user's shell as it is now: the bare name when that name
    on PATH is this installation's, else its path (relative to here when shorter), with CVG_HOME in front
    when this process uses a home the shell's default would not find."""
    import os
    import shutil
    from pathlib import Path

    from convergence.platform.settings import _default_home, get_settings

    mine = Path(sys.executable).parent / (program if program != "python" else Path(sys.executable).name)
    found = shutil.which(program)
    if found and Path(found).resolve() == mine.resolve():
        command = program
    else:
        relative = os.path.relpath(mine, Path.cwd())
        command = relative if len(relative) < len(str(mine)) and not relative.startswith("../..") else str(mine)
    home = get_settings().home
    if home.resolve() != _default_home().resolve():
        command = f"CVG_HOME={shlex_quote(str(home))} {command}"
    return command


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def short(digest: str | None, n: int = 12) -> str:
    return f"{digest[:n]}…" if digest else ""
