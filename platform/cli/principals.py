"""``cvg principals``: who exists, their roles (granted under four eyes), service accounts and API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Principals and roles: list who exists, request a role for someone (a second admin approves "
                       "it), revoke one, create service accounts and their API keys, and install the first two "
                       "admins. Roles: registrant, validator, approver, operator, risk, finance, auditor, admin.",
                  no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(help="A principal: a display name, #ID, sa:NAME, os:NAME or oidc:SUBJECT.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why: recorded on the audit trail.")]


def _grant_line(g: dict[str, Any]) -> str:
    return (f"grant {g['id']}: {g['role']} for {g['principal']} is {g['status']}"
            + (f" (requested by {g['requested_by']})" if g["status"] == "pending" else "")
            + (f" (approved by {g['decided_by']})" if g["status"] == "active" and g["decided_by"] else ""))


@app.command("list")
def list_(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Every principal with its active roles and pending grants (the admin or auditor role)."""
    rows = operations(actor).list_principals()
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} principals", ("id", "name", "kind", "issuer", "subject", "roles", "pending"),
                ((r["id"], r["name"], r["kind"], r["issuer"], r["subject"], ", ".join(r["roles"]),
                  ", ".join(f"#{p['grant_id']} {p['role']}" for p in r["pending"])) for r in rows))


