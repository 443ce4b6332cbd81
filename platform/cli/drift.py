"""``cvg drift``: check production models for drift, show reports, and their history."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Drift monitoring: compare recent predictions with the training reference (fast path + "
                       "Evidently report), raise deduplicated alerts, deliver them as signed webhooks.",
                  no_args_is_help=True)


def _render(report: dict[str, Any]) -> None:
    print_table(f"drift report {report['id']}: version {report['model_version_id']}, {report['rows']:,} predictions, "
                f"{report['drift_share']:.0%} of columns drifted" + (f" ({report['severity']})" if report["severity"] else ""),
                ("column", "test", "value", "threshold", "drift", "Evidently", "PSI", "ref mean", "cur mean"),
                ((c, r["method"], f"{r['statistic']:.4g}", r["threshold"], "DRIFT" if r["drifted"] else "ok",
                  {True: "DRIFT", False: "ok"}.get(r.get("evidently_drifted"), "—"), f"{r['psi']:.3f}",
                  f"{r['reference_mean']:.4g}", f"{r['current_mean']:.4g}") for c, r in report["columns"].items()))
    if report["html_report"]:
        console().print(f"Evidently report: {report['html_report']}")


@app.command()
def check(
    name: Annotated[str, typer.Argument(help="Model name; its production version is checked.")],
    window: Annotated[str, typer.Option("--window", help="How far back from --until: 90m, 1h, 7d.")] = "1h",
    since: Annotated[str | None, typer.Option("--since", help="Window start (overrides --window).")] = None,
    until: Annotated[str, typer.Option("--until", help="Window end.")] = "now",
    evidently: Annotated[bool, typer.Option("--evidently/--no-evidently", help="Also produce Evidently's "
                                            "HTML/JSON report for the record.")] = True,
    deliver: Annotated[bool, typer.Option("--deliver/--no-deliver", help="Deliver queued webhooks after the check.")] = True,
    retrain: Annotated[bool, typer.Option("--retrain", help="When a new alert is raised, start a retraining run "
                                          "(needs the registrant role too); its model still needs validation and "
                                          "approval.")] = False,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="With --retrain: create a Kubernetes Job instead.")] = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare the production version's recent predictions with its reference profile (the operator role).
    Exits 0 either way; the report says whether it drifted."""
    data = operations(actor).check_drift(name=name, window=window, since=since, until=until, evidently=evidently,
                                         deliver=deliver, retrain=retrain, kubernetes=kubernetes)
    if json_out:
        print_json(data)
        return
    _render(data)
    for a in data["new_alerts"]:
        console().print(f"[yellow]new {a['severity']} alert {a['id']}[/yellow]: {a['message']}")
    if "webhooks" in data:
        console().print("webhooks: " + ", ".join(f"{k} {v}" for k, v in data["webhooks"].items()))
    if "retraining" in data:
        r = data["retraining"]
        if "error" in r:
            console().print(f"[red]retraining did not start[/red]: {r['message']}")
        elif "job" in r and "namespace" in r:
            console().print(f"retraining Job {r['job']} created in {r['namespace']}")
        elif "job" in r:
            console().print(f"retraining runs on the API server as job {r['job']} (`cvg pipelines job {r['job']}`)")
        else:
            console().print(f"retraining run {r['run_id']}: {r['status']}; new candidates {r['versions']} await validation")


@app.command()
def show(report_id: int, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """One drift report with every column's statistics and the Evidently report's path."""
    data = operations(actor).show_drift(report_id=report_id)
    print_json(data) if json_out else _render(data)


@app.command()
def history(name: Annotated[str, typer.Argument(help="Model name.")],
            limit: Annotated[int, typer.Option()] = 50, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Past drift checks of every version of NAME, newest first."""
    rows = operations(actor).drift_history(name=name, limit=limit)
    if json_out:
        print_json(rows)
        return
    print_table(f"drift history of {name}", ("report", "version", "window", "rows", "drift share", "severity"),
                ((r["id"], r["model_version_id"], f"{r['window_start'][:16]} → {r['window_end'][:16]}", r["rows"],
                  f"{r['drift_share']:.0%}", r["severity"] or "—") for r in rows))
