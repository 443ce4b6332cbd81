"""``cvg models``: register, inspect, validate, approve, promote and trace model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convergence.platform.cli._common import (
    ActorOpt,
    JsonOpt,
    actor_or_fail,
    console,
    parse_json_option,
    print_json,
    print_mapping,
    print_table,
    short,
)

app = typer.Typer(help="Model registry: register, list, show, validate, approve, reject, promote, roll back, "
                       "and trace lineage and history.", no_args_is_help=True)

IdArg = Annotated[int, typer.Argument(help="Model version id (see `cvg models list`).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded on the audit trail.")]


def _render(mv: Any, json_out: bool, verb: str | None = None) -> None:
    from convergence import governance as gov

    data = gov.model_to_dict(mv)
    if json_out:
        print_json(data)
    elif verb:
        console().print(f"model version {mv.id} ({mv.name} v{mv.version}) {verb}: stage is now [bold]{mv.stage}[/bold]")
    else:
        print_mapping(f"model version {mv.id}", data)


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="Model name; versions are numbered per name.")],
    artifact: Annotated[Path, typer.Option("--artifact", help="The model file (stored by SHA-256).")],
    family: Annotated[str, typer.Option("--family", help="trading or language.")],
    role: Annotated[str, typer.Option("--role", help="teacher, student or quantized.")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Training data: a file (hashed), "
                                                "a dataset id, or a SHA-256.")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help='JSON object or @file, e.g. \'{"sharpe": 1.3}\'.')] = None,
    params: Annotated[str | None, typer.Option("--params", help="Hyper-parameters: JSON object or @file.")] = None,
    parent: Annotated[int | None, typer.Option("--parent", help="Parent version id (a student's teacher).")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    project: Annotated[str, typer.Option("--project")] = "default",
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a model trained elsewhere as a new candidate version, with its lineage."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    metrics_obj = parse_json_option(metrics, "--metrics")
    params_obj = parse_json_option(params, "--params")
    with session_scope() as session:
        mv = gov.register_model(session=session, actor=who, name=name, artifact=artifact, family=family, role=role,
                                dataset=dataset, metrics=metrics_obj, params=params_obj, parent_id=parent,
                                description=description, project=project)
    _render(mv, json_out, verb="registered")


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    family: Annotated[str | None, typer.Option(help="Only this family.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 200,
    json_out: JsonOpt = False,
) -> None:
    """List model versions, newest first."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        versions = gov.list_models(session=session, name=name, stage=stage, family=family, limit=limit)
        rows = [gov.model_to_dict(mv) for mv in versions]
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} model versions", ("id", "name", "v", "family", "role", "stage", "parent",
                                                 "artifact sha256", "created by", "created (UTC)"),
                ((r["id"], r["name"], r["version"], r["family"], r["role"], r["stage"], r["parent_id"],
                  short(r["artifact_sha256"]), r["created_by"], r["created_at"][:19]) for r in rows))


@app.command()
def show(version_id: IdArg, json_out: JsonOpt = False) -> None:
    """Everything the registry knows about one version."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        mv = gov.get_model(session=session, version_id=version_id)
    _render(mv, json_out)


@app.command()
def validate(
    version_id: IdArg,
    evidence: Annotated[Path, typer.Option("--evidence", help="Validation report (stored by SHA-256).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Summary of the validation.")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Record independent validation (second line of defence). The registrant cannot validate."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        mv = gov.validate(session=session, version_id=version_id, actor=who, evidence=evidence, reason=reason)
    _render(mv, json_out, verb=f"validated by {who}")


def _change(service: str, verb: str, actor: str | None, json_out: bool, **kwargs: Any) -> None:
    """Call a governance stage-change service as the acting identity and render the version."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        mv = getattr(gov, service)(session=session, actor=who, **kwargs)
    _render(mv, json_out, verb=f"{verb} by {who}")


