"""The README's regulatory evidence table: every duty names a command and a test, and every test it names
exists (the suite runs them all, so a named test that fails fails the suite). No row without a test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Regulatory evidence", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("duty", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_every_duty_names_a_command_and_a_test_that_exists() -> None:
    rows = _rows()
    duties = " ".join(d for d, _, _ in rows)
    for text in ("SR 11-7", "Art. 11", "Art. 12", "Art. 14", "Art. 19", "17a-4(f)", "RTS 6 Art. 12", "15-09"):
        assert text in duties, text
    for duty, command, test in rows:
        assert "cvg " in command or "auditor.py" in command, (duty, command)
        match = re.fullmatch(r"`(tests/[\w/]+\.py)::(test_\w+)`", test)
        assert match, (duty, test)
        path, name = ROOT / match.group(1), match.group(2)
        assert path.is_file(), (duty, path)
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert name in defined, (duty, name)
