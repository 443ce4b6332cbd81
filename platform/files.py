"""Writing the files people name with ``-o``: exports, cosigned checkpoints, compiled pipelines, tokens.

A file is written under a fresh random name created exclusively in the target's folder (never following
a symlink), then renamed over the target, so a reader never sees half a file and a symlink planted at the
target or beside it is never written through. A target that exists and is not a regular file (a folder,
a device, a FIFO, a symlink) is refused with one line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from convergence.platform.errors import InvalidInput, Unavailable

__all__ = ["atomic_output", "check_output"]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def check_output(target: Path, option: str = "--output") -> None:
    """Refuse a target that exists and is not a regular file, or whose folder is missing (before any work)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise InvalidInput(f"{option} {target}: {exc.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise InvalidInput(f"{option} {target} is {kind}; name a regular file (it is replaced) or a new one")
    folder = target.parent
    if not folder.is_dir():
        raise InvalidInput(f"{option} {target}: the folder {folder} does not exist")


def _create(target: Path, mode: int, option: str) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(8):  # a name taken by someone else (or planted) is simply another name
        tmp = target.with_name(f".{target.name[:200]}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise InvalidInput(f"{option} {target}: cannot create a file in {target.parent}: {exc.strerror}") from None
    raise Unavailable(f"{option} {target}: no free temporary name in {target.parent}")


@contextlib.contextmanager
def atomic_output(target: Path | str, *, mode: int = 0o644, option: str = "--output") -> Iterator[IO[bytes]]:
    """A binary file to write ``target``'s new content to; it replaces ``target`` only when the block ends
    without an error (else it is removed). ``mode`` 0o600 for secrets."""
    target = Path(target)
    check_output(target, option)
    fd, tmp = _create(target, mode, option)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        check_output(target, option)  # planted meanwhile? rename would replace the link itself, but say so
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a quota: one line, not a traceback
            raise Unavailable(f"{option} {target}: cannot write: {exc.strerror or exc}") from None
        raise
