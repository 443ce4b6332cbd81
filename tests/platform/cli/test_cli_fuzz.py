"""A bounded fuzzing campaign over the CLI's time, limit, id and filter options (issue 14).

Hypothesis writes the argument strings; each runs through the real console entry point in-process (the
same error handler as the installed ``cvg``) against a fresh test database. Every run must end with 0 or a
documented exit code, without a traceback, with exactly one error line, and nothing a terminal acts on.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DOCUMENTED = {0, 2, 3, 4, 5, 6}  # platform/errors.py: usage and bad input 2, not found 3, refused 4, …
BUDGET_S = 30.0  # the campaign stops drawing new inputs after this long (the count is what ran)
RAW = ("\x1b", "\x9b", "\u202e", "\u200b")

V = None  # where a generated value goes
TEMPLATES: list[tuple[str | None, ...]] = [
    ("audit", "query", "--since", V), ("audit", "query", "--until", V), ("audit", "query", "--limit", V),
    ("audit", "query", "--actor", V), ("audit", "query", "--action", V), ("audit", "query", "--subject", V),
    ("audit", "query", "--since", V, "--until", V, "--json"), ("audit", "export", "--since", V),
    ("audit", "prove", V), ("audit", "prove", "1", "--size", V), ("audit", "consistency", V),
    ("audit", "verify", "--from-checkpoint", V),
    ("models", "list", "--limit", V), ("models", "list", "--name", V), ("models", "list", "--stage", V),
    ("models", "list", "--family", V, "--json"), ("models", "show", V), ("models", "lineage", V),
    ("models", "history", V), ("models", "at", "alpha", "--time", V), ("models", "at", V, "--time", "now"),
    ("budgets", "report", "--since", V), ("drift", "history", "alpha", "--limit", V),
    ("webhooks", "list", "--limit", V), ("pipelines", "runs", "--limit", V), ("principals", "show", V),
]
SPECIAL = ["", " ", "now", "0", "-0", "-1", "1", "1e20", "NaN", "inf", "٣", "1_000", "+5", " 5 ", "0x10", "9" * 400,
           "99999999999d", "-99999999999d ago", "1e400d", str(2**31), str(2**63), str(2**64), "-" + str(2**63),
           "0001-01-01T00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-13-01", "2026-11-24T25:00", "[/]",
           "[red]x", "a:b", ":", "model_version:", "*", "model.*", "\udcff", "x" * 5000, "\t", "a\nb", "%s",
           "\x1b[31m", "\u202e", "\u200b", "\x9b", "alpha", "candidate", "trading", "bob"]
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats().map(repr),
    st.from_regex(r"\A[-+]?\d{1,14}(\.\d{1,3})?\s?[smhdw]( ago)?\Z"),
    st.from_regex(r"\A\d{1,5}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:\d{2})?\Z"),
    st.text(st.characters(blacklist_characters="\x00"), max_size=40),  # argv never holds NUL
)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``cvg ARGS`` in this process: (exit code, stdout, stderr)."""
    from convergence.platform.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    argv, sys.argv, code = sys.argv, ["cvg", *args], 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    out.flush()
    err.flush()
    return code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()  # type: ignore[attr-defined]


def check(args: list[str], code: int, out: str, err: str) -> None:
    assert code in DOCUMENTED, (args, code, err)
    assert "Traceback" not in out + err, (args, err)
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cvg: error:"), (args, err)
    elif "--json" in args:
        json.loads(out)
    assert not any(ch in out + err for ch in RAW), (args, out[:200], err)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_fuzzed_options_exit_with_a_documented_code_and_one_line(db_url: str, sandbox: str, model_file: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    seeded = run_cli(["models", "register", "alpha", "--artifact", str(model_file), "--family", "trading",
                      "--role", "teacher", "--as", "bob"])
    assert seeded[0] == 0, seeded
    tried, started = 0, time.monotonic()

    @settings(max_examples=450, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(TEMPLATES), VALUES, VALUES)
    def campaign(template: tuple[str | None, ...], first: str, second: str) -> None:
        nonlocal tried
        if time.monotonic() - started > BUDGET_S:
            return
        values = iter((first, second))
        args = [next(values) if part is V else part for part in template]
        check(args, *run_cli(args))
        tried += 1

    campaign()
    with capsys.disabled():
        print(f"\nCLI fuzz campaign: {tried} inputs in {time.monotonic() - started:.1f} s, 0 failures")
    assert tried >= 100
