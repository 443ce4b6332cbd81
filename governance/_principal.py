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
_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC")
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


def normalize_name(text: str, *, what: str = "name") -> tuple[str, str]:
    """(display name, key) of a principal name: NFKC, trimmed; the key is also case-folded.

    Control and format characters (escape sequences, zero-width and bidi marks), whitespace other than
    single inner spaces, and names mixing look-alike scripts are refused with one line."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be text")
    display = unicodedata.normalize("NFKC", text)
    if not display or display != display.strip():
        raise InvalidInput(f"{what} {text!r} is empty or starts or ends with whitespace")
    if len(display) > MAX_NAME:
        raise InvalidInput(f"{what} is longer than {MAX_NAME} characters")
    scripts: set[str] = set()
    for ch in display:
        category = unicodedata.category(ch)
        if ch != " " and (category[0] in "CZ"):
            raise InvalidInput(f"{what} {text!r} contains the invisible or control character U+{ord(ch):04X} "
                               f"({unicodedata.name(ch, 'unnamed')}); names must be visible text")
        if category[0] == "L" and (script := _script(ch)):
            scripts.add(script)
    if "  " in display:
        raise InvalidInput(f"{what} {text!r} contains consecutive spaces")
    if len(scripts) > 1:
        raise InvalidInput(f"{what} {text!r} mixes {' and '.join(sorted(scripts))} letters, which look alike; "
                           "use one script")
    return display, display.casefold()


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
