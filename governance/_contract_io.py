"""The model contract's one reader and writer of artifacts: safetensors tensors plus a JSON header, never
pickle.

Both families (and the compiled and INT8 copies) go through here; the header is checked by
``read_header`` before a byte of tensor data is read, and weights that do not fit the declared model are
refused the same way (``declared``), so a file that is not a safe artifact of its family is one
``UnsafeArtifact`` whoever loads it: a pipeline step, serving or drift.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convergence.governance._safeartifact import read_header
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
    return read_header(path).format


def load(path: Path, *, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors on CPU, header) of a safe artifact of format ``fmt``; UnsafeArtifact for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = read_header(path)
    if found.format != fmt:
        raise UnsafeArtifact(f"{Path(path).name} is a {found.format} artifact, not {fmt}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeArtifact(f"{Path(path).name} could not be read as safetensors: {type(exc).__name__}") from None
    return tensors, found.header


@contextlib.contextmanager
def declared(path: Path, what: str) -> Iterator[None]:
    """Around building a model from an artifact's tensors: whatever torch, onnxruntime or tokenizers raise for
    weights that do not fit the header becomes one ``UnsafeArtifact`` naming the file (never their message)."""
    try:
        yield
    except UnsafeArtifact:
        raise
    except Exception as exc:  # noqa: BLE001 - each library raises its own types for data that does not fit
        raise UnsafeArtifact(f"{Path(path).name} does not hold the {what} its header declares: "
                             f"{type(exc).__name__}") from None


# --- the monitoring signature ---------------------------------------------------------------------

LOG_DTYPE = "<f4"  # each answer's logged vector: little-endian float32, one block per row (what drift decodes)


@dataclasses.dataclass(frozen=True)
class Signature:
    """What a family logs per answer and what its reference profile watches: the names of the logged vector's
    values, the meaning of the logged output, and the watched columns with their positions in the vector
    (-1 is the logged output, when it is watched). The profile stores ``columns`` and ``positions``; drift reads
    exactly those."""

    logged: tuple[str, ...]
    output: str
    watched: tuple[str, ...]
    watch_output: bool = True  # False where the output depends on what the client asked for (language)

    @property
    def columns(self) -> list[str]:
        return [*self.watched, *(["output"] if self.watch_output else [])]

    @property
    def positions(self) -> list[int]:
        index = {name: i for i, name in enumerate(self.logged)}
        return [*(index[name] for name in self.watched), *([-1] if self.watch_output else [])]


def encode_log(vector: Any) -> bytes:
    """One answer's logged vector as stored (``LOG_DTYPE``)."""
    import numpy as np

    return np.asarray(vector, dtype=LOG_DTYPE).tobytes()
