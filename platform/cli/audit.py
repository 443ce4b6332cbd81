"""``cvg audit``: verify the hash chain, checkpoint it, query it, export it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, actor_or_fail, console, print_json, print_table, short

app = typer.Typer(help="The tamper-evident audit trail: verify, checkpoint, query, export.", no_args_is_help=True)

SinceOpt = Annotated[str | None, typer.Option("--since", help="From this time (ISO 8601, 'now', or an age: 2h, 7d).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this time (same forms as --since).")]


def _times(since: str | None, until: str | None) -> tuple:  # type: ignore[type-arg]
    from convergence.platform.timeparse import parse_time

    return (parse_time(since, option="--since") if since else None,
            parse_time(until, option="--until") if until else None)


@app.command()
def verify(
    from_checkpoint: Annotated[int | None, typer.Option("--from-checkpoint", help="Start at a checkpoint id "
                                                        "instead of the genesis event.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the whole chain (streaming, constant memory); exit 5 and name the first bad seq if broken."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.errors import IntegrityError

    err = console(stderr=True)
    with session_scope(write=False) as session:
        with err.status("verifying the audit chain…") as status:
            result = gov.verify(session=session, from_checkpoint=from_checkpoint,
                                progress=lambda n: status.update(f"verified {n:,} events…"))
    if json_out:
        print_json(result.to_dict())
    elif result.ok:
        console().print(f"[green]OK[/green] audit chain intact: {result.checked:,} events from seq "
                        f"{result.start_seq} to {result.head_seq}, head {short(result.head_hash, 16)}")
    if not result.ok:
        raise IntegrityError(f"audit chain broken at seq {result.first_bad_seq}: {result.problem}: {result.detail}")


@app.command()
def checkpoint(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Record the chain head (seq, hash, count, time) and print it for anchoring outside the database."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        cp = gov.checkpoint(session=session, actor=who)
        data = {"id": cp.id, "seq": cp.seq, "head_hash": cp.head_hash, "event_count": cp.event_count,
                "created_at": cp.created_at.isoformat(), "created_by": cp.created_by}
    if json_out:
        print_json(data)
    else:
        console().print(f"checkpoint {data['id']}: seq={data['seq']} count={data['event_count']} "
                        f"time={data['created_at']}\nhead={data['head_hash']}\n"
                        "Keep this line somewhere the database's administrators cannot edit.")


@app.command()
def query(
    subject: Annotated[str | None, typer.Option(help="TYPE:ID, e.g. model_version:12.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who acted.")] = None,
    action: Annotated[str | None, typer.Option(help="Exact action, or a prefix ending in * (model.*).")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 1000,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest events first.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Audit events by subject, actor, action and time range."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    subj = gov.Subject.parse(subject) if subject else None
    since_t, until_t = _times(since, until)
    with session_scope(write=False) as session:
        events = gov.query_events(session=session, subject=subj, actor=actor, action=action, since=since_t,
                                  until=until_t, limit=limit, newest_first=newest_first)
    if json_out:
        print_json([e.to_dict() for e in events])
        return
    print_table(f"{len(events)} audit events", ("seq", "time (UTC)", "actor", "action", "subject", "payload"),
                ((e.seq, gov.format_ts(e.ts)[:23], e.actor, e.action, f"{e.subject_type}:{e.subject_id}",
                  e.payload if len(e.payload) <= 70 else e.payload[:69] + "…") for e in events))


@app.command()
def export(
    since: SinceOpt = None,
    until: UntilOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout; "
                                                "parquet needs a file).")] = None,
) -> None:
    """Export events with their chain fields; `python governance/auditor.py FILE` re-verifies it offline."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    since_t, until_t = _times(since, until)
    with session_scope(write=False) as session:
        count = gov.export_events(session=session, out=output if output else sys.stdout, fmt=fmt,
                                  since=since_t, until=until_t)
    if output:
        console(stderr=True).print(f"wrote {count:,} events to {output}")
