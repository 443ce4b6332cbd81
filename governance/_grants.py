"""Role grants (four eyes: one admin asks, another approves), service accounts and their API keys.

An API key is ``cvgk_<12 hex>.<secret>``: the first part is a public id (listed, audited, revocable), the
secret is shown once and stored only as its SHA-256 (a 256-bit random secret needs no slow hash). Every
change here is audited in the same transaction; every refusal is audited on its own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import distinct, refuse, require
from convergence.governance._identity import (
    HUMAN_ONLY_ROLES,
    ensure_principal,
    is_sandbox,
    resolve_ref,
)
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import ApiKey, PrincipalRow, RoleGrant
from convergence.governance._principal import ACCESS_ROLES, SERVICE_ISSUER, Principal, check_display_name, check_text
from convergence.governance._replay import state_entries
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation, Unauthenticated

KEY_PREFIX = "cvgk_"


def _subject(row_id: int) -> Subject:
    return Subject("principal", str(row_id))


def _admin_act(session: Session, principal: Principal, reason: str | None = None) -> str | None:
    """How every admin change starts: the admin role, the reason as clean text, the write lock."""
    require(session=session, principal=principal, permission="principal.manage")
    reason = check_text(reason, what="reason")
    serialize_writes(session=session)
    return reason


def _second_admin(session: Session, principal: Principal, *, requester_id: int, grantee_id: int, rule: str,
                  what: str, kind: str, verb: str, payload: dict[str, Any]) -> None:
    """Four eyes on an admin act: never by whoever asked for it, never for oneself (or an account one keys)."""
    for other_id, rule_, message in (
            (requester_id, rule, f"{principal.name} requested {what} and cannot {verb} it"),
            (grantee_id, "no-self-grant", f"{principal.name} cannot {verb} {kind} for themselves")):
        distinct(session=session, principal=principal, other_id=other_id, permission="principal.manage",
                 rule=rule_, message=message, subject=_subject(grantee_id), payload=payload)


# --- role grants ------------------------------------------------------------------------------

def grant_to_dict(grant: RoleGrant, names: dict[int, str] | None = None, *,
                  session: Session | None = None) -> dict[str, Any]:
    """A grant as data, with principal names (from ``names``, or looked up in ``session``)."""
    if names is None:
        names = names_by_id(session) if session is not None else {}
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": grant.id, "principal_id": grant.principal_id, "principal": names.get(grant.principal_id),
            "role": grant.role, "status": grant.status, "reason": grant.reason,
            "requested_by": names.get(grant.requested_by_id), "requested_at": iso(grant.requested_at),
            "decided_by": names.get(grant.decided_by_id) if grant.decided_by_id else None,
            "decided_at": iso(grant.decided_at), "revoked_at": iso(grant.revoked_at)}


def names_by_id(session: Session) -> dict[int, str]:
    return {pid: name for pid, name in session.execute(select(PrincipalRow.id, PrincipalRow.name))}


def request_grant(*, session: Session, principal: Principal, grantee: str, role: str,
                  reason: str | None = None) -> RoleGrant:
    """Ask for ``role`` for ``grantee``; it takes effect when a second admin approves."""
    reason = _admin_act(session, principal, reason)
    if role not in ACCESS_ROLES:
        raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ACCESS_ROLES)}")
    row = resolve_ref(session=session, ref=grantee, create_as=principal, typed=True)
    distinct(session=session, principal=principal, other_id=row.id, permission="principal.manage",
             rule="no-self-grant", message=f"{principal.name} cannot request a role for themselves",
             subject=_subject(row.id), payload={"role": role}, custody=False)  # the second admin decides
    if role in HUMAN_ONLY_ROLES and row.kind != "human" and not is_sandbox(session=session):
        refuse(session=session, principal=principal, permission="principal.manage", rule="human-only-role",
               message=f"{row.name} is a {row.kind} account and {role} is held by people", subject=_subject(row.id))
    existing = session.execute(select(RoleGrant).where(RoleGrant.principal_id == row.id, RoleGrant.role == role,
                                                       RoleGrant.status.in_(("pending", "active")))).scalars().first()
    if existing is not None:
        what = "a pending request for the" if existing.status == "pending" else "the"
        raise PolicyViolation(f"{row.name} already has {what} {role} role (grant {existing.id})")
    grant = RoleGrant(principal_id=row.id, role=role, status="pending", reason=reason, requested_by_id=principal.id,
                      requested_at=utcnow())
    session.add(grant)
    session.flush()
    append(session=session, principal=principal, action="role.requested", subject=_subject(row.id),
           payload={"grant_id": grant.id, "role": role, "name": row.name, "reason": reason,
                    "state": state_entries(session, grant)})
    return grant


def decide_grant(*, session: Session, principal: Principal, grant_id: int, approve: bool,
                 reason: str | None = None) -> RoleGrant:
    """A second admin approves (the role is active from now) or rejects a pending grant."""
    reason = _admin_act(session, principal, reason)
    grant = session.get(RoleGrant, grant_id)
    if grant is None:
        raise NotFound(f"no role grant with id {grant_id}", hint="`cvg principals grants` lists them")
    if grant.status != "pending":
        raise PolicyViolation(f"role grant {grant_id} is {grant.status}, not pending")
    verb = "approve" if approve else "reject"
    _second_admin(session, principal, requester_id=grant.requested_by_id, grantee_id=grant.principal_id,
                  rule="grant-second-admin", what=f"role grant {grant_id}", kind="a role", verb=verb,
                  payload={"grant_id": grant_id})
    grant.status = "active" if approve else "rejected"
    grant.decided_by_id, grant.decided_at = principal.id, utcnow()
    append(session=session, principal=principal, action=f"role.{'granted' if approve else 'rejected'}",
           subject=_subject(grant.principal_id), payload={"grant_id": grant.id, "role": grant.role, "reason": reason,
                                                          "state": state_entries(session, grant)})
    return grant


def revoke_grant(*, session: Session, principal: Principal, grantee: str, role: str,
                 reason: str | None = None) -> RoleGrant:
    """Take a role away at once (one admin suffices: removing power needs no second pair of eyes)."""
    reason = _admin_act(session, principal, reason)
    row = resolve_ref(session=session, ref=grantee, typed=True)
    grant = session.execute(select(RoleGrant).where(RoleGrant.principal_id == row.id, RoleGrant.role == role,
                                                    RoleGrant.status.in_(("active", "pending")))).scalars().first()
    if grant is None:
        raise NotFound(f"{row.name} holds no {role} role")
    if grant.role == "admin" and grant.status == "active" and _active_admins(session) <= 2:
        refuse(session=session, principal=principal, permission="principal.manage", rule="two-admins",
               message="revoking this admin would leave fewer than two admins, and nobody could approve role "
                       "grants any more", subject=_subject(row.id))
    grant.status, grant.revoked_by_id, grant.revoked_at = "revoked", principal.id, utcnow()
    append(session=session, principal=principal, action="role.revoked", subject=_subject(row.id),
           payload={"grant_id": grant.id, "role": role, "reason": reason, "state": state_entries(session, grant)})
    return grant


def _active_admins(session: Session) -> int:
    return len(session.execute(select(RoleGrant.principal_id).where(
        RoleGrant.role == "admin", RoleGrant.status == "active")).scalars().unique().all())


def list_grants(*, session: Session, principal: Principal, status: str | None = None) -> list[dict[str, Any]]:
    require(session=session, principal=principal, permission="principal.read")
    query = select(RoleGrant).order_by(RoleGrant.id)
    if status:
        query = query.where(RoleGrant.status == status)
    names = names_by_id(session)
    return [grant_to_dict(g, names) for g in session.execute(query).scalars()]


# --- service accounts and API keys ------------------------------------------------------------

def create_service_account(*, session: Session, principal: Principal, name: str,
                           description: str | None = None) -> PrincipalRow:
    """A machine identity (pipelines, CI, serving replicas, deliverers): it acts with API keys; roles are
    granted to it like to anyone (requested, then approved by a second admin)."""
    require(session=session, principal=principal, permission="principal.manage")
    display, key = check_display_name(name, what="service account name")
    if "@" in display:  # name@issuer-host is how a person whose name is taken is told apart: never squat it
        raise InvalidInput(f"a service account name cannot contain '@' (got {display!r})")
    serialize_writes(session=session)
    if session.execute(select(PrincipalRow.id).where(PrincipalRow.name_key == key)).first() is not None:
        raise PolicyViolation(f"a principal named {display!r} already exists")
    return ensure_principal(session=session, issuer=SERVICE_ISSUER, subject=key, name=display, kind="service",
                            auth=principal.auth, by=principal, description=check_text(description, what="description"))


def create_api_key(*, session: Session, principal: Principal, account: str, expires_at: dt.datetime | None = None,
                   description: str | None = None) -> tuple[ApiKey, str]:
    """A new key for a service account: (row, the full key) — the key is never shown or stored again, and it
    works only once a second admin approves it (whoever holds a key acts as the account: four eyes)."""
    _admin_act(session, principal)
    row = resolve_ref(session=session, ref=account if account.startswith(("sa:", "#")) else f"sa:{account}")
    distinct(session=session, principal=principal, other_id=row.id, permission="principal.manage",
             rule="no-self-grant", message=f"{principal.name} cannot issue a key for themselves",
             subject=_subject(row.id), custody=False)  # rotating a key one created is fine; approval is not
    return mint_api_key(session=session, principal=principal, account=row, expires_at=expires_at,
                        description=description)


def approve_api_key(*, session: Session, principal: Principal, key_id: str, reason: str | None = None) -> ApiKey:
    """A second admin — neither the key's requester nor its account — lets a key work."""
    reason = _admin_act(session, principal, reason)
    key = _key(session, key_id)
    if key.approved_by_id is not None or key.revoked_at is not None:
        raise PolicyViolation(f"API key {key_id} is {'revoked' if key.revoked_at else 'already approved'}")
    _second_admin(session, principal, requester_id=key.created_by_id, grantee_id=key.principal_id,
                  rule="key-second-admin", what=f"API key {key_id}", kind="a key", verb="approve",
                  payload={"key_id": key_id})
    key.approved_by_id, key.approved_at = principal.id, utcnow()
    append(session=session, principal=principal, action="api_key.approved", subject=_subject(key.principal_id),
           payload={"key_id": key_id, "reason": reason, "state": state_entries(session, key)})
    return key


