"""``cvg retention``: how long each class of record is kept, and deleting what has expired, on the record."""

from __future__ import annotations

from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Retention per record class (prediction log, drift reports, usage, artifacts of retired or "
                       "rejected versions): show, set (the admin role, never below the legal minimum), apply. "
                       "Audit events are never deleted.", no_args_is_help=True)

CLASSES = ("prediction_log", "drift_reports", "usage", "artifacts")


@app.command()
def show(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Each class: days kept, the legal minimum (CVG_RETENTION_MINIMUM_DAYS), set or default."""
    rows = operations(actor).retention_policies()
    if json_out:
        print_json(rows)
        return
    print_table("retention", ("class", "days", "minimum", "policy", "what"),
                ((r["class"], f"{r['days']:,}", f"{r['minimum_days']:,}",
                  f"set {r['set_at'][:10]}: {r['reason']}" if r["set"] else "default", r["what"]) for r in rows))


@app.command("set")
def set_(record_class: Annotated[str, typer.Argument(metavar="CLASS", help="One of " + ", ".join(CLASSES) + ".")],
         days: Annotated[int, typer.Argument(help="Days to keep it (at least its legal minimum).")],
         reason: Annotated[str, typer.Option("--reason", help="Why (an examiner will read it).")],
         actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Keep CLASS for DAYS; refused below the class's legal minimum; audited with the old value."""
    data = operations(actor).set_retention(record_class=record_class, days=days, reason=reason)
    print_json(data) if json_out else console().print(
        f"{data['class']}: kept {data['days']:,} days (was {data['before']:,}; legal minimum {data['minimum_days']:,})")


@app.command()
def apply(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what has expired.")] = False,
          actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Delete every record older than its class's policy, in one audited transaction (retention.applied)."""
    data = operations(actor).apply_retention(dry_run=dry_run)
    if json_out:
        print_json(data)
        return
    verb = "would delete" if data["dry_run"] else "deleted"
    print_table(f"retention {'(dry run) ' if data['dry_run'] else ''}as of {data['now'][:19]}",
                ("class", "days", "older than", verb),
                ((name, f"{c['days']:,}", c["cutoff"][:19], f"{c['expired']:,}") for name, c in data["classes"].items()))
    console().print(f"{data['blobs']} stored file(s) no longer referenced {'would go' if data['dry_run'] else 'removed'}"
                    "; audit events are never a retention class")
