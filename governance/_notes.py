"""Ed25519 signing of C2SP signed notes (the checkpoint format of transparency logs).

A signer key is ``PRIVATE+KEY+NAME+hex(keyhash)+base64(0x01 || 32-byte seed)``; its verifier key,
``NAME+hex(keyhash)+base64(0x01 || public key)``, is what auditors hold. ``NoteSigner`` is the interface a
KMS-backed signer would implement (name, key_hash, verifier_key, sign); the file/Secret form is built in.
Verification is the standalone auditor's (``auditor.verify_note``), so both sides share one reading.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from convergence.governance.auditor import key_hash, split_note
from convergence.platform.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # cryptography loads when a key is used, not with every `cvg` command that imports governance
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_ED25519 = b"\x01"  # the signature-type byte of an Ed25519 note key
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,199}$")  # no space, no '+': a note key name


class NoteSigner(Protocol):
    """What signs checkpoints: a key file here, a KMS in a deployment that wants one."""

    name: str
    key_hash: bytes

    def verifier_key(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


class Ed25519NoteSigner:
    """A signer from the text form of its key (never printed: ``repr`` shows the verifier key only)."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.name = name
        self._private = private
        self._public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_hash = key_hash(name, self._public)

    @classmethod
    def from_key(cls, text: str) -> Ed25519NoteSigner:
        parts = text.strip().split("+", 4)
        try:
            if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
                raise ValueError
            raw = base64.b64decode(parts[4], validate=True)
            if len(raw) != 33 or raw[0] != 1:
                raise ValueError
            signer = cls(parts[2], _private_key(raw[1:]))
        except ValueError:
            raise InvalidInput("not a ledger signing key (PRIVATE+KEY+NAME+HASH+BASE64, as `cvg audit keygen` "
                               "writes)") from None
        if signer.key_hash.hex() != parts[3]:
            raise InvalidInput(f"signing key {parts[2]}: its key hash does not match its key")
        return signer

    def verifier_key(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(_ED25519 + self._public).decode()}"

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"Ed25519NoteSigner({self.verifier_key()})"


def _private_key(seed: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def generate_key(name: str) -> str:
    """A new signing key's text form, named ``name`` (a checkpoint's origin)."""
    if not _NAME.match(name):
        raise InvalidInput(f"a key name has letters, digits and ._/:- only (no spaces, no '+'), got {name!r}")
    seed = secrets.token_bytes(32)
    signer = Ed25519NoteSigner(name, _private_key(seed))
    return f"PRIVATE+KEY+{name}+{signer.key_hash.hex()}+{base64.b64encode(_ED25519 + seed).decode()}"


def sign_note(text: str, *signers: NoteSigner) -> str:
    """``text`` (ending in a newline) as a signed note with one signature line per signer."""
    if not text.endswith("\n") or "\n\n" in text:
        raise InvalidInput("a note's text ends with one newline and has no blank line")
    lines = "".join(_signature_line(text, s) for s in signers)
    return f"{text}\n{lines}"


def cosign(note: str, signer: NoteSigner) -> str:
    """Add ``signer``'s signature to an already signed note (a witness cosigning a checkpoint)."""
    text, _sigs = split_note(note)
    return note + _signature_line(text, signer)


def _signature_line(text: str, signer: NoteSigner) -> str:
    blob = base64.b64encode(signer.key_hash + signer.sign(text.encode())).decode()
    return f"\u2014 {signer.name} {blob}\n"


def read_key_file(path: Path) -> str:
    """A key file's text: a small regular file (never a FIFO, a device or a directory), UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"no key file {path}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{path} is not a regular file, so not a key file")
        data = fh.read(4097)
    try:
        if len(data) > 4096:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "too long")
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not a key file (PRIVATE+KEY+NAME+HASH+BASE64)") from None


def write_key_file(path: Path, key: str) -> None:
    """Create ``path`` holding ``key``, readable by its owner only; never overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists: a signing key is never overwritten") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
        fh.flush()
        os.fsync(fh.fileno())
