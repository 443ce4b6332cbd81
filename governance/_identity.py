"""Principals in the database: one row per (issuer, subject), the roles its active grants give it, the
sandbox flag, and the one-time bootstrap of the first admins.

A principal appears the first time it is seen (an OIDC subject's first token, an OS account's first
command, a service account's creation) with an audited ``principal.created``. Names are unique after
normalisation, so "Quinn" and "quinn\\u200b" can never be two people (the second is refused outright).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import RULES, record_refusal, refuse, require
from convergence.governance._ledger import Subject, append, head, serialize_writes
from convergence.governance._models import ControlSetting, PrincipalRow, RoleGrant
from convergence.governance._replay import state_entries
from convergence.governance._principal import (
    ACCESS_ROLES,
    OS_ISSUER,
    SANDBOX_ISSUER,
    SERVICE_ISSUER,
    SYSTEM_ISSUER,
    AuthContext,
    Principal,
    check_display_name,
    normalize_name,
)
from convergence.platform.db import utcnow
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound, PolicyViolation
from convergence.platform.settings import get_settings

HUMAN_ONLY_ROLES = frozenset({"validator", "approver"})


# --- the sandbox flag -------------------------------------------------------------------------

def is_sandbox(*, session: Session) -> bool:
    """A sandbox database (the demo's) lets ``--as NAME`` pick an identity; every event then says so."""
    row = session.get(ControlSetting, "sandbox")
    return bool(row is not None and row.value)


def make_sandbox(*, session: Session) -> Principal:
    """Mark a new, empty database as a sandbox (the OS account does it, audited). A ledger that already
    holds events is never turned into one: that would let --as rewrite who did what from then on."""
    serialize_writes(session=session)
    if is_sandbox(session=session):
        return os_principal(session=session)
    seq, _ = head(session=session)
    if seq:
        message = f"this database already holds {seq:,} audit events; only a new, empty database can become a sandbox"
        me = os_principal(session=session)
        session.commit()  # the account's first sighting stands; the refusal is then its own transaction
        record_refusal(session=session, principal=me, permission="control.sandbox", rule="sandbox-only",
                       message=message, subject=Subject("control", "sandbox"))
        raise PolicyViolation(message, hint="point CVG_HOME or CVG_DATABASE_URL at a new database")
    actor = os_principal(session=session)
    session.add(ControlSetting(key="sandbox", value=True, updated_at=utcnow(), updated_by_id=actor.id))
    actor = to_principal(session.get(PrincipalRow, actor.id), auth=actor.auth, session=session)
    append(session=session, principal=actor, action="control.sandbox_enabled", subject=Subject("control", "sandbox"),
           payload={"meaning": "--as NAME may act as anyone here; events made that way carry sandbox: true"})
    return actor


# --- rows and principals ----------------------------------------------------------------------

def active_roles(*, session: Session, principal_id: int) -> frozenset[str]:
    rows = session.execute(select(RoleGrant.role).where(RoleGrant.principal_id == principal_id,
                                                        RoleGrant.status == "active")).scalars()
    return frozenset(rows)


def to_principal(row: PrincipalRow | None, *, auth: AuthContext, session: Session | None = None,
                 roles: Iterable[str] = (), sandbox: bool = False) -> Principal:
    """The ``Principal`` for a row: its active grants (when a session is given) plus ``roles``."""
    if row is None:
        raise NotFound("no such principal")
    held = set(roles) | (active_roles(session=session, principal_id=row.id) if session is not None else set())
    return Principal(id=row.id, name=row.name, kind=row.kind, issuer=row.issuer, subject=row.subject,
                     roles=frozenset(held & set(ACCESS_ROLES)), auth=auth, sandbox=sandbox)


def find_principal(*, session: Session, issuer: str, subject: str) -> PrincipalRow | None:
    return session.execute(select(PrincipalRow).where(PrincipalRow.issuer == issuer,
                                                      PrincipalRow.subject == subject)).scalar_one_or_none()


def _free_name(session: Session, display: str, key: str, issuer: str, subject: str,
               issued: bool) -> tuple[str, str]:
    """The name itself if nobody has it, else ``name@issuer-host``, else (for an identity an issuer vouches
    for, who must always be able to sign in) ``name@issuer-host~hash``: display names stay unique."""
    import hashlib

    host = urlparse(issuer).hostname or issuer.rsplit(":", 1)[-1]
    tag = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:8]
    for suffix in ("", f"@{host}", f"@{host}~{tag}")[:3 if issued else 2]:
        alt_display, alt_key = (display, key) if not suffix else normalize_name((display[:100] + suffix)[:200])
        if session.execute(select(PrincipalRow.id).where(PrincipalRow.name_key == alt_key)).first() is None:
            return alt_display, alt_key
    raise IntegrityError(f"the name {display!r} is already taken by another principal",
                         hint="choose another name for the service account or the OIDC name claim")