def _key(session: Session, key_id: str) -> ApiKey:
    key = session.execute(select(ApiKey).where(ApiKey.key_id == key_id[:40])).scalar_one_or_none()
    if key is None:
        raise NotFound(f"no API key {key_id!r}", hint="`cvg principals keys` lists them")
    return key


def mint_api_key(*, session: Session, principal: Principal, account: PrincipalRow, expires_at: dt.datetime | None = None,
                 description: str | None = None, approved: bool = False) -> tuple[ApiKey, str]:
    """Make and audit a key for ``account`` (callers have checked who may): (row, the full key); ``approved``
    only for the bootstrap of a sandbox, the one act that needs no second admin."""
    row = account
    if row.kind != "service":
        raise InvalidInput(f"{row.name} is not a service account; people sign in through the OIDC issuer")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("the key would already be expired")
    key_id = KEY_PREFIX + secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(key_id=key_id, principal_id=row.id, secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                 description=check_text(description, what="description"), created_at=utcnow(),
                 created_by_id=principal.id, expires_at=expires_at,
                 approved_by_id=principal.id if approved else None, approved_at=utcnow() if approved else None)
    session.add(key)
    session.flush()
    append(session=session, principal=principal, action="api_key.created", subject=_subject(row.id),
           payload={"key_id": key_id, "expires_at": expires_at.isoformat() if expires_at else None,
                    "approved": approved, "state": state_entries(session, key)})
    return key, f"{key_id}.{secret}"


