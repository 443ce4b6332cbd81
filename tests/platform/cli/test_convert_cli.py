"""``cvg models convert``: a first-wave pickled version becomes a safe candidate, in one command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines.test_convert import legacy_trading, register_first_wave
from tests.platform.cli.conftest import assert_one_line_error


def test_convert_registers_a_safe_candidate_and_says_what_comes_next(sandbox: str, cvg, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    old = register_first_wave(legacy_trading(tmp_path / "old.pt"), monkeypatch)
    assert_one_line_error(cvg("models", "convert", str(old), "--as", "carol"), 4, "registrant")
    done = cvg("models", "convert", str(old), "--as", "quant")
    assert done.code == 0, done.err
    assert "registered as a safe artifact" in done.out and "validate and approve it" in done.out
    shown = cvg("models", "show", str(old + 1), "--json")
    assert shown.json["params"]["converted_from"]["version_id"] == old and shown.json["stage"] == "candidate"
    assert_one_line_error(cvg("models", "convert", str(old + 1), "--as", "quant"), 2, "already a safe artifact")
