"""``cvg pipelines``: run the training pipelines on Ray, or compile and submit them to Kubeflow."""

from __future__ import annotations

import json
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
    print_table,
    stdout_for_json,
)

app = typer.Typer(help="Training pipelines: run on Ray (local or a cluster), compile for Kubeflow, submit, "
                       "list runs.", no_args_is_help=True)

FamilyArg = Annotated[str, typer.Argument(help="Pipeline family: trading (E-mini ticks → return forecaster) or "
                                          "language (State of the Union text → small transformer).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file (JSON or TOML); unknown keys "
                                                "are refused.")]
SetOpt = Annotated[str | None, typer.Option("--set", help='Inline overrides as JSON, e.g. \'{"eval": {"folds": 2}}\'.')]


def _config(family: str, config: Path | None, overrides: str | None) -> Any:
    from convergence.platform.errors import InvalidInput

    if family not in ("trading", "language"):
        raise InvalidInput(f"unknown pipeline family {family!r}: use trading or language")
    from convergence.pipelines._config import load_config

    extra = parse_json_option(overrides, "--set")
    if extra is not None and not isinstance(extra, dict):
        raise InvalidInput("--set must be a JSON object")
    return load_config(config, extra, family)


def _progress() -> Any:
    err = console(stderr=True)

    def show(step: str, state: str, detail: str) -> None:
        mark = {"start": "[cyan]…[/cyan]", "running": "[dim]⋯[/dim]", "done": "[green]✓[/green]",
                "failed": "[red]✗[/red]"}.get(state, "·")
        err.print(f"{mark} {step}" + (f"  [dim]{detail}[/dim]" if detail else ""))

    return show


def _render_gates(summary: dict[str, Any]) -> None:
    print_table("gates", ("check", "value", "needs", "result"),
                ((c["check"], f"{c['value']:.4g}", f"{c['op']} {c['threshold']}", "pass" if c["passed"] else "FAIL")
                 for c in summary["gates"]["checks"]))
    if summary["versions"]:
        console().print("registered as candidates: " + ", ".join(f"{k} → version {v}" for k, v in
                                                                summary["versions"].items())
                        + f"\nevidence: {summary['evidence']}")


def _render_language(summary: dict[str, Any]) -> None:
    ppl, speed, size = summary["perplexity"], summary["speed"], summary["size"]
    batched = next((k for k in speed["teacher"] if k != "tokens_per_s_batch1"), None)
    print_table("held-out perplexity, generation speed, size",
                ("model", "params", "ppl SOTU 2010+", "ppl Reuters", "tokens/s b1",
                 f"tokens/s b{batched.rsplit('batch', 1)[-1]}" if batched else "batched"),
                ((k, f"{size[k]['params']:,}", f"{ppl[k]['sotu_holdout']:.1f}",
                  f"{ppl[k]['reuters']:.1f}" if "reuters" in ppl[k] else "-",
                  f"{speed[k]['tokens_per_s_batch1']:.0f}", f"{speed[k][batched]:.0f}" if batched else "-")
                 for k in ("teacher", "student", "label_only")))
    for sample in summary["samples"].get("student", [])[:2]:
        console().print(f"[dim]student sample:[/dim] {sample['prompt']}[italic]{sample['text'][:160]!r}[/italic]")


def _render_summary(summary: dict[str, Any]) -> None:
    out = console()
    out.print(f"run {summary['run_id']}: [bold]{summary['status']}[/bold] in {summary['seconds']} s; dataset "
              f"{summary['dataset']['name']} (sha256 {summary['dataset']['sha256'][:12]}…)")
    if "perplexity" in summary:
        _render_language(summary)
        _render_gates(summary)
        return
    keys = [k for k in ("teacher", "student", "int8", "label_only") if k in summary["holdout"]]
    print_table("holdout (out of sample) and latency", ("model", "params", "mse ×1e8", "IC", "hit rate", "Sharpe",
                                                        "fidelity", "batch 1 µs", "batch 64 µs/row"),
                ((k, f"{summary['size'][k]['params']:,}", f"{summary['holdout'][k]['mse'] * 1e8:.3f}",
                  f"{summary['holdout'][k]['ic']:.3f}", f"{summary['holdout'][k]['hit_rate']:.3f}",
                  f"{summary['holdout'][k]['sharpe']:.2f}", f"{summary['holdout'][k].get('fidelity', 1.0):.3f}",
                  f"{summary['latency'][k]['batch1_s'] * 1e6:.1f}", f"{summary['latency'][k]['batch64_row_s'] * 1e6:.2f}")
                 for k in keys))
    _render_gates(summary)


