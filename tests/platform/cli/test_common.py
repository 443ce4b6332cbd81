"""What the CLI prints for a person to type next works in the shell they have."""

from __future__ import annotations

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
