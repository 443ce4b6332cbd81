"""`cvg doctor`'s ledger check: it says where checkpoints are signed and published, and what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.platform.doctor import run_checks
from convergence.platform.settings import get_settings


def _ledger(monkeypatch: pytest.MonkeyPatch, **env: str):  # type: ignore[no-untyped-def]
    for name in ("CVG_LEDGER_KEY", "CVG_LEDGER_KEY_FILE", "CVG_LEDGER_ANCHOR_DIR", "CVG_LEDGER_ANCHOR_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return next(c for c in run_checks() if c.name == "ledger")
    finally:
        get_settings.cache_clear()


def test_defaults_are_flagged_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CVG_HOME", str(tmp_path))
    check = _ledger(monkeypatch)
    assert not check.ok and "cvg audit keygen" in check.fix and "Object Lock" in check.fix
    assert str(tmp_path / "ledger.key") in check.detail


def test_a_secret_key_and_a_bucket_pass_and_the_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "PRIVATE+KEY+x.example/log+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    check = _ledger(monkeypatch, CVG_LEDGER_KEY=secret, CVG_LEDGER_ANCHOR_S3="s3://ledger/prod")
    assert check.ok and check.fix is None and "s3://ledger/prod" in check.detail
    assert "PRIVATE" not in check.detail and "Secret" in check.detail


def test_doctor_warns_while_the_secret_key_sits_beside_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    monkeypatch.delenv("CVG_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    [check] = [c for c in run_checks() if c.name == "secrets"]
    assert not check.ok and "beside the data" in check.detail and "CVG_SECRET_KEY" in (check.fix or "")
    monkeypatch.setenv("CVG_SECRET_KEY", "a long random value from a secret store")
    get_settings.cache_clear()
    [check] = [c for c in run_checks() if c.name == "secrets"]
    assert check.ok and "a long random" not in check.detail  # the key itself is never shown
    get_settings.cache_clear()


def test_doctor_warns_while_a_replaced_key_file_still_opens_secrets(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path) -> None:
    monkeypatch.setenv("CVG_HOME", str(tmp_path))
    monkeypatch.setenv("CVG_SECRET_KEY", "a long random value from a secret store")
    (tmp_path / "secret.key").write_text("the key file from before\n")
    get_settings.cache_clear()
    [check] = [c for c in run_checks() if c.name == "secrets"]
    assert not check.ok and "still opens" in check.detail and "cvg webhooks reseal" in (check.fix or "")
    (tmp_path / "secret.key").unlink()
    [check] = [c for c in run_checks() if c.name == "secrets"]
    assert check.ok
    get_settings.cache_clear()
