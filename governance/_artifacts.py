"""Content-addressed artifact store: model files and evidence, named by their SHA-256.

Writes go to a temporary file and are renamed into place, so a killed process never leaves a
half-written blob under a valid name; loading re-hashes and refuses a mismatch. The local store
is the embedded default; ``ArtifactStore`` is the interface an S3-compatible store implements.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from convergence.platform.errors import IntegrityError, InvalidInput, NotFound, Unavailable
from convergence.platform.settings import get_settings

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size: int


class ArtifactStore(Protocol):
    def put(self, path: Path) -> StoredArtifact: ...
    def put_bytes(self, data: bytes) -> StoredArtifact: ...
    def fetch(self, uri: str, *, sha256: str) -> Path: ...
    def locate(self, sha256: str) -> StoredArtifact: ...
    def discard(self, sha256: str) -> bool: ...


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError as exc:
        raise NotFound(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path} is a directory; pass a file (archive a directory first)") from exc
    return h.hexdigest(), size


class LocalArtifactStore:
    """Blobs under ``root/sha256/ab/abcdef…``; the URI is the blob's file:// URL."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put(self, path: Path) -> StoredArtifact:
        path = Path(path)
        if not path.exists():
            raise NotFound(f"no such file: {path}")
        if path.is_dir():
            raise InvalidInput(f"{path} is a directory; pass a file (archive a directory first)")
        self.root.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(tmp, h.hexdigest(), size)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes) -> StoredArtifact:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(tmp, hashlib.sha256(data).hexdigest(), len(data))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _commit(self, tmp: str, digest: str, size: int) -> StoredArtifact:
        final = self._path(digest)
        if not final.exists():  # content-addressed: an existing blob with this name is this content
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            os.chmod(final, 0o444)
        return StoredArtifact(final.as_uri(), digest, size)

    def discard(self, sha256: str) -> bool:
        """Remove a blob whose retention has expired (retention decides; nothing else calls this). False when
        it was already gone."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidInput("an artifact is named by its SHA-256: 64 lowercase hex digits")
        path = self._path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def locate(self, sha256: str) -> StoredArtifact:
        """A blob already in the store, by its SHA-256 (an upload's answer names it)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidInput("an artifact is named by its SHA-256: 64 lowercase hex digits")
        path = self._path(sha256)
        if not path.is_file():
            raise NotFound(f"no artifact with SHA-256 {sha256[:12]}… in the store",
                           hint="upload it first (POST /artifacts; cvg does this for you)")
        return StoredArtifact(path.as_uri(), sha256, path.stat().st_size)

    def fetch(self, uri: str, *, sha256: str) -> Path:
        """The local path of a stored blob, after checking that its bytes still hash to ``sha256``."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise Unavailable(f"artifact {uri} is not in a local store; this store reads file:// URIs only")
        path = Path(unquote(parsed.path))
        if not path.exists():
            raise NotFound(f"artifact {uri} is missing from the store")
        actual, _ = sha256_file(path)
        if actual != sha256:
            raise IntegrityError(f"artifact {path} has SHA-256 {actual[:12]}…, the registry recorded {sha256[:12]}…",
                                 hint="the file was changed after registration; restore it or register a new version")
        return path


def get_artifact_store() -> ArtifactStore:
    url = get_settings().resolved_artifact_store
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalArtifactStore(Path(unquote(parsed.path)))
    if parsed.scheme in {"s3", "gs", "minio"}:
        raise Unavailable(f"artifact store {url}: S3-compatible stores are not available in this build",
                          hint="unset CVG_ARTIFACT_STORE to use the local store")
    raise InvalidInput(f"CVG_ARTIFACT_STORE must be a file:// or s3:// URL, got {url!r}")
