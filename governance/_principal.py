"""Who acts: a principal (one per issuer and subject), its roles, and how it proved who it is.

A leaf module (no database, no ledger) so every other module can take a ``Principal``: services
enforce roles and separation of duties on ``principal.id``, and the ledger writes ``principal.audit()``
into each event's payload, so the hash chain proves who acted and how they authenticated.
Display names are normalised here, once: NFKC, case-folded, no control or format characters.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Any

from convergence.platform.errors import InvalidInput

# What a principal may be allowed to do; a role is held through a grant (or an OIDC roles claim).
ACCESS_ROLES = ("registrant", "validator", "approver", "operator", "risk", "finance", "auditor", "admin")
KINDS = ("human", "service", "system")

# Issuers of principals that convergence itself vouches for (OIDC principals carry their issuer URL).
SERVICE_ISSUER = "urn:convergence:service-account"
SANDBOX_ISSUER = "urn:convergence:sandbox"
OS_ISSUER = "urn:convergence:os"
SYSTEM_ISSUER = "urn:convergence:system"
LEGACY_ISSUER = "urn:convergence:legacy"

METHODS = ("oidc", "api_key", "os", "sandbox", "system", "bootstrap")

# Scripts whose letters look alike: a name mixing two of them is refused (Latin "a" vs Cyrillic "а").
_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU", "GEORGIAN")
MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class AuthContext:
    """How this principal proved who it is, for this request or command."""

    method: str
    credential: str | None = None  # API key id (cvgk_…) or the token's jti; never a secret
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "credential": self.credential, "request_id": self.request_id}


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated identity with the roles it holds right now."""

    id: int
    name: str
    kind: str
    issuer: str
    subject: str
    roles: frozenset[str] = frozenset()
    auth: AuthContext = AuthContext("system")
    sandbox: bool = False

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def audit(self) -> dict[str, Any]:
        """What every audit event records about the actor, beside its display name."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "iss": self.issuer, "sub": self.subject,
                               "auth": self.auth.method}
        if self.auth.credential:
            out["credential"] = self.auth.credential
        if self.auth.request_id:
            out["request_id"] = self.auth.request_id
        if self.sandbox:
            out["sandbox"] = True  # acted through --as on a sandbox database: not an authenticated identity
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "issuer": self.issuer, "subject": self.subject,
                "roles": sorted(self.roles), "auth": self.auth.to_dict(), "sandbox": self.sandbox}


def _script(ch: str) -> str | None:
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return None
    return first if first in _CONFUSABLE_SCRIPTS else None


# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties) and blanks that render as nothing: refused in
# names even where their general category would pass (variation selectors, fillers, the braille blank).
_INVISIBLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
              (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
              (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))

# Letters that look like Latin ones (a subset of Unicode's confusables, UTS #39): the name key maps them, so
# "орѕ" (Cyrillic) has the key of "ops" and cannot be a second principal beside it. Names keep their case
# when shown, so capitals are mapped before case-folding (Greek "ΤΟΜ" is "TOM", though "τομ" is not "tom"),
# and i, I, l, 1 and | are one letter ("Ivan" and "lvan" look the same).
_CAPITALS = str.maketrans({
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X", "А": "A", "В": "B", "Е": "E", "Ѕ": "S", "І": "I", "Ј": "J", "К": "K", "М": "M",
    "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "Ү": "Y",
})
_SKELETON = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "l", "ї": "l", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "ү": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "ӏ": "l", "α": "a", "β": "b", "ε": "e", "ι": "l", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "ɑ": "a", "ᴀ": "a", "ɡ": "g", "ı": "l", "ɩ": "l", "ʏ": "y", "ᴏ": "o", "ʀ": "r", "ꜱ": "s", "ᴜ": "u",
    "0": "o", "1": "l", "|": "l", "i": "l",
})
_REF_LIKE = ("#", "os:", "sa:", "oidc:", "sandbox:")


def _invisible(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _INVISIBLE)


def name_key(display: str) -> str:
    """The key names are unique by: case-folded, with look-alike letters mapped to the Latin ones."""
    return display.translate(_CAPITALS).casefold().translate(_SKELETON).replace("rn", "m")


def normalize_name(text: str, *, what: str = "name") -> tuple[str, str]:
    """(display name, key) of a principal name: NFKC, trimmed; the key is case-folded and look-alike letters
    are mapped, so "Quinn", "ＱＵＩＮＮ" and "Ԛuinn" are one name.

    Control, format and default-ignorable characters (escape sequences, zero-width, bidi, variation
    selectors, fillers), whitespace other than single inner spaces, a word mixing look-alike scripts, and
    names that read like a reference (#12, sa:…) are refused with one line."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    display = unicodedata.normalize("NFKC", text)
    if not display or display != display.strip():
        raise InvalidInput(f"{what} {text!r} is empty or starts or ends with whitespace")
    if len(display) > MAX_NAME:
        raise InvalidInput(f"{what} is longer than {MAX_NAME} characters")
    for ch in display:
        if ch != " " and (unicodedata.category(ch)[0] in "CZ" or _invisible(ch)):
            raise InvalidInput(f"{what} {text!r} contains the invisible or control character U+{ord(ch):04X} "
                               f"({unicodedata.name(ch, 'unnamed')}); names must be visible text")
    if "  " in display:
        raise InvalidInput(f"{what} {text!r} contains consecutive spaces")
    for word in display.split(" "):
        scripts = {script for ch in word if unicodedata.category(ch)[0] == "L" and (script := _script(ch))}
        if len(scripts) > 1:
            raise InvalidInput(f"{what} {text!r} mixes {' and '.join(sorted(scripts))} letters in one word, which "
                               "look alike; use one script per word")
    return display, name_key(display)


def check_display_name(text: str, *, what: str = "name") -> tuple[str, str]:
    """A name a principal will be shown by: a valid name that does not read like a reference."""
    display, key = normalize_name(text, what=what)
    if display.startswith(_REF_LIKE):
        raise InvalidInput(f"{what} {text!r} reads like a reference (#ID, sa:…, os:…); choose a plain name")
    return display, key


def check_text(text: str | None, *, what: str, max_len: int = 4000) -> str | None:
    """Free text a person types (reasons, descriptions): no control or format characters except newlines
    and tabs, so nothing reaches a terminal or a log as an escape sequence."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    if len(text) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    for ch in text:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidInput(f"{what} contains the control or invisible character U+{ord(ch):04X}")
    return text
