"""Secrets at rest: webhook signing secrets are stored sealed (AES-256-GCM), never as they were given.

The key comes from ``CVG_SECRET_KEY`` (a Kubernetes Secret in the chart); without it, from a key file
made once under CVG_HOME (0600), which ``cvg doctor`` flags, since a key beside the data protects
little. A stored value reads ``enc:v1:`` + base64(nonce ‖ ciphertext); rows written before this
(plain text) still read, and ``is_sealed`` tells them apart.
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


def key_location() -> str:
    """Where the sealing key comes from, for `cvg doctor`: the environment, or the file beside the data."""
    settings = get_settings()
    return "CVG_SECRET_KEY" if settings.secret_key else str(settings.home / KEY_FILE)


def _key() -> bytes:
    from convergence.governance._notes import read_key_file, write_key_file

    settings = get_settings()
    if settings.secret_key:
        material = settings.secret_key.get_secret_value()
    else:
        path = Path(settings.home) / KEY_FILE
        try:
            material = read_key_file(path).strip()
        except NotFound:
            try:
                write_key_file(path, pysecrets.token_hex(32))
            except InvalidInput:  # another process made it first
                pass
            material = read_key_file(path).strip()
    return hashlib.sha256(b"convergence secret key v1\0" + material.encode()).digest()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def seal(plain: str) -> str:
    """The stored form of ``plain``: a fresh nonce each time, so equal secrets do not look equal."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return PREFIX + base64.b64encode(nonce + AESGCM(_key()).encrypt(nonce, plain.encode(), b"webhook")).decode()


def unseal(stored: str) -> str:
    """The secret a stored value holds; IntegrityError when it was sealed with another key (or edited)."""
    if not is_sealed(stored):
        return stored  # written before secrets were sealed
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        blob = base64.b64decode(stored[len(PREFIX):], validate=True)
        return AESGCM(_key()).decrypt(blob[:12], blob[12:], b"webhook").decode()
    except (InvalidTag, ValueError):
        raise IntegrityError("a stored webhook secret cannot be opened with this key",
                             hint=f"the key ({key_location()}) is not the one it was sealed with") from None
