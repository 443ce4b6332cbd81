"""CLI fixtures: run the real ``cvg`` console script in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CVG = str(Path(sys.executable).with_name("cvg"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cvg():  # type: ignore[no-untyped-def]
    """``cvg(*args, env={...})`` → Result; the environment is the test's (CVG_DATABASE_URL, CVG_HOME). The demo
    gets more time than a command: it trains two families of models."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        proc = subprocess.run([CVG, *args], capture_output=True, text=True, env=full_env,
                              timeout=600 if args[:1] == ("demo",) else 120)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cvg: error:"), result.err
    assert "Traceback" not in result.err and fragment in lines[0], lines[0]


@pytest.fixture
def sandbox(db_url: str) -> str:
    """The test's database as a sandbox (``--as NAME`` works), with the people of tests/people.py and their
    roles already there, and the OS account (who runs commands without --as) an auditor."""
    from convergence.governance import identity
    from convergence.platform.db import session_scope
    from tests.people import ROLES, person, record_seeded

    with session_scope() as s:
        os_account = identity.make_sandbox(session=s)
    for name in ROLES:
        person(name)
    person(os_account.name, "auditor")  # bare `cvg audit …`, `cvg models list` run as the OS account
    record_seeded()
    return db_url
