"""``cvg drift``: check production models for drift, show reports, and their history."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, actor_or_fail, console, print_json, print_table

app = typer.Typer(help="Drift monitoring: compare recent predictions with the training reference (fast path + "
                       "Evidently report), raise deduplicated alerts, deliver them as signed webhooks.",
                  no_args_is_help=True)


def _report_dict(r: Any) -> dict[str, Any]:
    from convergence.governance._drift import report_html_path

    html = report_html_path(r)
    return {"html_report": str(html) if html else None,"id": r.id, "model_version_id": r.model_version_id, "window_start": r.window_start.isoformat(),
            "window_end": r.window_end.isoformat(), "rows": r.rows, "drift_share": r.drift_share,
            "drifted": r.drifted, "severity": r.severity, "columns": r.columns,
            "evidently_html": r.evidently_html_uri, "evidently_json": r.evidently_json_uri,
            "created_at": r.created_at.isoformat(), "created_by": r.created_by}


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
                                          "(local Ray); its model still needs validation and approval.")] = False,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="With --retrain: create a Kubernetes Job instead.")] = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare the production version's recent predictions with its reference profile. Exits 0 either way;
    the report says whether it drifted."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.timeparse import parse_time

    who = actor_or_fail(actor)
    end = parse_time(until, option="--until")
    start = parse_time(since, option="--since") if since else parse_time(window, now=end, option="--window")
    with session_scope() as session:
        report, alerts = gov.check_drift(session=session, name=name, since=start, until=end, actor=who,
                                         evidently=evidently)
        data = _report_dict(report)
        data["new_alerts"] = [{"id": a.id, "severity": a.severity, "message": a.message} for a in alerts]
    if deliver:
        data["webhooks"] = gov.deliver_until_idle(deadline_s=10)
    if retrain and alerts:
        from convergence.pipelines import retrain_after_alerts

        data["retraining"] = retrain_after_alerts(name=name, alert_ids=[a["id"] for a in data["new_alerts"]], actor=who,
                                                  kubernetes=kubernetes)
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
        if "job" in r:
            console().print(f"retraining Job {r['job']} created in {r['namespace']}")
        else:
            console().print(f"retraining run {r['run_id']}: {r['status']}; new candidates {r['versions']} await validation")


@app.command()
def show(report_id: int, json_out: JsonOpt = False) -> None:
    """One drift report with every column's statistics and the Evidently report's path."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        data = _report_dict(gov.get_report(session=session, report_id=report_id))
    print_json(data) if json_out else _render(data)


@app.command()
def history(name: Annotated[str, typer.Argument(help="Model name.")],
            limit: Annotated[int, typer.Option()] = 50, json_out: JsonOpt = False) -> None:
    """Past drift checks of every version of NAME, newest first."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        rows = [_report_dict(r) for r in gov.drift_history(session=session, name=name, limit=limit)]
    if json_out:
        print_json(rows)
        return
    print_table(f"drift history of {name}", ("report", "version", "window", "rows", "drift share", "severity"),
                ((r["id"], r["model_version_id"], f"{r['window_start'][:16]} → {r['window_end'][:16]}", r["rows"],
                  f"{r['drift_share']:.0%}", r["severity"] or "—") for r in rows))
