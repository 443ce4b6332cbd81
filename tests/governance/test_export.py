"""Audit export in three formats, and the standalone auditor that re-verifies it offline."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput

AUDITOR = Path(gov.__file__).with_name("auditor.py")


def _export(tmp_path: Path, fmt: str, **kw) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path / f"audit.{fmt}"
    with session_scope(write=False) as s:
        gov.export_events(session=s, out=out, fmt=fmt, **kw)
    return out


def _auditor(path: Path) -> subprocess.CompletedProcess[str]:
    # Run with -I (isolated): the script must need nothing but the standard library.
    return subprocess.run([sys.executable, "-I", str(AUDITOR), str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_auditor_accepts_an_intact_export(chain: int, tmp_path: Path, fmt: str) -> None:
    result = _auditor(_export(tmp_path, fmt))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {chain} events" in result.stdout


def test_auditor_names_an_edited_line(chain: int, tmp_path: Path) -> None:
    path = _export(tmp_path, "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[6])
    record["payload"]["i"] = 1_000_000
    lines[6] = json.dumps(record, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _auditor(path)
    assert result.returncode == 1
    assert "seq 7: hash does not match" in result.stdout


def test_auditor_names_a_dropped_line(chain: int, tmp_path: Path) -> None:
    path = _export(tmp_path, "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[3]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _auditor(path)
    assert result.returncode == 1 and "seq 4: missing" in result.stdout


def test_auditor_rejects_garbage_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text("{not json\n")
    result = _auditor(path)
    assert result.returncode == 2 and "line 1 is not JSON" in result.stderr


def test_export_time_window_verifies_from_its_first_event(chain: int, tmp_path: Path) -> None:
    with session_scope(write=False) as s:
        events = gov.query_events(session=s)
    path = _export(tmp_path, "jsonl", since=events[4].ts)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in records] == list(range(5, chain + 1))
    assert _auditor(path).returncode == 0


def test_csv_and_parquet_carry_the_chain_fields(chain: int, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    rows = list(csv.DictReader(io.StringIO(_export(tmp_path, "csv").read_text(encoding="utf-8"))))
    table = pq.read_table(_export(tmp_path, "parquet")).to_pylist()
    assert len(rows) == len(table) == chain
    for r, t in zip(rows, table):
        assert r["hash"] == t["hash"] and r["prev_hash"] == t["prev_hash"] and int(r["seq"]) == t["seq"]
        assert json.loads(t["payload"]) == json.loads(r["payload"])


def test_unknown_format_is_refused(chain: int, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--format"), session_scope(write=False) as s:
        gov.export_events(session=s, out=tmp_path / "x", fmt="xml")
    assert not (tmp_path / "x").exists()
