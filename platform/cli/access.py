"""``cvg api``, ``cvg login``, ``cvg logout``, ``cvg whoami``: the control-plane server and who you are."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json


def api(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the control-plane API (FastAPI, OpenAPI 3.1 at /openapi.json, docs at /docs) and the read-only
    console at /ui. Every route but /livez and /readyz needs `Authorization: Bearer <API key or OIDC token>`
    (the console signs people in with the issuer, CVG_CONSOLE_CLIENT_ID, or a key); set CVG_API_URL on clients."""
    import uvicorn

    from convergence.platform.db import redact_url
    from convergence.platform.settings import get_settings

    settings = get_settings()
    oidc = f"OIDC tokens from {settings.oidc_issuer}" if settings.oidc_issuer else "no OIDC issuer (API keys only)"
    signin = "your OIDC issuer or an API key" if settings.console_client_id and settings.oidc_issuer else "an API key"
    console(stderr=True).print(f"control-plane API on http://{host}:{port} (database "
                               f"{redact_url(settings.resolved_database_url)}; {oidc}); console at "
                               f"http://{host}:{port}/ui (sign in with {signin})")
    uvicorn.run("convergence.platform.api:create_app", factory=True, host=host, port=port, log_level=log_level,
                access_log=log_level == "debug", proxy_headers=False, server_header=False)


def whoami(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Who you are to convergence: principal, roles, and how you authenticated."""
    data = operations(actor).whoami()
    if json_out:
        print_json(data)
        return
    console().print(f"{data['name']} (principal #{data['id']}, {data['kind']}) — {data['issuer']} / {data['subject']}\n"
                    f"roles: {', '.join(data['roles']) or 'none'}\nauthenticated by: {data['auth']['method']}"
                    + (f" ({data['auth']['credential']})" if data["auth"].get("credential") else "")
                    + (" [sandbox: --as]" if data.get("sandbox") else ""))


def login(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the approval.")] = 600.0,
) -> None:
    """Sign in with the OIDC issuer's device flow (CVG_OIDC_ISSUER, CVG_OIDC_CLIENT_ID): open the link it
    prints, approve, and the token is kept (0600) under CVG_HOME for later commands."""
    from convergence.platform.errors import InvalidInput
    from convergence.platform.oidc import device_login
    from convergence.platform.settings import get_settings

    settings = get_settings()
    if not settings.oidc_issuer or not settings.oidc_client_id:
        raise InvalidInput("cvg login needs CVG_OIDC_ISSUER and CVG_OIDC_CLIENT_ID (a public client allowed the "
                           "device flow)", hint="or set CVG_TOKEN to an access token you obtained elsewhere")
    err = console(stderr=True)

    def prompt(grant: dict) -> None:  # type: ignore[type-arg]
        url = grant.get("verification_uri_complete") or grant.get("verification_uri")
        err.print(f"open {url} and confirm the code [bold]{grant.get('user_code')}[/bold] (waiting up to "
                  f"{int(min(timeout, grant.get('expires_in', timeout)))} s)")

    token = device_login(issuer=settings.oidc_issuer, client_id=settings.oidc_client_id,
                         audience=settings.oidc_audience, prompt=prompt, timeout_s=timeout)
    path = settings.home / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    from convergence.platform.files import atomic_output

    with atomic_output(path, mode=0o600, option="credentials") as fh:  # never through a planted link
        fh.write(json.dumps({"issuer": settings.oidc_issuer, "access_token": token["access_token"],
                             "expires_at": time.time() + float(token.get("expires_in", 300))}).encode())
    err.print(f"signed in; the token is kept in {path} until it expires")


def logout() -> None:
    """Forget the token `cvg login` kept."""
    from convergence.platform.settings import get_settings

    path = get_settings().home / "credentials.json"
    existed = path.exists()
    path.unlink(missing_ok=True)
    console(stderr=True).print("signed out" if existed else "not signed in")
