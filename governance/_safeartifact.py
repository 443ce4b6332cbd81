"""Safe model artifacts: what a model file must be before it is registered, served or loaded.

A model artifact is data, never code: a safetensors file (an 8-byte little-endian header length, a JSON
header giving each tensor's dtype, shape and byte range, then the raw bytes) whose ``__metadata__`` holds
``format`` (one of ``FORMATS``) and ``header`` (JSON: role, architecture, and whatever else the loader
needs). This module reads only that header, with the standard library, so registration can refuse any
other file (a pickle, a zip, truncated bytes) without torch; the pipelines write these files and serving
and drift read them through the same check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

from convergence.platform.errors import UnsafeArtifact

# Format name → the model family it belongs to. A new encoding gets a new name; old names stay readable.
FORMATS = {"convergence.trading.mlp.v2": "trading", "convergence.language.lm.v2": "language",
           "convergence.trading.onnx.v1": "trading"}  # an onnxruntime graph: its bytes are one uint8 tensor
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 64 << 20  # a BPE vocabulary in the header is ~1 MB; anything near this is not ours
MAX_TENSORS = 100_000


@dataclasses.dataclass(frozen=True)
class ArtifactHeader:
    """What a safe artifact declares: its format and family, the loader's header, and its tensors."""

    format: str
    family: str
    header: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name → (dtype, shape)


def _refuse(path: Path, why: str) -> UnsafeArtifact:
    return UnsafeArtifact(f"{path.name} is not a safe model artifact: {why}",
                          hint="artifacts are data, never code: a safetensors file with a convergence header "
                               "(`cvg models convert ID` converts a first-wave pickled artifact)")


def _read_raw_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(parsed JSON header, header length, file size); refuses what cannot be a safetensors file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise _refuse(path, "no such file") from None
    except OSError as exc:
        raise _refuse(path, f"cannot be opened ({exc.strerror or 'error'})") from None
    with os.fdopen(fd, "rb") as fh:
        stat = os.fstat(fh.fileno())
        if not (stat.st_mode & 0o170000 == 0o100000):
            raise _refuse(path, "not a regular file")
        size = stat.st_size
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _refuse(path, "shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise _refuse(path, "no safetensors header (a pickle, an archive or truncated bytes?)")
        raw = fh.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(path, "its header is not JSON") from None
    if not isinstance(parsed, dict):
        raise _refuse(path, "its header is not a JSON object")
    return parsed, length, size


def _check_tensors(path: Path, raw: dict[str, Any], data_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor's dtype, shape and byte range is consistent, and together they tile the data exactly."""
    if len(raw) > MAX_TENSORS:
        raise _refuse(path, "too many tensors")
    tensors, spans = {}, []
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _refuse(path, f"tensor {name[:60]!r} is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        ints = isinstance(shape, list) and all(type(d) is int and 0 <= d < 1 << 40 for d in shape)
        if dtype not in DTYPE_BYTES or not ints or not (
                isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise _refuse(path, f"tensor {name[:60]!r} has an unknown dtype or a malformed shape or range")
        count = 1
        for d in shape:
            count *= d
        start, end = offsets
        if not 0 <= start <= end <= data_bytes or end - start != count * DTYPE_BYTES[dtype]:
            raise _refuse(path, f"tensor {name[:60]!r} does not fit its byte range")
        tensors[name] = (dtype, tuple(shape))
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise _refuse(path, "its tensors overlap or leave gaps")
        position = end
    if position != data_bytes:
        raise _refuse(path, "bytes follow the last tensor")
    return tensors


def read_header(path: Path | str) -> ArtifactHeader:
    """The declared contents of a safe artifact, read from its header alone; UnsafeArtifact for anything else."""
    path = Path(path)
    raw, length, size = _read_raw_header(path)
    meta = raw.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _refuse(path, "no convergence metadata in its header")
    fmt = meta.get("format")
    if fmt not in FORMATS:
        raise _refuse(path, f"unknown format {str(fmt)[:80]!r} (known: {', '.join(sorted(FORMATS))})")
    try:
        header = json.loads(meta.get("header", ""))
    except (ValueError, RecursionError):
        raise _refuse(path, "its convergence header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse(path, "its convergence header is not a JSON object")
    tensors = _check_tensors(path, raw, size - 8 - length)
    return ArtifactHeader(format=fmt, family=FORMATS[fmt], header=header, tensors=tensors)


def check_artifact(path: Path | str, *, family: str) -> ArtifactHeader:
    """What registration asks: a safe artifact, and one of the family it is registered as."""
    found = read_header(path)
    if found.family != family:
        raise UnsafeArtifact(f"{Path(path).name} is a {found.family} artifact ({found.format}), registered as "
                             f"{family}", hint=f"register it with --family {found.family}")
    return found
