"""The main job (`cvg demo`) on the embedded default: a fresh CVG_HOME, SQLite, local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.ray
@pytest.mark.slow
def test_demo_tells_the_whole_story(cvg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CVG_HOME": str(tmp_path / "home"), "CVG_DATABASE_URL": ""}
    monkeypatch.delenv("CVG_DATABASE_URL", raising=False)
    result = cvg("demo", "--quick", env=env)
    assert result.code == 0, result.err[-3000:]
    for fragment in ("migrated", "energy budget", "train_teacher", "registered teacher", "validated", "refused",
                     "drift check", "signed webhook", "budgets:", "language pipeline", "nina's run",
                     "lineage: corpus", "the language run",
                     "promoted the student", "audit chain verified", "OK:", "summary"):
        assert fragment in result.out, fragment
    assert (tmp_path / "home" / "convergence.db").exists()
    verify = cvg("audit", "verify", "--json", env=env)
    assert verify.json["ok"] and verify.json["checked"] >= 14
    production = cvg("models", "list", "--stage", "production", "--json", env=env).json
    assert sorted((m["family"], m["role"]) for m in production) == [("language", "student"), ("trading", "quantized"),
                                                                    ("trading", "student")]
    assert {m["created_by"] for m in production} == {"quinn", "nina"}
