"""The main job (`cvg demo`) on the embedded default: a fresh CVG_HOME, SQLite, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_demo_tells_the_whole_story(cvg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CVG_HOME": str(tmp_path / "home"), "CVG_DATABASE_URL": ""}
    monkeypatch.delenv("CVG_DATABASE_URL", raising=False)
    result = cvg("demo", env=env)
    assert result.code == 0, result.err
    for fragment in ("migrated", "refused", "rolled back", "audit chain verified", "OK:", "summary"):
        assert fragment in result.out, fragment
    assert (tmp_path / "home" / "convergence.db").exists()
    again = cvg("demo", env=env)  # re-runnable on the same home
    assert again.code == 0
    verify = cvg("audit", "verify", "--json", env=env)
    assert verify.json["ok"] and verify.json["checked"] > 20
