"""The one reader and writer of model artifacts: safetensors tensors plus a JSON header, never pickle.

Both families (and the INT8 copy) go through here; the header is checked by governance's
``read_header`` before a byte of tensor data is read, so a file that is not a safe artifact is one
``UnsafeArtifact`` whoever loads it: a pipeline step, serving or drift.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from convergence.governance import artifacts
from convergence.platform.errors import UnsafeArtifact


def _plain(value: Any) -> Any:
    """JSON for the header: numpy scalars and arrays become numbers and lists; anything else is refused."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot go into an artifact header")


def save(path: Path, *, fmt: str, header: dict[str, Any], tensors: dict[str, Any]) -> Path:
    """Write ``tensors`` (name → torch tensor) and ``header`` as a safe artifact, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    plain = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    metadata = {"format": fmt, "header": json.dumps(header, sort_keys=True, default=_plain)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        save_file(plain, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def format_of(path: Path) -> str:
    """The format a safe artifact declares (its header alone is read and checked)."""
    return artifacts.read_header(path).format


def load(path: Path, *, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors on CPU, header) of a safe artifact of format ``fmt``; UnsafeArtifact for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = artifacts.read_header(path)
    if found.format != fmt:
        raise UnsafeArtifact(f"{Path(path).name} is a {found.format} artifact, not {fmt}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeArtifact(f"{Path(path).name} could not be read as safetensors: {type(exc).__name__}") from None
    return tensors, found.header