@app.command()
def run(
    family: FamilyArg,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="ray://host:10001 (default: "
                                                    "$CVG_RAY_ADDRESS, else a local Ray).")] = None,
    project: Annotated[str, typer.Option("--project")] = "default",
    trigger: Annotated[str | None, typer.Option("--trigger", hidden=True, help="What started this run (JSON); set "
                                                "by Kubernetes Jobs, recorded in lineage.")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a pipeline end to end and register candidates with lineage and evidence (the registrant role).
    Exits 4 when a gate fails. With CVG_API_URL the API server runs it and this follows its progress.

    trading: ticks, features, teacher (Ray Train), distilled student, INT8, walk-forward, holdout gates.
    language: corpus, BPE tokenizer, transformer teacher (Ray Train), distilled student and label-only control
    (Ray tasks), held-out perplexity on SOTU and Reuters, tokens/s, fixed-seed samples, gates."""
    from convergence.platform.errors import PolicyViolation

    cfg = _config(family, config, overrides)
    ops = operations(actor, progress=_progress(), ray_address=ray_address)
    with stdout_for_json(json_out):  # Ray's notices (a retried task) must not end up in the JSON
        job = ops.run_pipeline(family=family, overrides=cfg.to_dict(), project=project,
                               trigger=parse_json_option(trigger, "--trigger"))
        if job["id"] is not None:
            job = _follow(ops, job)
    summary = job["summary"]
    if summary is None:
        from convergence.platform.errors import StepFailed

        raise StepFailed(job["error"] or "the run ended without a summary", step=f"job {job['id']}")
    if json_out:
        print_json(summary)
    else:
        _render_summary(summary)
    if not summary["gates"]["passed"]:
        raise PolicyViolation("gates failed, nothing registered: " + "; ".join(summary["gates"]["failed"]),
                              hint=f"the evidence is in {summary['evidence']}")


def _follow(ops: Any, job: dict[str, Any], poll_s: float = 1.0) -> dict[str, Any]:
    """Print a server-side job's progress as it comes, until it ends."""
    import time

    show, seen = _progress(), 0
    console(stderr=True).print(f"job {job['id']} started on the API server")
    while True:
        for item in job["progress"][seen:]:
            show(item["step"], item["state"], item["detail"])
        seen = len(job["progress"])
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(poll_s)
        job = ops.pipeline_job(job_id=job["id"])


@app.command()
def job(job_id: Annotated[int, typer.Argument(help="Job id (from `cvg pipelines run` with CVG_API_URL).")],
        actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """A pipeline job on the API server: status, progress, run id, error."""
    data = operations(actor).pipeline_job(job_id=job_id)
    if json_out:
        print_json(data)
        return
    console().print(f"job {data['id']} ({data['family']}, by {data['requested_by']}): {data['status']}"
                    + (f", run {data['run_id']}" if data["run_id"] else "") + (f" — {data['error']}" if data["error"] else ""))
    for item in data["progress"]:
        console().print(f"  {item['state']:>6} {item['step']}  {item['detail']}")


@app.command("compile")
def compile_(
    family: FamilyArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the KFP v2 spec (.yaml).")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    image: Annotated[str | None, typer.Option("--image", help="Container image (default: $CVG_IMAGE).")] = None,
) -> None:
    """Compile the pipeline to a Kubeflow Pipelines v2 spec whose steps run `cvg pipelines step`."""
    from convergence.pipelines import compile_pipeline
    from convergence.platform.settings import get_settings

    import tempfile

    from convergence.platform.files import atomic_output, check_output

    check_output(output)
    cfg = _config(family, config, overrides)
    with tempfile.TemporaryDirectory() as private, atomic_output(output) as fh:  # KFP writes where we say
        fh.write(compile_pipeline(cfg, Path(private) / output.name, image or get_settings().image).read_bytes())
    console(stderr=True).print(f"wrote {output}")


@app.command()
def submit(
    family: FamilyArg,
    host: Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888.")],
    package: Annotated[Path | None, typer.Option("--package", help="A compiled spec (default: compile now).")] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="Create a recurring run with this cron expression.")] = None,
    run_name: Annotated[str | None, typer.Option("--run-name")] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a run (or a recurring run with --cron) to a Kubeflow Pipelines server."""
    import tempfile

    from convergence.pipelines import compile_pipeline, submit_pipeline
    from convergence.platform.settings import get_settings

    cfg = _config(family, config, None)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package or compile_pipeline(cfg, Path(tmp) / f"{family}.yaml", get_settings().image)
        result = submit_pipeline(pkg, host=host, run_name=run_name, cron=cron)
    if json_out:
        print_json(result)
    else:
        console().print(" ".join(f"{k}={v}" for k, v in result.items()))


@app.command()
def step(
    family: FamilyArg,
    name: Annotated[str, typer.Argument(help="trading: load_data, build_features, train_teacher, distill_student, "
                                        "walk_forward, evaluate_register; language: load_corpus, tokenize, "
                                        "train_teacher, distill_student, evaluate_register.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for this step's artifacts.")],
    inputs: Annotated[list[Path] | None, typer.Option("--in", help="Output directory of each step this one "
                                                       "reads, in order.")] = None,
    config_json: Annotated[str | None, typer.Option("--config-json", help="The config as JSON (Kubeflow passes it).")] = None,
    config: ConfigOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Run one step over directories (what each Kubeflow component executes; the pod acts as its service
    account through CVG_API_KEY)."""
    from convergence.pipelines import run_step

    cfg = _config(family, config, config_json)
    state = run_step(name, cfg, list(inputs or []), out, principal=operations(actor).principal)
    console(stderr=True).print(f"step {name} done: {json.dumps(state, default=str)[:300]}")


@app.command()
def trigger(
    family: FamilyArg,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Submit to Kubernetes (the only target so far).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the manifest instead of submitting it.")] = False,
    ray: Annotated[bool, typer.Option("--rayjob/--job", help="With --dry-run: show the KubeRay RayJob or the "
                                      "batch/v1 Job. When submitting, KubeRay's presence decides.")] = True,
    overrides: SetOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a pipeline run on Kubernetes (the registrant or operator role): a KubeRay RayJob on the chart's
    RayCluster where KubeRay is installed, else a batch/v1 Job running this CLI in the project's image."""
    from convergence.platform.errors import InvalidInput

    if not kubernetes:
        raise InvalidInput("say where: --kubernetes (to run here, use `cvg pipelines run`)")
    _config(family, None, overrides)  # validate the overrides before anything leaves this machine
    result = operations(actor).trigger_pipeline(family=family, overrides=parse_json_option(overrides, "--set"),
                                                dry_run=dry_run, rayjob=ray)
    if dry_run or json_out:
        print_json(result)
    else:
        console().print(f"created {result['kind']} {result['job']} in namespace {result['namespace']}")


@app.command()
def schedule(
    family: FamilyArg,
    cron: Annotated[str, typer.Option("--cron", help="Cron expression, e.g. '0 6 * * 1-5'.")],
    host: Annotated[str | None, typer.Option("--host", help="Kubeflow Pipelines endpoint: create a recurring run.")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Create a KubeRay RayCronJob in the cluster "
                                             "instead (needs KubeRay; else use the chart's CronJobs).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --kubernetes: print the RayCronJob only.")] = False,
    config: ConfigOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Schedule recurring runs: a KFP recurring run (--host) or a KubeRay RayCronJob manifest (--kubernetes)."""
    from convergence.platform.errors import InvalidInput

    cfg = _config(family, config, None)
    if kubernetes:
        from convergence.pipelines import rayjob_manifest, schedule_run

        who = operations(actor).principal
        if dry_run:
            print_json(rayjob_manifest(family=family, requested_by=who, overrides=cfg.to_dict(), schedule=cron))
            return
        result = schedule_run(family=family, requested_by=who, cron=cron, overrides=cfg.to_dict())
        print_json(result) if json_out else console().print(f"created RayCronJob {result['job']} ({cron})")
        return
    if not host:
        raise InvalidInput("say where: --host URL (Kubeflow Pipelines) or --kubernetes (KubeRay RayCronJob)")
    import tempfile

    from convergence.pipelines import compile_pipeline, submit_pipeline
    from convergence.platform.settings import get_settings

    with tempfile.TemporaryDirectory() as tmp:
        pkg = compile_pipeline(cfg, Path(tmp) / f"{family}.yaml", get_settings().image)
        result = submit_pipeline(pkg, host=host, cron=cron)
    print_json(result) if json_out else console().print(" ".join(f"{k}={v}" for k, v in result.items()))


@app.command()
def runs(limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20, actor: ActorOpt = None,
         json_out: JsonOpt = False) -> None:
    """Recent pipeline runs: status, code version, dataset, timings."""
    rows = operations(actor).list_runs(limit=limit)
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} pipeline runs", ("id", "pipeline", "status", "started (UTC)", "finished", "by",
                                               "code", "error"),
                ((r["id"], r["pipeline"], r["status"], r["started_at"][:19], (r["finished_at"] or "")[:19],
                  r["created_by"], r["code_version"][:16] + ("*" if r["code_dirty"] else ""), (r["error"] or "")[:60])
                 for r in rows))
