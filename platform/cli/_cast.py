"""The demo's people: who they are, how they get their roles (four eyes), and their API keys.

The demo's database is a sandbox. The operating-system account installs two admins (service accounts
``ada`` and ``sam``) once; from then on everything goes through the control-plane API: ada creates a
service account per persona and asks for its roles, sam approves each grant, and every persona acts with
its own API key. Keys live only in this process's memory (and are revoked when the demo ends).
"""

from __future__ import annotations

from typing import Any

# persona → the roles it holds (the desk only calls the served model: an identity, no role)
PERSONAS: dict[str, tuple[str, ...]] = {
    "quinn": ("registrant",), "nina": ("registrant",), "carol": ("validator",), "alice": ("approver",),
    "ops": ("operator",), "monitor": ("operator",), "risk": ("risk",), "fin": ("finance",), "cfo": ("finance",),
    "auditor": ("auditor",), "desk": (),
}
ADMINS = ("ada", "sam", "max")  # three, so that on a re-run each key has a requester and a different approver


def prepare_sandbox() -> Any:
    """Make the configured database the demo's sandbox (only a new, empty one may become one)."""
    from convergence.governance import identity
    from convergence.platform.db import session_scope

    with session_scope() as session:
        return identity.make_sandbox(session=session)


def admin_keys() -> tuple[dict[str, str], bool]:
    """API keys for the two admins: installed by the OS account on a new sandbox (bootstrap), or, on a
    sandbox that already has them, minted by each for the other (``--as``, which only a sandbox allows)."""
    from convergence.governance import identity
    from convergence.platform.db import session_scope
    from convergence.platform.errors import PolicyViolation

    installer = identity.Authenticator().local()
    try:
        with session_scope() as session:
            _, minted = identity.bootstrap(session=session, principal=installer, keys=True,
                                           grants=[(f"sa:{name}", "admin") for name in ADMINS])
        return {k["account"]: k["key"] for k in minted}, True
    except PolicyViolation:
        keys = {}
        for name, other in (("ada", "sam"), ("sam", "ada")):
            with session_scope() as session:  # on a re-run each admin asks for the other's key …
                minter = identity.sandbox_principal(session=session, name=other)
                row, keys[name] = identity.create_api_key(session=session, principal=minter, account=name,
                                                          expires_at=_tomorrow(), description="demo")
            with session_scope() as session:  # … and the third admin lets it work (--as: only on a sandbox)
                approver = identity.sandbox_principal(session=session, name="max")
                identity.approve_api_key(session=session, principal=approver, key_id=row.key_id, reason="re-run")
        return keys, False


def _tomorrow() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)


def cast(url: str, keys: dict[str, str]) -> tuple[dict[str, Any], dict[str, int]]:
    """Through the API: ada creates each persona's service account and asks for its roles, sam approves each
    (nobody grants alone); ada issues each persona a key. Returns a client per persona and the counts."""
    from convergence.governance import identity
    from convergence.platform.api import RemoteOperations

    ada, sam = RemoteOperations(url, keys["ada"]), RemoteOperations(url, keys["sam"])
    existing = {p["name"]: p for p in ada.list_principals()}
    counts = {"accounts": 0, "grants": 0}
    for name, roles in PERSONAS.items():
        if name not in existing:
            ada.create_service_account(name=name, description="demo persona")
            counts["accounts"] += 1
        held = set(existing.get(name, {}).get("roles", ()))
        for role in roles:
            if role not in held:
                grant = ada.request_grant(principal=f"sa:{name}", role=role, reason="demo persona")
                sam.approve_grant(grant_id=grant["id"], reason="second admin")
                counts["grants"] += 1
    me = f"os:{identity.os_account()}"  # so the "look further" commands can read, as the OS account
    if "auditor" not in ada.show_principal(ref=me)["roles"]:
        grant = ada.request_grant(principal=me, role="auditor", reason="read the demo's trail afterwards")
        sam.approve_grant(grant_id=grant["id"], reason="second admin")
        counts["grants"] += 1
    clients = {"ada": ada, "sam": sam}
    for name in PERSONAS:  # ada asks for each key, sam lets it work: whoever holds a key acts as the account
        issued = ada.create_api_key(name=name, expires="1d", description="demo")
        sam.approve_api_key(key_id=issued["key_id"], reason="second admin")
        clients[name] = RemoteOperations(url, issued["key"])
    return clients, counts


def revoke_demo_keys(sam: Any) -> int:
    """Revoke every key the demo issued, sam's own last: they were for this run only."""
    mine = sam.whoami()["auth"]["credential"]
    active = [k["key_id"] for k in sam.list_api_keys()
              if k["state"] == "active" and k["description"] in ("demo", "bootstrap")]
    for key_id in sorted(active, key=lambda k: k == mine):
        sam.revoke_api_key(key_id=key_id, reason="the demo is over")
    return len(active)
