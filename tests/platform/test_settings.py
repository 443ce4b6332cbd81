"""Settings: CVG_ prefix, CVG_HOME moves the default database, read once through get_settings()."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.platform.settings import Settings, get_settings


def test_home_moves_the_default_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_HOME", str(tmp_path))
    monkeypatch.delenv("CVG_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'convergence.db'}"
    assert settings.resolved_artifact_store == (tmp_path / "artifacts").as_uri()
    monkeypatch.setenv("CVG_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert get_settings().resolved_database_url.startswith("sqlite")  # cached until cleared
    get_settings.cache_clear()
    assert get_settings().resolved_database_url == "postgresql+psycopg://u@h/db"
    get_settings.cache_clear()


def test_default_home_is_the_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CVG_HOME", raising=False)
    assert "convergence" in str(Settings().home)


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("CVG_POOL_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
