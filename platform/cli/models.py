"""``cvg models``: register, inspect, validate, approve, promote and trace model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from convergence.platform.cli._common import (
    ActorOpt,
    JsonOpt,
    console,
    operations,
    parse_json_option,
    print_json,
    print_mapping,
    print_table,
    short,
)

app = typer.Typer(help="Model registry: register, list, show, validate, approve, reject, promote, roll back, "
                       "and trace lineage and history. Each step needs its role, and nobody approves, validates "
                       "or promotes a version they registered.", no_args_is_help=True)

IdArg = Annotated[int, typer.Argument(help="Model version id (see `cvg models list`).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded on the audit trail.")]


def _render(data: dict[str, Any], json_out: bool, verb: str | None = None) -> None:
    if json_out:
        print_json(data)
    elif verb:
        console().print(f"model version {data['id']} ({data['name']} v{data['version']}) {verb}: stage is now "
                        f"[bold]{data['stage']}[/bold]")
    else:
        print_mapping(f"model version {data['id']}", data)


def _dataset_id(ops: Any, dataset: str | None, project: str) -> int | None:
    """--dataset as an id, a SHA-256, or a file (hashed here; a CSV's rows and columns are read too)."""
    import re

    from convergence.platform.errors import InvalidInput

    if dataset is None:
        return None
    if dataset.isdigit():
        return int(dataset)
    path = Path(dataset)
    if path.is_file():
        from convergence.governance import sha256_file

        sha, _ = sha256_file(path)
        rows, columns = _csv_shape(path) if path.suffix.lower() == ".csv" else (None, None)
        return ops.register_dataset(sha256=sha, name=path.name, rows=rows, columns=columns,
                                    uri=path.resolve().as_uri(), project=project)["id"]
    if re.fullmatch(r"[0-9a-fA-F]{64}", dataset):
        return ops.register_dataset(sha256=dataset.lower(), project=project)["id"]
    raise InvalidInput(f"--dataset {dataset!r} is not a file, a dataset id or a SHA-256")


def _csv_shape(path: Path) -> tuple[int | None, list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = sum(1 for _ in reader)
    return rows or None, [h[:200] for h in header[:1000]]


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="Model name; versions are numbered per name.")],
    artifact: Annotated[Path, typer.Option("--artifact", help="The model file (stored by SHA-256).")],
    family: Annotated[str, typer.Option("--family", help="trading or language.")],
    role: Annotated[str, typer.Option("--role", help="teacher, student, quantized or compiled.")],
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
    """Register a model trained elsewhere as a new candidate version, with its lineage (needs the registrant
    role; you become the version's registrant)."""
    metrics_obj = parse_json_option(metrics, "--metrics")
    params_obj = parse_json_option(params, "--params")
    ops = operations(actor)
    uploaded = ops.upload_artifact(source=artifact)
    data = ops.register_model(name=name, artifact_sha256=uploaded["sha256"], family=family, role=role,
                              dataset_id=_dataset_id(ops, dataset, project), metrics=metrics_obj, params=params_obj,
                              parent_id=parent, description=description, project=project)
    _render(data, json_out, verb="registered")


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    family: Annotated[str | None, typer.Option(help="Only this family.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 200,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List model versions, newest first."""
    rows = operations(actor).list_models(name=name, stage=stage, family=family, limit=limit)
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} model versions", ("id", "name", "v", "family", "role", "stage", "parent",
                                                 "artifact sha256", "created by", "created (UTC)"),
                ((r["id"], r["name"], r["version"], r["family"], r["role"], r["stage"], r["parent_id"],
                  short(r["artifact_sha256"]), r["created_by"], r["created_at"][:19]) for r in rows))