@app.command()
def show(ref: RefArg, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """One principal: issuer and subject, roles, pending grants."""
    data = operations(actor).show_principal(ref=ref)
    if json_out:
        print_json(data)
        return
    console().print(f"#{data['id']} {data['name']} ({data['kind']}) {data['issuer']} / {data['subject']}\n"
                    f"roles: {', '.join(data['roles']) or 'none'}"
                    + "".join(f"\npending: grant {p['grant_id']} {p['role']}" for p in data["pending"]))


@app.command()
def grant(ref: RefArg, role: Annotated[str, typer.Argument(help="The role to give.")], reason: ReasonOpt = None,
          actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Request ROLE for someone else (the admin role); it applies once a second admin approves."""
    data = operations(actor).request_grant(principal=ref, role=role, reason=reason)
    print_json(data) if json_out else console().print(
        _grant_line(data) + f"; a second admin approves it with `cvg principals approve {data['id']}`")


@app.command()
def approve(grant_id: Annotated[int, typer.Argument(help="Grant id (`cvg principals grants`).")],
            reason: ReasonOpt = None, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Approve a requested role (an admin who neither requested it nor receives it)."""
    data = operations(actor).approve_grant(grant_id=grant_id, reason=reason)
    print_json(data) if json_out else console().print(_grant_line(data))


@app.command()
def reject(grant_id: Annotated[int, typer.Argument(help="Grant id.")], reason: ReasonOpt = None,
           actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Refuse a requested role."""
    data = operations(actor).reject_grant(grant_id=grant_id, reason=reason)
    print_json(data) if json_out else console().print(_grant_line(data))


@app.command()
def revoke(ref: RefArg, role: Annotated[str, typer.Argument(help="The role to take away.")], reason: ReasonOpt = None,
           actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Take a role away now (one admin suffices)."""
    data = operations(actor).revoke_role(principal=ref, role=role, reason=reason)
    print_json(data) if json_out else console().print(_grant_line(data))


@app.command()
def grants(status: Annotated[str | None, typer.Option("--status", help="pending, active, rejected or revoked.")] = None,
           actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Role grants; pending ones wait for a second admin."""
    rows = operations(actor).list_grants(status=status)
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} role grants", ("id", "principal", "role", "status", "requested by", "decided by",
                                             "reason"),
                ((g["id"], g["principal"], g["role"], g["status"], g["requested_by"], g["decided_by"] or "",
                  g["reason"] or "") for g in rows))


@app.command("create-service-account")
def create_service_account(name: Annotated[str, typer.Argument(help="Account name, e.g. pipelines or ci.")],
                           description: Annotated[str | None, typer.Option("--description")] = None,
                           actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """A machine identity for pipelines, CI, serving replicas or deliverers (the admin role)."""
    data = operations(actor).create_service_account(name=name, description=description)
    print_json(data) if json_out else console().print(
        f"service account #{data['id']} {data['name']}; give it roles with `cvg principals grant sa:{data['name']} "
        f"ROLE` and a key with `cvg principals create-key {data['name']}`")


@app.command("create-key")
def create_key(account: Annotated[str, typer.Argument(help="Service account name.")],
               expires: Annotated[str | None, typer.Option("--expires", help="When it stops working: 90d, 12h "
                                                           "or an ISO date (default: never).")] = None,
               description: Annotated[str | None, typer.Option("--description")] = None,
               actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """A new API key for a service account. It is printed once and stored only as a hash, and works once a
    second admin approves it (`cvg principals approve-key`)."""
    data = operations(actor).create_api_key(name=account, expires=expires, description=description)
    if json_out:
        print_json(data)
        return
    console().print(f"API key {data['key_id']} for {account}"
                    + (f", expires {data['expires_at']}" if data["expires_at"] else "")
                    + f"\nkey (store it now; it is not shown again): {data['key']}\n"
                    f"it works once another admin runs `cvg principals approve-key {data['key_id']}`")


@app.command("approve-key")
def approve_key(key_id: Annotated[str, typer.Argument(help="The key's id (cvgk_…).")], reason: ReasonOpt = None,
                actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Let a requested API key work (an admin who neither requested it nor is its account)."""
    data = operations(actor).approve_api_key(key_id=key_id, reason=reason)
    print_json(data) if json_out else console().print(f"API key {key_id} approved")


@app.command()
def keys(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Every API key: id, account, state, last use (never a secret)."""
    rows = operations(actor).list_api_keys()
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} API keys", ("key id", "account", "state", "created by", "expires", "last used"),
                ((k["key_id"], k["account"], k["state"], k["created_by"], (k["expires_at"] or "never")[:19],
                  (k["last_used_at"] or "—")[:19]) for k in rows))


@app.command("revoke-key")
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (cvgk_…).")], reason: ReasonOpt = None,
               actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Revoke an API key; every process refuses it within CVG_AUTH_CACHE_S (2 s)."""
    data = operations(actor).revoke_api_key(key_id=key_id, reason=reason)
    print_json(data) if json_out else console().print(f"API key {key_id} revoked at {data['revoked_at']}")


@app.command()
def bootstrap(
    admin: Annotated[list[str], typer.Option("--admin", help="A first admin (twice at least): sa:NAME creates a "
                                             "service account, os:NAME or oidc:SUBJECT names a person.")],
    grant_: Annotated[list[str] | None, typer.Option("--grant", help="Another first role, REF=ROLE "
                                                     "(e.g. sa:pipelines=registrant).")] = None,
    key: Annotated[bool, typer.Option("--key", help="Sandbox only: also issue an API key for each admin service "
                                      "account (printed once).")] = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Install the first admins on a new control plane, working on the database directly (whoever holds it
    does this once; not for yourself). Refused once an admin exists."""
    from convergence.governance import identity
    from convergence.platform.db import session_scope
    from convergence.platform.errors import InvalidInput

    pairs = [(ref, "admin") for ref in admin]
    for item in grant_ or []:
        ref, sep, role = item.rpartition("=")
        if not sep or not ref:
            raise InvalidInput(f"--grant {item!r}: use REF=ROLE, e.g. sa:pipelines=registrant")
        pairs.append((ref, role))
    principal = identity.Authenticator().local(as_name=actor)
    with session_scope() as session:
        created, minted = identity.bootstrap(session=session, principal=principal, grants=pairs, keys=key)
        out = [identity.grant_to_dict(g, session=session) for g in created]
    if json_out:
        print_json({"grants": out, "keys": minted})
        return
    for g in out:
        console().print(_grant_line(g))
    for k in minted:
        console().print(f"API key for {k['account']} (store it now; it is not shown again): {k['key']}")
