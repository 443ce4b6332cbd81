"""Roles and separation of duties, enforced in the services so every caller (CLI, API, demo) gets them.

Each permission names the roles that hold it; each separation-of-duties rule has a stable name that a
refusal carries (``rule``) and the ledger records. A refusal is committed to the audit trail on its own
before ``Forbidden`` is raised: the attempted change rolls back, the attempt itself is evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from sqlalchemy.orm import Session

from convergence.governance._ledger import Subject, commit_refusal
from convergence.governance._principal import ACCESS_ROLES, Principal
from convergence.platform.errors import Forbidden

_ANY = frozenset(ACCESS_ROLES)

# permission → the roles that hold it, and what it lets a principal do (for the refusal's message)
PERMISSIONS: dict[str, tuple[frozenset[str], str]] = {
    "model.read": (_ANY, "read the model registry"),
    "model.register": (frozenset({"registrant"}), "register models and datasets"),
    "artifact.upload": (frozenset({"registrant", "validator"}), "upload artifacts and evidence"),
    "model.validate": (frozenset({"validator"}), "validate models"),
    "model.approve": (frozenset({"approver"}), "approve models"),
    "model.reject": (frozenset({"approver"}), "reject models"),
    "model.promote": (frozenset({"operator"}), "promote models to production"),
    "model.rollback": (frozenset({"operator"}), "roll production back"),
    "pipeline.run": (frozenset({"registrant"}), "run training pipelines"),
    "pipeline.trigger": (frozenset({"registrant", "operator"}), "trigger pipelines on Kubernetes"),
    "pipeline.read": (_ANY, "read pipeline runs"),
    "serving.kill": (frozenset({"risk"}), "kill a model's serving"),
    "serving.resume": (frozenset({"risk"}), "resume a killed model"),
    "serving.read": (_ANY, "read kill switches"),
    "budget.set": (frozenset({"finance"}), "set budgets"),
    "budget.decide": (frozenset({"finance"}), "approve or reject budget raises"),
    "budget.read": (_ANY, "read budgets and usage"),
    "drift.check": (frozenset({"operator"}), "run drift checks"),
    "drift.read": (_ANY, "read drift reports"),
    "webhook.manage": (frozenset({"admin"}), "manage webhook subscriptions"),
    "webhook.deliver": (frozenset({"admin", "operator"}), "deliver and redeliver webhooks"),
    "webhook.read": (frozenset({"admin", "operator", "auditor"}), "read webhook deliveries"),
    "audit.read": (frozenset({"auditor", "admin"}), "query, verify and export the audit trail"),
    "audit.checkpoint": (frozenset({"auditor", "admin"}), "take audit checkpoints"),
    "audit.rotate_key": (frozenset({"admin"}), "rotate the key that signs the ledger's checkpoints"),
    "principal.manage": (frozenset({"admin"}), "manage principals, roles and API keys"),
    "principal.read": (frozenset({"admin", "auditor"}), "list principals, roles and API keys"),
    # the pack carries whole ledger events and principals' identities: the roles that may read the trail
    "model.pack": (frozenset({"auditor", "admin"}), "build a model version's audit pack"),
    "model.classify": (frozenset({"risk", "admin"}), "set a model's materiality tier and model-risk fields"),
    "retention.read": (_ANY, "read retention policies"),
    "retention.manage": (frozenset({"admin"}), "set retention policies"),
    "retention.apply": (frozenset({"admin", "operator"}), "delete records whose retention has expired"),
}

# Separation-of-duties rules: name → what it says (README and `cvg principals rules` print these).
RULES: dict[str, str] = {
    "validator-not-registrant": "the registrant of a model version cannot validate it",
    "approver-not-registrant": "the registrant of a model version cannot approve or reject it",
    "approver-not-validator": "the validator of a model version cannot also approve or reject it",
    "promoter-not-registrant": "the registrant of a model version cannot put it into production",
    "budget-raise-second-person": "the requester of a budget raise cannot approve or reject it",
    "grant-second-admin": "a role grant takes effect only when a second admin approves it",
    "key-second-admin": "an API key works only once a second admin approves it",
    "no-self-grant": "nobody requests, approves or bootstraps a role for themselves",
    "human-only-role": "validator and approver are held by people, not service accounts (sandboxes excepted)",
    "two-admins": "there are always at least two admins, so every grant can have a second one",
    "bootstrap-once": "the first admins are installed once; after that, roles are granted under four eyes",
    "trigger-by-system": "a run's trigger naming who asked for it comes from a service account, not a person",
    "sandbox-only": "--as NAME works only on a sandbox, and only a new, empty database becomes one",
}


def roles_for(permission: str) -> frozenset[str]:
    return PERMISSIONS[permission][0]


def record_refusal(*, session: Session, principal: Principal, permission: str, rule: str, message: str,
                   subject: Subject | None = None, payload: Mapping[str, Any] | None = None) -> None:
    """Commit the refused attempt to the audit trail on its own (the attempted change is rolled back)."""
    commit_refusal(session=session, principal=principal, action=f"{permission}_refused",
                   subject=subject or Subject("permission", permission),
                   payload={"rule": rule, "reason": message, **(payload or {})})


def refuse(*, session: Session, principal: Principal, permission: str, rule: str, message: str,
           subject: Subject | None = None, payload: Mapping[str, Any] | None = None,
           hint: str | None = None) -> NoReturn:
    """Audit the refused attempt (its own transaction), then raise ``Forbidden`` naming the rule."""
    record_refusal(session=session, principal=principal, permission=permission, rule=rule, message=message,
                   subject=subject, payload=payload)
    raise Forbidden(f"{message} (rule {rule})", rule=rule, hint=hint)


def require(*, session: Session, principal: Principal, permission: str, subject: Subject | None = None) -> None:
    """Refuse (audited, 403) unless ``principal`` holds one of the roles ``permission`` needs."""
    allowed, what = PERMISSIONS[permission]
    if principal.roles & allowed:
        return
    held = ", ".join(sorted(principal.roles)) or "none"
    needs = (f"the {' or '.join(sorted(allowed))} role (holds: {held})" if allowed != _ANY
             else "a role, and holds none")
    refuse(session=session, principal=principal, permission=permission, rule=f"role-required:{permission}",
           message=f"{principal.name} may not {what}: it needs {needs}",
           subject=subject, payload={"needs": sorted(allowed), "holds": sorted(principal.roles)},
           hint="an admin grants roles with `cvg principals grant`, and a second admin approves")


def same_person(session: Session, principal: Principal, other_id: int | None) -> bool:
    """Whether ``other_id`` is ``principal``: the same id; a legacy principal (a name recorded before
    principals existed) whose name is the principal's; or, outside a sandbox, an account whose API key either
    of them created — whoever creates a key sees its secret and can act as the account."""
    return _sameness(session, principal, other_id) is not None


def _sameness(session: Session, principal: Principal, other_id: int | None, *, custody: bool = True) -> str | None:
    """Why ``other_id`` counts as ``principal`` (for the refusal's message), or None; ``custody=False`` leaves
    out the accounts whose keys they hold (for rules about the literal self, like asking for a role)."""
    if other_id is None:
        return None
    if principal.id == other_id:
        return ""
    from convergence.governance._identity import is_sandbox
    from convergence.governance._models import PrincipalRow
    from convergence.governance._principal import LEGACY_ISSUER, name_key

    other = session.get(PrincipalRow, other_id)
    if other is None:
        return None
    if other.issuer == LEGACY_ISSUER:
        mine = {name_key(principal.name), name_key(principal.name.rsplit("@", 1)[0]), name_key(principal.subject)}
        return f" (recorded as {other.name} before the upgrade)" if (
            other.name_key in mine or name_key(other.name) in mine) else None
    if not custody or is_sandbox(session=session) or not key_holders(session, principal.id) & key_holders(session, other_id):
        return None
    return f" (an API key ties {principal.name} to {other.name}: whoever creates a key can act as its account)"


def key_holders(session: Session, principal_id: int) -> set[int]:
    """``principal_id`` and everyone who created an API key for it (revoked keys too: past acts count)."""
    from sqlalchemy import select

    from convergence.governance._models import ApiKey

    creators = session.execute(select(ApiKey.created_by_id).where(ApiKey.principal_id == principal_id))
    return {principal_id, *creators.scalars()}


def distinct(*, session: Session, principal: Principal, other_id: int | None, permission: str, rule: str,
             message: str, subject: Subject, payload: Mapping[str, Any] | None = None, custody: bool = True) -> None:
    """Separation of duties on principals: refuse (audited) when ``principal`` is ``other_id``."""
    why = _sameness(session, principal, other_id, custody=custody)
    if why is not None:
        refuse(session=session, principal=principal, permission=permission, rule=rule, message=message + why,
               subject=subject, payload=payload, hint="a different person must do this (four-eyes principle)")
