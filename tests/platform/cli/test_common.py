"""What the CLI prints for a person to type next works in the shell they have."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def test_hints_name_cvg_as_the_users_shell_reaches_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from convergence.platform.cli._common import invocation
    from convergence.platform.settings import _default_home, get_settings

    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("CVG_HOME", str(_default_home()))
    get_settings.cache_clear()
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # activated: the bare name is this installation's
    assert invocation("cvg") == "cvg"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a new shell, not activated: the path that works
    monkeypatch.chdir(Path(venv_bin).parent.parent)
    hint = invocation("cvg")
    assert hint != "cvg" and Path(hint).resolve() == (Path(venv_bin) / "cvg").resolve()
    monkeypatch.setenv("CVG_HOME", str(tmp_path / "elsewhere"))  # a home the shell's default would not find
    get_settings.cache_clear()
    assert invocation("cvg").startswith(f"CVG_HOME={tmp_path / 'elsewhere'} ")
    get_settings.cache_clear()


def test_stdout_for_json_sends_other_writers_to_stderr(capfd) -> None:
    """A library printing to stdout (Python or the file descriptor, as Ray's driver does) during a --json command
    lands on stderr; stdout carries only the JSON."""
    import os

    from convergence.platform.cli._common import print_json, stdout_for_json

    with stdout_for_json(True):
        print("(raylet) task failed, will be retried")
        os.write(1, b"a C++ notice\n")
    print_json({"ok": True})
    out, err = capfd.readouterr()
    assert json.loads(out) == {"ok": True}
    assert "will be retried" in err and "a C++ notice" in err
    for _ in range(2):  # a fresh context each time (a cached one can be entered once)
        with stdout_for_json(False):
            print("plain output")
        with stdout_for_json(True):
            print("notice")
    assert capfd.readouterr().out == "plain output\nplain output\n"
