"""Secrets at rest: webhook signing secrets are stored sealed (AES-256-GCM), never as they were given.

The key comes from ``CVG_SECRET_KEY`` (a Kubernetes Secret in the chart); without it, from a key file
made once under CVG_HOME (0600), which ``cvg doctor`` flags, since a key beside the data protects
little. A stored value reads ``enc:v1:`` + base64(nonce ‖ ciphertext); rows written before this
(plain text) still read, and ``is_sealed`` tells them apart. Once CVG_SECRET_KEY is set, a key file
left in home still opens what it sealed, until ``cvg webhooks reseal`` (or migration 0010) re-seals.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets as pysecrets
from pathlib import Path

from convergence.platform.errors import IntegrityError, InvalidInput, NotFound
from convergence.platform.settings import get_settings

PREFIX = "enc:v1:"
KEY_FILE = "secret.key"
_AAD = b"webhook"


def key_location() -> str:
    """Where the sealing key comes from, for `cvg doctor`: the environment, or the file beside the data."""
    settings = get_settings()
    return "CVG_SECRET_KEY" if settings.secret_key else str(settings.home / KEY_FILE)


def _derive(material: str) -> bytes:
    return hashlib.sha256(b"convergence secret key v1\0" + material.encode()).digest()


def _file_key(*, create: bool) -> bytes | None:
    """The key file's key (made once, 0600, when ``create``); None when there is none."""
    from convergence.governance._notes import read_key_file, write_key_file

    path = Path(get_settings().home) / KEY_FILE
    try:
        return _derive(read_key_file(path).strip())
    except NotFound:
        if not create:
            return None
    try:
        write_key_file(path, pysecrets.token_hex(32))
    except InvalidInput:  # another process made it first
        pass
    return _derive(read_key_file(path).strip())


def _key() -> bytes:
    """The key that seals: CVG_SECRET_KEY, else the key file in home."""
    secret_key = get_settings().secret_key
    return _derive(secret_key.get_secret_value()) if secret_key else _file_key(create=True)  # type: ignore[return-value]


def _opening_keys() -> list[bytes]:
    """Keys that may open a stored value: the sealing key first, then a key file it replaced."""
    keys = [_key()]
    if get_settings().secret_key:
        old = _file_key(create=False)
        if old is not None and old != keys[0]:
            keys.append(old)
    return keys


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def seal(plain: str, *, purpose: bytes = _AAD) -> str:
    """The stored form of ``plain``: a fresh nonce each time, so equal secrets do not look equal. ``purpose`` is
    bound to the ciphertext: a value sealed for one use (a console session) never opens as another's."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return PREFIX + base64.b64encode(nonce + AESGCM(_key()).encrypt(nonce, plain.encode(), purpose)).decode()


def _open(stored: str, purpose: bytes = _AAD, *, strict: bool = False) -> tuple[str, bool]:
    """(the secret, whether the sealing key opened it); IntegrityError when no key does, or, ``strict``, when
    the value is not sealed at all."""
    if not is_sealed(stored):
        if strict:
            raise IntegrityError("the value is not sealed")
        return stored, False  # written before secrets were sealed
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        blob = base64.b64decode(stored[len(PREFIX):], validate=True)
    except ValueError:
        blob = b""
    for index, key in enumerate(_opening_keys()):
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], purpose).decode(), index == 0
        except (InvalidTag, ValueError):
            continue
    raise IntegrityError(f"a sealed {purpose.decode(errors='replace')} value cannot be opened with this key",
                         hint=f"the key ({key_location()}) is not the one it was sealed with")


def unseal(stored: str, *, purpose: bytes = _AAD, strict: bool = False) -> str:
    """The secret a stored value holds; IntegrityError when it was sealed with another key or for another
    purpose (or edited), or, ``strict``, when it is not sealed."""
    return _open(stored, purpose, strict=strict)[0]


def resealed(stored: str) -> str | None:
    """``stored`` sealed with the sealing key, or None when it already is (plain rows are sealed)."""
    plain, current = _open(stored)
    return None if current else seal(plain)