def ensure_principal(*, session: Session, issuer: str, subject: str, name: str, kind: str,
                     auth: AuthContext, by: Principal | None = None, description: str | None = None) -> PrincipalRow:
    """The row for (issuer, subject), created and audited on first sight (by itself unless ``by`` is given)."""
    row = find_principal(session=session, issuer=issuer, subject=subject)
    if row is not None:
        return row
    display, key = _free_name(session, *check_display_name(name), issuer, subject, issued=by is None)
    row = PrincipalRow(issuer=issuer, subject=subject, name=display, name_key=key, kind=kind, description=description,
                       created_at=utcnow(), created_by_id=by.id if by else None)
    session.add(row)
    session.flush()
    actor = by or to_principal(row, auth=auth)
    append(session=session, principal=actor, action="principal.created", subject=Subject("principal", str(row.id)),
           payload={"issuer": issuer, "subject": subject, "name": display, "kind": kind,
                    **({"state": state} if (state := state_entries(session, row)) else {})})
    return row


def os_account() -> str:
    """The operating-system account running this process, from its effective uid — never from LOGNAME or
    USER, which anyone can set (uidNNN when the uid has no passwd entry, as in containers)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid{os.geteuid()}"


def os_principal(*, session: Session, request_id: str | None = None) -> Principal:
    user = os_account()
    auth = AuthContext("os", credential=None, request_id=request_id)
    row = ensure_principal(session=session, issuer=OS_ISSUER, subject=user, name=user, kind="human", auth=auth)
    return to_principal(row, auth=auth, session=session)


def sandbox_principal(*, session: Session, name: str, request_id: str | None = None) -> Principal:
    """``--as NAME`` on a sandbox database: the principal of that name (any kind), created if new."""
    display, key = check_display_name(name, what="--as")
    auth = AuthContext("sandbox", request_id=request_id)
    row = session.execute(select(PrincipalRow).where(PrincipalRow.name_key == key)).scalar_one_or_none()
    if row is None:
        row = ensure_principal(session=session, issuer=SANDBOX_ISSUER, subject=key, name=display, kind="human",
                               auth=auth)
    return to_principal(row, auth=auth, session=session, sandbox=True)


def system_principal(*, session: Session, name: str) -> Principal:
    """A part of convergence acting on its own (a serving replica recording usage): no roles, audited by name."""
    auth = AuthContext("system")
    row = ensure_principal(session=session, issuer=SYSTEM_ISSUER, subject=name, name=f"system:{name}", kind="system",
                           auth=auth)
    return to_principal(row, auth=auth)


# --- looking principals up --------------------------------------------------------------------

_PREFIXES = {"os": OS_ISSUER, "sa": SERVICE_ISSUER, "sandbox": SANDBOX_ISSUER}


def resolve_ref(*, session: Session, ref: str, create_as: Principal | None = None, typed: bool = False) -> PrincipalRow:
    """A principal from how people write it: ``#12``, ``sa:NAME``, ``os:NAME``, ``oidc:SUBJECT`` (the
    configured issuer), ``sandbox:NAME`` or a display name. With ``create_as``, a person not seen yet
    (os:, oidc:, sandbox:) is created, so roles can be granted before their first sign-in. With ``typed``
    (granting, revoking), a bare display name is refused outside a sandbox: display names are first come,
    first served, so power is given to an identity, never to whoever took a name first."""
    ref = (ref or "").strip()
    if ref.startswith("#") and ref[1:].isascii() and ref[1:].isdigit():
        row = session.get(PrincipalRow, int(ref[1:])) if len(ref) < 12 and int(ref[1:]) < 2**31 else None
        if row is None:
            raise NotFound(f"no principal with id {ref[1:]}")
        return row
    prefix, sep, rest = ref.partition(":")
    if sep and (prefix in _PREFIXES or prefix == "oidc") and rest:
        issuer = _PREFIXES.get(prefix) or get_settings().oidc_issuer
        if not issuer:
            raise InvalidInput("oidc:SUBJECT needs CVG_OIDC_ISSUER to say which issuer the subject belongs to")
        # an OS account and an OIDC subject are what they are (case included); sa: and sandbox: names are keys
        subject = normalize_name(rest, what="name")[1] if prefix in ("sa", "sandbox") else rest
        row = find_principal(session=session, issuer=issuer, subject=subject)
        if row is None and create_as is not None and prefix != "sa":
            return ensure_principal(session=session, issuer=issuer, subject=subject, name=rest, kind="human",
                                    auth=create_as.auth, by=create_as)
        if row is None:
            raise NotFound(f"no principal {ref!r}", hint="`cvg principals list` shows who exists")
        return row
    display, key = normalize_name(ref, what="principal")
    sandbox = is_sandbox(session=session)
    if typed and not sandbox:
        raise InvalidInput(f"name whom you mean exactly: #ID, sa:NAME, os:NAME or oidc:SUBJECT, not the display "
                           f"name {ref!r}", hint="`cvg principals list` shows ids, issuers and subjects")
    row = session.execute(select(PrincipalRow).where(PrincipalRow.name_key == key)).scalar_one_or_none()
    if row is None and create_as is not None and sandbox:
        return ensure_principal(session=session, issuer=SANDBOX_ISSUER, subject=key, name=display, kind="human",
                                auth=create_as.auth, by=create_as)  # a sandbox: a bare name is a sandbox person
    if row is None:
        raise NotFound(f"no principal named {ref!r}",
                       hint="people appear at their first sign-in; name one before that as os:NAME or oidc:SUBJECT")
    return row


def principal_to_dict(session: Session, row: PrincipalRow) -> dict[str, Any]:
    grants = session.execute(select(RoleGrant).where(RoleGrant.principal_id == row.id,
                                                     RoleGrant.status.in_(("active", "pending")))
                             .order_by(RoleGrant.id)).scalars()
    roles, pending = [], []
    for g in grants:
        (roles if g.status == "active" else pending).append(g.role if g.status == "active" else
                                                            {"grant_id": g.id, "role": g.role})
    return {"id": row.id, "name": row.name, "kind": row.kind, "issuer": row.issuer, "subject": row.subject,
            "roles": sorted(roles), "pending": pending, "description": row.description,
            "created_at": row.created_at.isoformat(), "disabled": row.disabled_at is not None}


def list_principals(*, session: Session, principal: Principal) -> list[dict[str, Any]]:
    require(session=session, principal=principal, permission="principal.read")
    rows = session.execute(select(PrincipalRow).order_by(PrincipalRow.id)).scalars().all()
    return [principal_to_dict(session, row) for row in rows]


def show_principal(*, session: Session, principal: Principal, ref: str) -> dict[str, Any]:
    if ref not in ("me", "") :
        require(session=session, principal=principal, permission="principal.read")
        return principal_to_dict(session, resolve_ref(session=session, ref=ref))
    return {**principal.to_dict(), "rules": RULES}


# --- the first admins -------------------------------------------------------------------------

def bootstrap(*, session: Session, principal: Principal, grants: list[tuple[str, str]],
              keys: bool = False) -> tuple[list[RoleGrant], list[dict[str, Any]]]:
    """Install the first admins (two at least, so every later grant can have a second admin) and any other
    roles, in one audited act by whoever holds the database; with ``keys``, an API key for each admin
    service account (shown once). Refused once an admin exists, and for oneself."""
    serialize_writes(session=session)
    if session.execute(select(RoleGrant.id).where(RoleGrant.role == "admin",
                                                  RoleGrant.status == "active")).first() is not None:
        refuse(session=session, principal=principal, permission="principal.manage", rule="bootstrap-once",
               message="this control plane already has an admin; roles are granted with `cvg principals grant` "
                       "and a second admin's approval", subject=Subject("control", "bootstrap"))
    if keys and not is_sandbox(session=session):
        refuse(session=session, principal=principal, permission="principal.manage", rule="sandbox-only",
               message="bootstrap issues keys only on a sandbox: whoever ran it would hold every admin's key",
               subject=Subject("control", "bootstrap"),
               hint="name people as the first admins (os:NAME or oidc:SUBJECT); issue keys later, under four eyes")
    out, admins = [], set()
    for ref, role in grants:
        if role not in ACCESS_ROLES:
            raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ACCESS_ROLES)}")
        row = _bootstrap_target(session, ref, principal)
        if row.id == principal.id:
            refuse(session=session, principal=principal, permission="principal.manage", rule="no-self-grant",
                   message=f"{principal.name} cannot bootstrap a role for themselves",
                   subject=Subject("principal", str(row.id)))
        if role in HUMAN_ONLY_ROLES and row.kind != "human" and not is_sandbox(session=session):
            refuse(session=session, principal=principal, permission="principal.manage", rule="human-only-role",
                   message=f"{row.name} is a {row.kind} account and {role} is held by people",
                   subject=Subject("principal", str(row.id)))
        admins.update([row.id] if role == "admin" else [])
        grant = RoleGrant(principal_id=row.id, role=role, status="active", reason="bootstrap",
                          requested_by_id=principal.id, requested_at=utcnow(), decided_by_id=principal.id,
                          decided_at=utcnow())
        session.add(grant)
        session.flush()
        append(session=session, principal=principal, action="role.bootstrapped", subject=Subject("principal", str(row.id)),
               payload={"grant_id": grant.id, "role": role, "name": row.name, "state": state_entries(session, grant)})
        out.append(grant)
    if len(admins) < 2:
        raise InvalidInput("bootstrap needs at least two different admins (--admin twice), so that every later "
                           "role grant can be approved by a second admin")
    minted = []
    if keys:
        from convergence.governance._grants import mint_api_key

        for row_id in sorted(admins):
            row = session.get(PrincipalRow, row_id)
            if row is not None and row.kind == "service":
                key, secret = mint_api_key(session=session, principal=principal, account=row, description="bootstrap",
                                           approved=True)
                minted.append({"account": row.name, "key_id": key.key_id, "key": secret})
    return out, minted


def _bootstrap_target(session: Session, ref: str, actor: Principal) -> PrincipalRow:
    if ref.startswith("sa:"):
        name = ref[3:]
        display, key = normalize_name(name, what="service account name")
        return ensure_principal(session=session, issuer=SERVICE_ISSUER, subject=key, name=display, kind="service",
                                auth=actor.auth, by=actor)
    return resolve_ref(session=session, ref=ref, create_as=actor)