@app.command()
def show(version_id: IdArg, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Everything the registry knows about one version."""
    _render(operations(actor).show_model(version_id=version_id), json_out)


@app.command()
def convert(version_id: IdArg, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Register a first-wave (pickled) artifact again as a safe one. Nothing loads a pickle any more: the new
    version has the same name, dataset, parent and run, names the one it came from in its params, answers
    identically (checked), and needs validation and approval again (the registrant role; you register it)."""
    data = operations(actor).convert_model(version_id=version_id)
    if json_out:
        print_json(data)
        return
    console().print(f"version {version_id} converted: model version {data['id']} ({data['name']} v{data['version']}) "
                    f"registered as a safe artifact, stage [bold]{data['stage']}[/bold]; validate and approve it, "
                    "then promote it in place of the old one")


@app.command(name="compile")
def compile_(version_id: IdArg, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Compile an eager trading version to onnxruntime: a float graph (and, for a student, a static INT8 graph
    calibrated on its training rows), each checked against it on the holdout of the data it was trained on and
    timed at batch 1 and 64 here. Those whose gate passes are registered as its children (roles compiled,
    quantized): candidates, validated and approved like any version. Takes a minute: the data is rebuilt."""
    data = operations(actor).compile_model(version_id=version_id)
    if json_out:
        print_json(data)
        return
    lat = data["latency"]
    out = console()
    for key, found in data["evidence"].items():
        eq, registered = found["equivalence"], data["versions"].get(key)
        out.print(f"{key}: max |diff| {eq['max_abs_diff']:.3g} ({eq['max_abs_diff_scaled']:.2g} of the output s.d.), "
                  f"fidelity {eq['fidelity']:.5f}; batch 1 {lat[key]['batch1_s'] * 1e6:.1f} µs, batch 64 "
                  f"{lat[key]['batch64_row_s'] * 1e6:.2f} µs/row → " + (
                      f"registered as version {registered} ({found['role']}), stage candidate" if registered else
                      f"[red]not registered[/red]: {'; '.join(data['not_registered'][key])}"))
    eager = next(k for k in lat if k not in data["evidence"])
    out.print(f"eager version {version_id}: batch 1 {lat[eager]['batch1_s'] * 1e6:.1f} µs, batch 64 "
              f"{lat[eager]['batch64_row_s'] * 1e6:.2f} µs/row; validate and approve a child to let serving pick it")


@app.command()
def validate(
    version_id: IdArg,
    evidence: Annotated[Path, typer.Option("--evidence", help="Validation report (stored by SHA-256).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Summary of the validation.")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Record independent validation (second line of defence; the validator role). The registrant cannot."""
    ops = operations(actor)
    uploaded = ops.upload_artifact(source=evidence)
    data = ops.validate_model(version_id=version_id, evidence_sha256=uploaded["sha256"], reason=reason)
    _render(data, json_out, verb=f"validated by {ops.principal.name}")


@app.command()
def approve(
    version_id: IdArg,
    reason: ReasonOpt,
    safe_output: Annotated[float | None, typer.Option("--safe-output", help="Trading: what this version answers "
                                                      "while killed (0.0 = flat, in [-1, 1]); fixed now, by you. "
                                                      "Without it, a kill answers 503.")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Approve a validated version (the approver role). Neither its registrant nor its validator may."""
    ops = operations(actor)
    data = ops.approve_model(version_id=version_id, reason=reason, safe_output=safe_output)
    _render(data, json_out, verb=f"approved by {ops.principal.name}")


@app.command()
def reject(version_id: IdArg, reason: ReasonOpt, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Reject a version before production (final; the approver role)."""
    ops = operations(actor)
    _render(ops.reject_model(version_id=version_id, reason=reason), json_out, verb=f"rejected by {ops.principal.name}")


@app.command()
def promote(
    version_id: IdArg,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put an approved version into production (the operator role, not its registrant); the previous
    production version is retired."""
    ops = operations(actor)
    data = ops.promote_model(version_id=version_id, reason=reason)
    _render(data, json_out, verb=f"promoted by {ops.principal.name}")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    rollout_only: Annotated[bool, typer.Option("--rollout", help="Only end NAME's shadow or canary.")] = False,
    production: Annotated[bool, typer.Option("--production", help="Only roll production back: retire its version "
                                             "and restore the one it replaced.")] = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """End NAME's shadow or canary if one runs; otherwise retire NAME's production version and restore the one
    it replaced (the operator role). Right after a rollout ended (a guard may have ended the one you meant),
    rolling production back needs --production."""
    from convergence.platform.errors import InvalidInput

    if rollout_only and production:
        raise InvalidInput("--rollout and --production exclude each other")
    ops = operations(actor)
    data = ops.rollback_model(name=name, reason=reason,
                              target="rollout" if rollout_only else "production" if production else "auto")
    if data.pop("rolled_back") == "rollout":
        if json_out:
            print_json(data)
        else:
            console().print(f"{data['mode']} of version {data['version_id']} ({name}, deployment {data['id']}) "
                            f"rolled back by {ops.principal.name}: production answers alone at every replica's "
                            "next poll")
        return
    _render(data, json_out, verb=f"restored by {ops.principal.name}")


@app.command()
def deploy(
    version_id: IdArg,
    shadow: Annotated[bool, typer.Option("--shadow", help="Score every request with it; answer with production.")]
    = False,
    canary: Annotated[float | None, typer.Option("--canary", metavar="PCT", help="Answer this percentage of "
                                                 "requests with it (by request key or body hash).")] = None,
    promote_: Annotated[bool, typer.Option("--promote", help="Finish the running shadow or canary of this version: "
                                           "it becomes production once its guards held for --min-requests.")] = False,
    max_error_rate: Annotated[float | None, typer.Option(help="Guard: share of its answers that failed (0.02).")]
    = None,
    max_p99_ms: Annotated[float | None, typer.Option(help="Guard: its p99 latency in ms.")] = None,
    max_disagreement: Annotated[float | None, typer.Option(help="Guard: share of answers farther than "
                                                           "--disagreement-bound from production's (language: "
                                                           "differing continuations at temperature 0).")] = None,
    disagreement_bound: Annotated[float | None, typer.Option(help="How far an answer may differ and still agree "
                                                             "(0).")] = None,
    max_mean_abs_diff: Annotated[float | None, typer.Option(help="Guard: mean |its answer - production's|.")] = None,
    max_output_drift: Annotated[float | None, typer.Option(help="Guard: KS statistic of its outputs against "
                                                           "production's on the same requests.")] = None,
    guard_after: Annotated[int | None, typer.Option(help="Answers measured before a guard may trip (50).")] = None,
    min_requests: Annotated[int, typer.Option(help="Answers the guards must hold for before --promote.")] = 500,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Roll an approved version out beside production: --shadow, --canary PCT, then --promote (the operator role).

    A guard that breaks rolls it back on every replica within a poll, audited as deployment.rolled_back with the
    measured values, with a critical alert and its webhook.

    `cvg models rollout NAME` shows what the replicas measured; `cvg models rollback NAME` ends it at any point.
    """
    from convergence.platform.errors import InvalidInput

    if [shadow, canary is not None, promote_].count(True) != 1:
        raise InvalidInput("say how to deploy: one of --shadow, --canary PCT or --promote")
    mode = "shadow" if shadow else "canary" if canary is not None else "promote"
    guards = {k: v for k, v in {"max_error_rate": max_error_rate, "max_p99_ms": max_p99_ms,
                                "max_disagreement": max_disagreement, "disagreement_bound": disagreement_bound,
                                "max_mean_abs_diff": max_mean_abs_diff, "max_output_drift": max_output_drift,
                                "guard_after": guard_after}.items() if v is not None}
    if mode == "promote" and guards:
        raise InvalidInput("guards are set when the shadow or canary starts, not at --promote")
    ops = operations(actor)
    data = ops.deploy_model(version_id=version_id, mode=mode, percent=canary, guards=guards or None,
                            min_requests=min_requests, reason=reason)
    if json_out:
        print_json(data)
    elif mode == "promote":
        console().print(f"version {version_id} ({data['name']}) promoted by {ops.principal.name} after "
                        f"{data['measured']['requests']:,} answers with its guards held; it is production now")
    else:
        share = "scores every request (answers: production)" if mode == "shadow" else f"answers {data['percent']:g} %"
        set_guards = ", ".join(f"{k} {v:g}" for k, v in data["guards"].items() if v is not None)
        console().print(f"deployment {data['id']}: version {version_id} ({data['name']}) {share}, started by "
                        f"{ops.principal.name}; guards: {set_guards}; promotable after {data['min_requests']:,} "
                        "answers")


@app.command()
def rollout(name: Annotated[str, typer.Argument(help="Model name.")], actor: ActorOpt = None,
            json_out: JsonOpt = False) -> None:
    """NAME's running shadow or canary: guards, what the replicas measured, and whether it may be promoted."""
    data = operations(actor).model_rollout(name=name)
    if json_out:
        print_json(data)
        return
    m = data["measured"]
    rate = lambda a, b: f"{a / b:.4f}" if b else "—"  # noqa: E731
    print_table(f"{data['mode']} of version {data['version_id']} ({name}, deployment {data['id']})",
                ("measure", "value", "limit"),
                [("answers (all replicas)", f"{m['requests']:,}", f"promote after {data['min_requests']:,}"),
                 ("error rate", rate(m["errors"], m["requests"]), data["guards"].get("max_error_rate")),
                 ("p99 ms", m["p99_ms"], data["guards"].get("max_p99_ms")),
                 ("disagreement", rate(m["disagreements"], m["compared"]), data["guards"].get("max_disagreement")),
                 ("mean |difference|", rate(m["abs_diff_sum"], m["compared"]), data["guards"].get("max_mean_abs_diff")),
                 ("output drift (KS)", m["output_drift"], data["guards"].get("max_output_drift")),
                 ("replicas reporting", m["replicas"], "")])
    console().print("promotable now" if data["promotable"] else
                    f"not promotable yet: {', '.join(b['guard'] for b in data['breached']) or 'too few answers'}")


@app.command()
def lineage(version_id: IdArg, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Dataset, run and code, parent teacher, approvals and deployments of a version, as a tree."""
    tree = operations(actor).model_lineage(version_id=version_id)
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
def history(name: Annotated[str, typer.Argument(help="Model name.")], actor: ActorOpt = None,
            json_out: JsonOpt = False) -> None:
    """Every stage change of every version of NAME: who, when, why."""
    rows = operations(actor).model_history(name=name)
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
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Which version of NAME was in production at a given time, and the shadow or canary beside it then."""
    data = operations(actor).model_at(name=name, time=time)
    if json_out:
        print_json(data)
        return
    console().print(f"at {data['time']} {name} was served by version {data['id']} (v{data['version']}, "
                    f"artifact {short(data['artifact_sha256'], 16)}, registered by {data['created_by']})")
    if len(data["split"]) > 1:
        prod, new = data["split"]
        console().print(f"split: production {prod['share']:g} %, version {new['version_id']} as "
                        f"{new['route']} {new['share']:g} % (deployment {new['deployment_id']})"
                        + (", scoring every request" if new["route"] == "shadow" else ""))


@app.command()
def classify(
    name: Annotated[str, typer.Argument(help="Model name.")],
    tier: Annotated[str, typer.Option("--tier", help="Materiality tier: high, medium or low.")],
    owner: Annotated[str, typer.Option("--owner", help="The model owner: #ID, sa:NAME, os:NAME, oidc:SUBJECT.")],
    validator: Annotated[str, typer.Option("--validator", help="Who validates it (same forms as --owner).")],
    next_review: Annotated[str, typer.Option("--next-review", help="Next review date, YYYY-MM-DD, in the future.")],
    reason: ReasonOpt,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Set NAME's model-risk fields, carried by every audit pack (the risk or admin role; audited)."""
    data = operations(actor).classify_model(name=name, tier=tier, owner=owner, validator=validator,
                                            next_review=next_review, reason=reason)
    print_json(data) if json_out else console().print(
        f"{name}: tier {data['tier']}, owner {data['owner']}, validator {data['validator']}, "
        f"next review {data['next_review']}")


@app.command()
def pack(
    version_id: IdArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The zip to write.")],
    actor: ActorOpt = None,
) -> None:
    """Write the version's audit pack: model card, lineage, evidence, drift, usage, every ledger event with its
    inclusion proof, a signed manifest. `python governance/auditor.py pack FILE --pubkey KEY` verifies it."""
    from convergence.platform.files import atomic_output, check_output

    check_output(output)
    size = 0
    with atomic_output(output, mode=0o600) as fh:
        for chunk in operations(actor).model_pack(version_id=version_id):
            fh.write(chunk)
            size += len(chunk)
    console(stderr=True).print(f"wrote the audit pack of version {version_id} to {output} ({size:,} bytes); "
                               "verify it with `python governance/auditor.py pack FILE --pubkey \"$(cvg audit pubkey)\"`")

