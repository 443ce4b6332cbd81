"""``cvg serve``: serve approved models with BentoML, and stop or resume them (the kill switch)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Serve approved models with BentoML (adaptive batching, prediction log, metrics); stop "
                       "and resume them on every replica at once (kill switch).", no_args_is_help=True)

VersionOpt = Annotated[int | None, typer.Option("--version", help="Serve this approved version id instead of the "
                                                "model's production version.")]
PortOpt = Annotated[int, typer.Option("--port", help="HTTP port.")]
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0 in a container).")]
Int8Opt = Annotated[bool | None, typer.Option("--int8/--float", help="Serve the approved INT8 copy, or exactly the "
                                              "production version. Default: on a CPU, whichever of the production "
                                              "version and its approved compiled and INT8 copies was measured "
                                              "fastest at batch 1 at registration; on a GPU, the production version.")]


def _serve(family: str, model: str | None, version: int | None, port: int, host: str, int8: bool | None,
           dry_run: bool) -> None:
    from convergence.platform.settings import get_settings
    from convergence.serving import check_servable, record_server, serve_command

    info = check_servable(family=family, name=model, version_id=version, prefer_int8=int8)
    command = serve_command(family, port=port, host=host)
    env = {**os.environ, "CVG_SERVE_VERSION": str(info["version_id"]), "BENTOML_DO_NOT_TRACK": "true",
           "CVG_HOME": str(get_settings().home), "CVG_SERVE_WHY": info["why"],
           "CVG_SERVE_FOLLOW_ROLLOUTS": "false" if version is not None else "true",
           **({"CVG_SERVE_MODEL": model} if model else {})}  # the name a restarted worker follows
    if dry_run:
        print_json({**info, "command": command,
                    "env": {k: env[k] for k in ("CVG_SERVE_VERSION", "CVG_HOME", "CVG_SERVE_FOLLOW_ROLLOUTS")}})
        return
    err = console(stderr=True)
    err.print(f"serving {info['name']} v{info['version']} (version {info['version_id']}, {info['role']}, "
              f"{info['stage']}, sha256 {info['artifact_sha256'][:12]}…) on http://{host}:{port}: {info['why']}")
    if get_settings().serve_auth != "required" and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/yellow]: {host} is not loopback and CVG_SERVE_AUTH is off: anyone who reaches "
                  "this port can call the model (set CVG_SERVE_AUTH=required)")
    record_server(family=family, host=host, port=port, info=info)  # for `cvg serve status`
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
    _serve("language", model, version, port, host, False, dry_run)  # no compiled language copies to choose from


@app.command()
def kill(
    name: Annotated[str, typer.Argument(help="Model name, e.g. es-trading-student.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: callers get it in the 503, auditors in the ledger.")],
    safe_output: Annotated[bool, typer.Option("--safe-output", help="Answer the safe output the approver fixed for "
                                              "the production version (trading: e.g. 0.0, a flat, no-trade signal), "
                                              "flagged killed, instead of 503. The value is never chosen here.")] = False,
    actor: ActorOpt = None, json_out: JsonOpt = False,
) -> None:
    """Stop NAME on every replica within a second (the risk role; state in the database); audited."""
    data = operations(actor).kill(name=name, reason=reason, safe_output=safe_output)
    print_json(data) if json_out else console().print(
        f"killed {name}: replicas answer " + ("503" if data["safe_output"] is None else
                                              f"{data['safe_output']} (the approved safe output)") + f" — {reason}")


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Model name.")],
           reason: Annotated[str, typer.Option("--reason")] = "resumed", actor: ActorOpt = None,
           json_out: JsonOpt = False) -> None:
    """Let NAME serve again (the risk role); audited."""
    data = operations(actor).resume(name=name, reason=reason)
    print_json(data) if json_out else console().print(f"resumed {name}")


@app.command()
def status(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """The servers `cvg serve` started with this CVG_HOME, each checked now (its process and its /info), and
    every kill switch ever set: which models are stopped, why, by whom."""
    from convergence.serving import known_servers

    switches, servers = operations(actor).kill_switches(), known_servers()
    if json_out:
        print_json({"servers": servers, "kill_switches": switches})
        return
    if servers:
        print_table("servers started here", ("port", "family", "state", "what", "pid"),
                    ((s["port"], s["family"], s["state"].upper() if s["state"] != "serving" else s["state"],
                      s["detail"], s["pid"]) for s in servers))
    else:
        console().print("no server started by `cvg serve` with this CVG_HOME is running")
    print_table("kill switches", ("model", "state", "reason", "safe output", "by", "at (UTC)"),
                ((r["model"], "KILLED" if r["killed"] else "not killed", r["reason"],
                  "-" if r["safe_output"] is None else r["safe_output"], r["actor"], r["at"][:19]) for r in switches))