@app.command()
def approve(version_id: IdArg, reason: ReasonOpt, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Approve a validated version. The approver must not be its registrant."""
    _change("approve", "approved", actor, json_out, version_id=version_id, reason=reason)


@app.command()
def reject(version_id: IdArg, reason: ReasonOpt, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Reject a version before production (final)."""
    _change("reject", "rejected", actor, json_out, version_id=version_id, reason=reason)


@app.command()
def promote(
    version_id: IdArg,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put an approved version into production; the previous production version is retired."""
    _change("promote", "promoted", actor, json_out, version_id=version_id, reason=reason)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Retire the production version of NAME and restore the one it replaced."""
    _change("rollback", "restored", actor, json_out, name=name, reason=reason)


@app.command()
def lineage(version_id: IdArg, json_out: JsonOpt = False) -> None:
    """Dataset, run and code, parent teacher, approvals and deployments of a version, as a tree."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        tree = gov.lineage(session=session, version_id=version_id)
    if json_out:
        print_json(tree)
        return
    from rich.tree import Tree

    def add(node: Tree, info: dict[str, Any]) -> None:
        ds, at = info.get("dataset"), node
        while ds:  # a tokenizer names the corpus it was derived from: show the chain
            at = at.add(f"{ds.get('kind', 'dataset')} {ds['id']} {ds['name']}  sha256 {short(ds['sha256'])}  "
                        f"rows {ds['rows']}")
            ds = ds.get("derived_from")
        if run := info.get("run"):
            node.add(f"run {run['id']} {run['pipeline']} ({run['status']})  code {run['code_version']}"
                     f"{' (dirty)' if run['code_dirty'] else ''}")
        node.add(f"artifact sha256 {short(info['artifact_sha256'], 16)}  {info['artifact_bytes']:,} bytes")
        if usage := info.get("usage"):
            node.add(f"compute: {usage['cpu_hours']:.4f} CPU-h, {usage['gpu_hours']:.4f} GPU-h, {usage['kwh'] * 1000:.3f} Wh, "
                     f"{usage['gco2e']:.3f} gCO2e for the whole run ({'measured' if usage['measured'] else 'estimated'})")
        decisions = node.add("approvals")
        for a in info["approvals"]:
            decisions.add(f"{a['decision']} by {a['actor']} at {a['at'][:19]}: {a['reason']}"
                          + (f"  evidence {short(a['evidence_sha256'])}" if a["evidence_sha256"] else ""))
        deployments = node.add("deployments")
        for d in info["deployments"]:
            deployments.add(f"{d['from']} → {d['to']} by {d['actor']} at {d['at'][:19]}: {d['reason']}")
        if parent := info.get("parent"):
            add(node.add(f"parent: version {parent['id']} {parent['name']} v{parent['version']} "
                         f"({parent['role']}, {parent['stage']})"), parent)

    root = Tree(f"version {tree['id']} {tree['name']} v{tree['version']} ({tree['family']} {tree['role']}, "
                f"{tree['stage']}) registered by {tree['created_by']}")
    add(root, tree)
    console().print(root)


@app.command()
def history(name: Annotated[str, typer.Argument(help="Model name.")], json_out: JsonOpt = False) -> None:
    """Every stage change of every version of NAME: who, when, why."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        rows = gov.history(session=session, name=name)
    if json_out:
        print_json(rows)
        return
    print_table(f"history of {name}", ("time (UTC)", "version id", "v", "from", "to", "actor", "reason"),
                ((r["at"][:23], r["version_id"], r["version"], r["from"] or "—", r["to"], r["actor"], r["reason"])
                 for r in rows))


@app.command()
def at(
    name: Annotated[str, typer.Argument(help="Model name.")],
    time: Annotated[str, typer.Option("--time", help="ISO 8601 instant, 'now', or an age such as 3d.")],
    json_out: JsonOpt = False,
) -> None:
    """Which version of NAME was in production at a given time."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.timeparse import parse_time

    when = parse_time(time, option="--time")
    with session_scope(write=False) as session:
        mv = gov.in_production_at(session=session, name=name, at=when)
    if json_out:
        print_json({"time": when.isoformat(), **gov.model_to_dict(mv)})
    else:
        console().print(f"at {when.isoformat()} {name} was served by version {mv.id} (v{mv.version}, "
                        f"artifact {short(mv.artifact_sha256, 16)}, registered by {mv.created_by})")
