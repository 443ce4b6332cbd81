"""Where signed checkpoints are published outside the database, so an insider who rewrites the database
cannot rewrite them too: an append-only directory, an S3 bucket with Object Lock in compliance mode.

Every anchor keeps one object per tree size (``checkpoint-000000001234.note``) and never overwrites one: a
second, different checkpoint for the same size is a fork of the ledger and is refused as such.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path
from typing import Any, Protocol

from convergence.platform.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    Unavailable,
)
from convergence.platform.settings import Settings

_FILE = re.compile(r"^checkpoint-(\d{12})\.note$")
MAX_NOTE_BYTES = 64 * 1024


def note_name(size: int, kind: str = "checkpoint") -> str:
    return f"{kind}-{size:012d}.note"


class Anchor(Protocol):
    """A place checkpoints are published to: ``publish`` returns where it went; ``latest`` reads the newest."""

    location: str

    def publish(self, size: int, note: str, kind: str = "checkpoint") -> str: ...

    def latest(self) -> tuple[str, str] | None: ...

    def notes(self) -> list[tuple[str, str]]: ...


def _forked(where: str, size: int) -> IntegrityError:
    return IntegrityError(f"{where} already holds a different checkpoint for {size} events: the ledger forked",
                          hint="compare both with `cvg audit verify --checkpoint`")


class DirectoryAnchor:
    """One file per checkpoint, created exclusively (never replaced, never through a symlink), fsync'd with its
    directory. Point it at storage the database's administrators cannot write (a WORM mount, another host)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def publish(self, size: int, note: str, kind: str = "checkpoint") -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / note_name(size, kind)
        data = note.encode()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        except FileExistsError:
            if _read_limited(target) != data:
                raise _forked(str(self.path), size) from None
            return str(target)
        except OSError as exc:
            raise Unavailable(f"cannot publish to {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return str(target)

    def _names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(n for n in os.listdir(self.path) if _FILE.match(n))

    def latest(self) -> tuple[str, str] | None:
        names = self._names()
        return self._read(names[-1]) if names else None

    def notes(self) -> list[tuple[str, str]]:
        """Every checkpoint published here, oldest first."""
        return [self._read(n) for n in self._names()]

    def _read(self, name: str) -> tuple[str, str]:
        target = self.path / name
        return str(target), _decoded(_read_limited(target), str(target))


def _read_limited(path: Path, limit: int = MAX_NOTE_BYTES) -> bytes:
    """At most ``limit`` bytes of a regular file, never through a symlink, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Unavailable(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{path} is not a regular file: something was planted where a checkpoint belongs")
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise Unavailable(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise InvalidInput(f"{path} is larger than a checkpoint can be ({MAX_NOTE_BYTES} bytes)")
    return data


class S3Anchor:
    """An S3 (or S3-compatible) bucket with Object Lock: each checkpoint is written in COMPLIANCE mode with a
    retention date, so nobody (not the bucket's owner, not root) can delete or overwrite it before then."""

    def __init__(self, url: str, *, endpoint: str | None, retention_days: int) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not url.startswith("s3://") or not bucket:
            raise InvalidInput(f"an S3 anchor looks like s3://BUCKET/PREFIX, got {url!r}")
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint, self.retention_days = endpoint, retention_days
        self.location = f"s3://{bucket}/{self.prefix}"

    def _client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def publish(self, size: int, note: str, kind: str = "checkpoint") -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + note_name(size, kind)
        where = f"s3://{self.bucket}/{key}"
        client = self._client()
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.retention_days)
        try:
            existing = self._get(client, key)
            if existing is not None:
                if existing != note:
                    raise _forked(f"s3://{self.bucket}", size)
                return where
            client.put_object(Bucket=self.bucket, Key=key, Body=note.encode(), ContentType="text/plain; charset=utf-8",
                              ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until, ChecksumAlgorithm="SHA256")
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"cannot publish the checkpoint to s3://{self.bucket}: {_s3_error(exc)}") from None
        return where

    def _get(self, client: Any, key: str) -> str | None:
        """The *first* version written under ``key``: the one Object Lock protects (a later PUT only adds a
        version on top, which must not pass for the published checkpoint)."""
        from botocore.exceptions import ClientError

        try:
            listed = client.list_object_versions(Bucket=self.bucket, Prefix=key).get("Versions", [])
            versions = [v for v in listed if v["Key"] == key]  # S3 lists a key's versions newest first
            extra = {"VersionId": versions[-1]["VersionId"]} if versions else {}
            body = client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read(MAX_NOTE_BYTES + 1)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return _decoded(body, f"s3://{self.bucket}/{key}")

    def latest(self) -> tuple[str, str] | None:
        found = self._notes(newest_only=True)
        return found[-1] if found else None

    def notes(self) -> list[tuple[str, str]]:
        """Every checkpoint published here, oldest first."""
        return self._notes(newest_only=False)

    def _notes(self, *, newest_only: bool) -> list[tuple[str, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            keys: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys += [o["Key"] for o in page.get("Contents", []) if _FILE.match(o["Key"][len(self.prefix):])]
            keys = sorted(keys)[-1:] if newest_only else sorted(keys)
            return [(f"s3://{self.bucket}/{key}", self._get(client, key) or "") for key in keys]
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"cannot read checkpoints from s3://{self.bucket}: {_s3_error(exc)}") from None


def _s3_error(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code')}: {error.get('Message')}" if error else type(exc).__name__


def configured(settings: Settings) -> list[Anchor]:
    """The anchors the settings name: always a directory (HOME/checkpoints by default), S3 when set."""
    anchors: list[Anchor] = [DirectoryAnchor(settings.ledger_anchor_dir or settings.home / "checkpoints")]
    if settings.ledger_anchor_s3:
        anchors.append(S3Anchor(settings.ledger_anchor_s3, endpoint=settings.ledger_anchor_s3_endpoint,
                                retention_days=settings.ledger_anchor_retention_days))
    return anchors


def fetch(location: str, settings: Settings) -> str:
    """A published checkpoint's text from a file path, ``s3://BUCKET/KEY`` or an http(s) URL."""
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        from botocore.exceptions import BotoCoreError, ClientError

        anchor = S3Anchor(f"s3://{bucket}", endpoint=settings.ledger_anchor_s3_endpoint, retention_days=1)
        try:
            text = anchor._get(anchor._client(), key)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"cannot read {location}: {_s3_error(exc)}") from None
        if text is None:
            raise NotFound(f"no checkpoint at {location}")
        return text
    if location.startswith(("http://", "https://")):
        from convergence.platform import netguard

        # The webhooks' network policy: no internal address unless allowed, fetched from the address checked.
        return _decoded(netguard.fetch(location, limit=MAX_NOTE_BYTES), location)
    path = Path(location.removeprefix("file://"))
    if not path.is_file():
        raise NotFound(f"no checkpoint file {location}")
    return _decoded(_read_limited(path), location)


def _decoded(data: bytes, where: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{where} is not a checkpoint (not UTF-8 text)") from None
