"""``cvg serve``: serve approved models with BentoML, and stop or resume them (the kill switch)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, actor_or_fail, console, print_json, print_table

app = typer.Typer(help="Serve approved models with BentoML (adaptive batching, prediction log, metrics); stop "
                       "and resume them on every replica at once (kill switch).", no_args_is_help=True)

VersionOpt = Annotated[int | None, typer.Option("--version", help="Serve this approved version id instead of the "
                                                "model's production version.")]
PortOpt = Annotated[int, typer.Option("--port", help="HTTP port.")]
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0 in a container).")]
Int8Opt = Annotated[bool | None, typer.Option("--int8/--float", help="Serve the approved INT8 copy (default on "
                                              "CPU when the registry has one) or the float model.")]


def _serve(family: str, model: str | None, version: int | None, port: int, host: str, int8: bool | None,
           dry_run: bool) -> None:
    from convergence.platform.settings import get_settings
    from convergence.serving import check_servable, serve_command

    info = check_servable(family=family, name=model, version_id=version, prefer_int8=int8)
    command = serve_command(family, port=port, host=host)
    env = {**os.environ, "CVG_SERVE_VERSION": str(info["version_id"]), "BENTOML_DO_NOT_TRACK": "true",
           "CVG_HOME": str(get_settings().home)}
    if dry_run:
        print_json({**info, "command": command, "env": {k: env[k] for k in ("CVG_SERVE_VERSION", "CVG_HOME")}})
        return
    console(stderr=True).print(f"serving {info['name']} v{info['version']} (version {info['version_id']}, "
                               f"{info['stage']}, sha256 {info['artifact_sha256'][:12]}…) on http://{host}:{port}")
    os.execvpe(command[0], command, env)  # BentoML takes over this process (signals reach it directly)


@app.command()
def trading(
    model: Annotated[str | None, typer.Option("--model", help="Model name (default es-trading-student).")] = None,
    version: VersionOpt = None, port: PortOpt = 3000, host: HostOpt = "127.0.0.1", int8: Int8Opt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and print what would serve; start nothing.")] = False,
) -> None:
    """Serve the trading student: POST /predict with {"rows": [[...], ...]} or a binary float32 body.
    Refuses versions that are not approved or in production, and artifacts whose SHA-256 changed."""
    _serve("trading", model, version, port, host, int8, dry_run)


@app.command()
def language(
    model: Annotated[str | None, typer.Option("--model", help="Model name (default sotu-lm-student).")] = None,
    version: VersionOpt = None, port: PortOpt = 3000, host: HostOpt = "127.0.0.1",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and print what would serve; start nothing.")] = False,
) -> None:
    """Serve the language student: POST /generate with {"prompt", "max_tokens", "temperature", "seed"};
    concurrent requests share KV-cached forward passes."""
    _serve("language", model, version, port, host, False, dry_run)


@app.command()
def kill(
    name: Annotated[str, typer.Argument(help="Model name, e.g. es-trading-student.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: callers get it in the 503, auditors in the ledger.")],
    safe_output: Annotated[float | None, typer.Option("--safe-output", help="Answer this value instead of 503 "
                                                      "(trading: 0.0 is a flat, no-trade signal).")] = None,
    actor: ActorOpt = None, json_out: JsonOpt = False,
) -> None:
    """Stop NAME on every replica within a second (state in the database); audited."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope() as s:
        switch = gov.kill(session=s, name=name, reason=reason, actor=actor_or_fail(actor), safe_output=safe_output)
        out = {"model": switch.model_name, "killed": True, "reason": switch.reason, "safe_output": switch.safe_output}
    print_json(out) if json_out else console().print(
        f"killed {name}: replicas answer " + ("503" if safe_output is None else f"{safe_output} (safe output)")
        + f" — {reason}")


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Model name.")],
           reason: Annotated[str, typer.Option("--reason")] = "resumed", actor: ActorOpt = None,
           json_out: JsonOpt = False) -> None:
    """Let NAME serve again; audited."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope() as s:
        gov.resume(session=s, name=name, actor=actor_or_fail(actor), reason=reason)
    print_json({"model": name, "killed": False}) if json_out else console().print(f"resumed {name}")


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Every kill switch ever set: which models are stopped, why, by whom."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as s:
        rows = [{"model": k.model_name, "killed": k.active, "reason": k.reason, "safe_output": k.safe_output,
                 "actor": k.actor, "at": k.changed_at.isoformat()} for k in gov.list_switches(session=s)]
    if json_out:
        print_json(rows)
        return
    print_table("kill switches", ("model", "state", "reason", "safe output", "by", "at (UTC)"),
                ((r["model"], "KILLED" if r["killed"] else "serving", r["reason"],
                  "-" if r["safe_output"] is None else r["safe_output"], r["actor"], r["at"][:19]) for r in rows))
