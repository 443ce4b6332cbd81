"""The content-addressed artifact store."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.governance import LocalArtifactStore, get_artifact_store, sha256_file
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound, Unavailable
from convergence.platform.settings import get_settings


def test_put_is_content_addressed_and_idempotent(tmp_path: Path, model_file: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    first, second = store.put(model_file), store.put(model_file)
    assert first == second and first.sha256 == sha256_file(model_file)[0]
    assert store.fetch(first.uri, sha256=first.sha256).read_bytes() == model_file.read_bytes()
    assert store.put_bytes(model_file.read_bytes()) == first
    assert not list((tmp_path / "store").glob(".incoming-*"))


def test_fetch_refuses_changed_or_missing_bytes(tmp_path: Path, model_file: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    stored = store.put(model_file)
    with pytest.raises(IntegrityError):
        store.fetch(stored.uri, sha256="0" * 64)
    with pytest.raises(NotFound):
        store.fetch((tmp_path / "nothing").as_uri(), sha256=stored.sha256)


def test_directories_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidInput, match="directory"):
        store.put(tmp_path)
    with pytest.raises(NotFound):
        store.put(tmp_path / "missing.bin")


def test_store_follows_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("CVG_ARTIFACT_STORE", raising=False)
    get_settings.cache_clear()
    store = get_artifact_store()
    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "h" / "artifacts"
    monkeypatch.setenv("CVG_ARTIFACT_STORE", "s3://bucket/prefix")
    get_settings.cache_clear()
    with pytest.raises(Unavailable, match="S3"):
        get_artifact_store()
    get_settings.cache_clear()