def revoke_api_key(*, session: Session, principal: Principal, key_id: str, reason: str | None = None) -> ApiKey:
    reason = _admin_act(session, principal, reason)
    key = _key(session, key_id)
    if key.revoked_at is None:
        key.revoked_at, key.revoked_by_id = utcnow(), principal.id
        append(session=session, principal=principal, action="api_key.revoked", subject=_subject(key.principal_id),
               payload={"key_id": key_id, "reason": reason, "state": state_entries(session, key)})
    return key


def api_key_to_dict(key: ApiKey, names: dict[int, str]) -> dict[str, Any]:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    now = utcnow()
    state = ("revoked" if key.revoked_at else "expired" if key.expires_at and key.expires_at <= now
             else "pending" if key.approved_by_id is None else "active")
    return {"key_id": key.key_id, "account": names.get(key.principal_id), "state": state,
            "description": key.description, "created_at": iso(key.created_at),
            "created_by": names.get(key.created_by_id),
            "approved_by": names.get(key.approved_by_id) if key.approved_by_id else None, "expires_at": iso(key.expires_at),
            "last_used_at": iso(key.last_used_at), "revoked_at": iso(key.revoked_at)}


def list_api_keys(*, session: Session, principal: Principal) -> list[dict[str, Any]]:
    require(session=session, principal=principal, permission="principal.read")
    names = names_by_id(session)
    return [api_key_to_dict(k, names) for k in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars()]


def check_api_key(*, session: Session, key: str) -> tuple[ApiKey, PrincipalRow]:
    """The key's row and account if ``key`` is a current key; else ``Unauthenticated`` saying why."""
    key_id, _, secret = key.partition(".")
    if not key_id.startswith(KEY_PREFIX) or not secret:
        raise Unauthenticated("the API key is malformed: expected cvgk_<id>.<secret>")
    row = session.execute(select(ApiKey).where(ApiKey.key_id == key_id[:40])).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.secret_sha256, hashlib.sha256(secret.encode()).hexdigest()):
        raise Unauthenticated("the API key is not valid")
    if row.revoked_at is not None:
        raise Unauthenticated(f"API key {key_id} was revoked at {row.revoked_at.isoformat(timespec='seconds')}")
    if row.approved_by_id is None:
        raise Unauthenticated(f"API key {key_id} awaits a second admin's approval",
                              hint=f"another admin runs `cvg principals approve-key {key_id}`")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthenticated(f"API key {key_id} expired at {row.expires_at.isoformat(timespec='seconds')}")
    account = session.get(PrincipalRow, row.principal_id)
    if account is None or account.disabled_at is not None:
        raise Unauthenticated(f"the account of API key {key_id} is disabled")
    return row, account
