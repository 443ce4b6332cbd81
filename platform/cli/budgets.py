"""``cvg budgets``: compute and energy budgets — set, approve raises, show used vs limit, report usage."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Power and compute budgets: set limits, approve raises (four eyes; the finance role), show "
                       "what is used, report usage per run, step, model or family.", no_args_is_help=True)

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
    ops = operations(actor)
    data = ops.set_budget(metric=metric, period=period, hard=hard, soft=soft, project=project, family=family,
                          reason=reason)
    if json_out:
        print_json(data)
    elif data["pending_change_id"]:
        console().print(f"raise requested as change {data['pending_change_id']}: budget {data['budget_id']} stays at "
                        f"{data['hard']:g} until someone other than {ops.principal.name} runs "
                        f"`cvg budgets approve {data['pending_change_id']}`")
    else:
        console().print(f"budget {data['budget_id']}: {metric} hard {data['hard']:g}"
                        + (f", soft {data['soft']:g}" if data["soft"] else "") + f" for {period} ({project}, {family})")


def _decide(change_id: int, actor: str | None, approve: bool, reason: str | None, json_out: bool) -> None:
    ops = operations(actor)
    data = (ops.approve_budget_change if approve else ops.reject_budget_change)(change_id=change_id, reason=reason)
    if json_out:
        print_json(data)
    else:
        console().print(f"budget change {change_id} {data['status']} by {data['decided_by']}")


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


def _bar(fraction: float, width: int = 24) -> Any:
    from rich.text import Text  # a styled cell: table cells are otherwise shown literally

    filled = min(width, int(round(fraction * width)))
    colour = "red" if fraction > 1 else "yellow" if fraction >= 0.8 else "green"
    return Text.from_markup(f"[{colour}]{'█' * filled}[/{colour}]{'░' * (width - filled)} {fraction:.0%}")


@app.command()
def show(project: Annotated[str | None, typer.Option("--project")] = None, actor: ActorOpt = None,
         json_out: JsonOpt = False) -> None:
    """Every budget with used vs limit (bars), pending raises, and budget alerts."""
    data = operations(actor).show_budgets(project=project)
    if json_out:
        print_json(data)
        return
    print_table("budgets", ("id", "project", "family", "metric", "period", "used", "hard", "soft", "used / hard",
                            "pending raises"),
                ((r["id"], r["project"], r["family"], r["metric"], f"{r['period_start'][:10]} → {r['period_end'][:10]}"
                  + ("" if r["active"] else " (inactive)"), f"{r['used']:.4g}", f"{r['hard']:g}",
                  "" if r["soft"] is None else f"{r['soft']:g}", _bar(r["fraction"]),
                  ", ".join(f"#{c['id']} → {c['hard']:g} by {c['requested_by']}" for c in r["pending_changes"]))
                 for r in data["budgets"]))
    for a in data["alerts"]:
        console().print(f"[yellow]alert {a['id']}[/yellow] {a['first_seen'][:19]}: {a['message']}")


@app.command()
def report(
    project: Annotated[str | None, typer.Option("--project")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, 'now' or an age (7d).")] = None,
    until: Annotated[str | None, typer.Option("--until")] = None,
    by: Annotated[str, typer.Option("--by", help="run, step, model or family.")] = "run",
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute and energy used, summed by run, step, model version or family; measured or estimated."""
    rows = operations(actor).usage_report(project=project, since=since, until=until, by=by)
    if json_out:
        print_json(rows)
        return
    print_table(f"usage by {by}", (by, "wall s", "CPU-h", "GPU-h", "Wh", "gCO2e", "peak MB", "predictions",
                                   "CPU-s / 1k pred", "kWh / 1k pred", "figures"),
                ((r.get("label", r[by]), f"{r['wall_s']:.1f}", f"{r['cpu_hours']:.4f}", f"{r['gpu_hours']:.4f}",
                  f"{r['kwh'] * 1000:.3f}", f"{r['gco2e']:.3f}", f"{r['peak_mem_mb'] or 0:.0f}",
                  f"{r['predictions']:,}" if r.get("predictions") else "—",
                  f"{r['cpu_s_per_1k_predictions']:.3g}" if "cpu_s_per_1k_predictions" in r else "—",
                  f"{r['kwh_per_1k_predictions']:.3g}" if "kwh_per_1k_predictions" in r else "—",
                  "measured" if r["measured"] else "estimated") for r in rows))
