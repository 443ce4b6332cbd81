"""Safe model artifacts: registration refuses every file that is not one, and never runs what is inside."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.governance import AuditEvent, ModelVersion, artifacts
from convergence.platform.db import session_scope
from convergence.platform.errors import UnsafeArtifact
from tests.artifacts import FORMAT, synthetic_artifact
from tests.people import person


class _Payload:
    """Unpickling this creates the marker file: the proof that a loader ran code."""

    target = ""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Payload.target),))


def _register(path: Path, family: str = "trading") -> ModelVersion:
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("bob"), name="m", artifact=path, family=family,
                                  role="student")


def _raw(path: Path, header: dict, data: bytes = b"") -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _meta(fmt: str = FORMAT["trading"]) -> dict:
    return {"__metadata__": {"format": fmt, "header": "{}"}}


def _nothing_recorded() -> None:
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar() == 0
        assert s.execute(select(func.count()).select_from(AuditEvent)
                         .where(AuditEvent.action == "model.registered")).scalar() == 0


def test_a_pickle_that_would_run_code_is_refused_at_registration_without_running(db_url: str,
                                                                              tmp_path: Path) -> None:
    _Payload.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with pytest.raises(UnsafeArtifact, match="not a safe model artifact"):
        _register(path)
    assert not (tmp_path / "pwned").exists()
    _nothing_recorded()


@pytest.mark.parametrize("case", ["zip", "truncated", "huge-header", "not-json", "no-metadata", "unknown-format",
                                  "overlap", "gap", "trailing", "bad-dtype", "too-short-range", "negative-dim"])
def test_files_that_are_not_safe_artifacts_are_refused(db_url: str, tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    if case == "zip":
        with zipfile.ZipFile(path, "w") as z:  # what torch.save writes: a zip holding a pickle
            z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    elif case == "truncated":
        good = synthetic_artifact(tmp_path / "good.safetensors")
        path.write_bytes(good.read_bytes()[:-3])
    elif case == "huge-header":
        path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    elif case == "not-json":
        path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    elif case == "no-metadata":
        _raw(path, {"w": f32}, bytes(8))
    elif case == "unknown-format":
        _raw(path, {**_meta("torch.pickle"), "w": f32}, bytes(8))
    elif case == "overlap":
        _raw(path, {**_meta(), "a": f32, "b": f32}, bytes(8))
    elif case == "gap":
        _raw(path, {**_meta(), "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
    elif case == "trailing":
        _raw(path, {**_meta(), "w": f32}, bytes(16))
    elif case == "bad-dtype":
        _raw(path, {**_meta(), "w": {"dtype": "PY_OBJECT", "shape": [1], "data_offsets": [0, 8]}}, bytes(8))
    elif case == "too-short-range":
        _raw(path, {**_meta(), "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8))
    else:
        _raw(path, {**_meta(), "w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(UnsafeArtifact, match="not a safe model artifact"):
        _register(path)
    _nothing_recorded()


def test_an_artifact_of_another_family_is_refused(db_url: str, tmp_path: Path) -> None:
    path = synthetic_artifact(tmp_path / "lm.safetensors", family="language")
    with pytest.raises(UnsafeArtifact, match="language artifact .* registered as trading"):
        _register(path, family="trading")
    assert _register(path, family="language").family == "language"


def test_a_fifo_is_refused_without_blocking(db_url: str, tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeArtifact, match="not a regular file"):
        artifacts.read_header(fifo)


def test_an_upload_already_in_the_store_is_checked_too(db_url: str, tmp_path: Path) -> None:
    """The API stores an upload first and registers it by SHA-256: the stored bytes are what is checked."""
    _Payload.target = str(tmp_path / "pwned")
    junk = tmp_path / "upload.bin"
    junk.write_bytes(pickle.dumps(_Payload()))
    stored = gov.get_artifact_store().put(junk)
    with pytest.raises(UnsafeArtifact):
        _register(stored)  # type: ignore[arg-type]
    assert not (tmp_path / "pwned").exists()
    _nothing_recorded()


def test_files_written_by_the_real_safetensors_library_are_read_as_declared(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    arrays = {"b": np.zeros((3, 2), np.float64), "a": np.ones(5, np.int8), "e": np.zeros((0, 4), np.float32)}
    save_file(arrays, str(tmp_path / "x"), metadata={"format": FORMAT["language"], "header": '{"role": "student"}'})
    found = artifacts.read_header(tmp_path / "x")
    assert found.family == "language" and found.header == {"role": "student"}
    assert found.tensors == {"b": ("F64", (3, 2)), "a": ("I8", (5,)), "e": ("F32", (0, 4))}
