"""``cvg budgets``: compute and energy budgets — set, approve raises, show used vs limit, report usage."""

from __future__ import annotations

from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, actor_or_fail, console, print_json, print_table

app = typer.Typer(help="Power and compute budgets: set limits, approve raises (four eyes), show what is used, "
                       "report usage per run, step, model or family.", no_args_is_help=True)

ProjectOpt = Annotated[str, typer.Option("--project", help="Project name.")]


@app.command("set")
def set_(
    metric: Annotated[str, typer.Option("--metric", help="cpu_hours, gpu_hours, kwh or gco2e.")],
    period: Annotated[str, typer.Option("--period", help="2026, 2026-11, 2026-11-24 or 2026-11-01..2026-12-15.")],
    hard: Annotated[float, typer.Option("--hard", help="Hard limit: runs are refused or stopped beyond it.")],
    soft: Annotated[float | None, typer.Option("--soft", help="Soft limit: one alert when crossed.")] = None,
    project: ProjectOpt = "default",
    family: Annotated[str, typer.Option("--family", help="trading, language, or * for all.")] = "*",
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create or lower a budget (applies now), or request a raise (a second person must approve it)."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        budget, change = gov.set_budget(session=session, actor=who, project=project, metric=metric, period=period,
                                        hard=hard, soft=soft, family=family, reason=reason)
        data = {"budget_id": budget.id, "hard": budget.hard_limit, "soft": budget.soft_limit,
                "pending_change_id": change.id if change else None}
    if json_out:
        print_json(data)
    elif change:
        console().print(f"raise requested as change {change.id}: budget {budget.id} stays at {budget.hard_limit:g} "
                        f"until someone other than {who} runs `cvg budgets approve {change.id}`")
    else:
        console().print(f"budget {budget.id}: {metric} hard {budget.hard_limit:g}"
                        + (f", soft {budget.soft_limit:g}" if budget.soft_limit else "") + f" for {period} ({project}, {family})")


def _decide(change_id: int, actor: str | None, approve: bool, reason: str | None, json_out: bool) -> None:
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        change = gov.decide_change(session=session, change_id=change_id, actor=who, approve=approve, reason=reason)
        data = {"change_id": change.id, "status": change.status, "budget_id": change.budget_id, "decided_by": who}
    if json_out:
        print_json(data)
    else:
        console().print(f"budget change {change_id} {data['status']} by {who}")


@app.command()
def approve(change_id: int, reason: Annotated[str | None, typer.Option("--reason")] = None, actor: ActorOpt = None,
            json_out: JsonOpt = False) -> None:
    """Approve a requested raise. The requester cannot approve their own."""
    _decide(change_id, actor, True, reason, json_out)


@app.command()
def reject(change_id: int, reason: Annotated[str | None, typer.Option("--reason")] = None, actor: ActorOpt = None,
           json_out: JsonOpt = False) -> None:
    """Reject a requested raise."""
    _decide(change_id, actor, False, reason, json_out)


def _bar(fraction: float, width: int = 24) -> str:
    filled = min(width, int(round(fraction * width)))
    colour = "red" if fraction > 1 else "yellow" if fraction >= 0.8 else "green"
    return f"[{colour}]{'█' * filled}[/{colour}]{'░' * (width - filled)} {fraction:.0%}"


@app.command()
def show(project: Annotated[str | None, typer.Option("--project")] = None, json_out: JsonOpt = False) -> None:
    """Every budget with used vs limit (bars), pending raises, and budget alerts."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        rows = gov.budget_status(session=session, project=project)
        alerts = [{"id": a.id, "message": a.message, "count": a.count, "first_seen": a.first_seen.isoformat()}
                  for a in gov.list_alerts(session=session, kind="budget.soft_limit")]
    if json_out:
        print_json({"budgets": rows, "alerts": alerts})
        return
    print_table("budgets", ("id", "project", "family", "metric", "period", "used", "hard", "soft", "used / hard",
                            "pending raises"),
                ((r["id"], r["project"], r["family"], r["metric"], f"{r['period_start'][:10]} → {r['period_end'][:10]}"
                  + ("" if r["active"] else " (inactive)"), f"{r['used']:.4g}", f"{r['hard']:g}",
                  "" if r["soft"] is None else f"{r['soft']:g}", _bar(r["fraction"]),
                  ", ".join(f"#{c['id']} → {c['hard']:g} by {c['requested_by']}" for c in r["pending_changes"]))
                 for r in rows))
    for a in alerts:
        console().print(f"[yellow]alert {a['id']}[/yellow] {a['first_seen'][:19]}: {a['message']}")


@app.command()
def report(
    project: Annotated[str | None, typer.Option("--project")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, 'now' or an age (7d).")] = None,
    until: Annotated[str | None, typer.Option("--until")] = None,
    by: Annotated[str, typer.Option("--by", help="run, step, model or family.")] = "run",
    json_out: JsonOpt = False,
) -> None:
    """Compute and energy used, summed by run, step, model version or family; measured or estimated."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.timeparse import parse_time

    since_t = parse_time(since, option="--since") if since else None
    until_t = parse_time(until, option="--until") if until else None
    with session_scope(write=False) as session:
        rows = gov.usage_report(session=session, project=project, since=since_t, until=until_t, by=by)
    if json_out:
        print_json(rows)
        return
    print_table(f"usage by {by}", (by, "wall s", "CPU-h", "GPU-h", "Wh", "gCO2e", "peak MB", "kWh / 1k pred", "figures"),
                ((r[by], f"{r['wall_s']:.1f}", f"{r['cpu_hours']:.4f}", f"{r['gpu_hours']:.4f}",
                  f"{r['kwh'] * 1000:.3f}", f"{r['gco2e']:.3f}", f"{r['peak_mem_mb'] or 0:.0f}",
                  f"{r['kwh_per_1k_predictions']:.3g}" if "kwh_per_1k_predictions" in r else "",
                  "measured" if r["measured"] else "estimated") for r in rows))
