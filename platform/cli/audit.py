"""``cvg audit``: verify the hash chain, checkpoint it, query it, export it (the auditor role)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table, short

app = typer.Typer(help="The tamper-evident audit trail: verify, checkpoint, query, export (the auditor or admin "
                       "role).", no_args_is_help=True)

SinceOpt = Annotated[str | None, typer.Option("--since", help="From this time (ISO 8601, 'now', or an age: 2h, 7d).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this time (same forms as --since).")]


@app.command()
def verify(
    from_checkpoint: Annotated[int | None, typer.Option("--from-checkpoint", help="Start at a checkpoint id "
                                                        "instead of the genesis event.")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the whole chain (streaming, constant memory); exit 5 and name the first bad seq if broken."""
    from convergence.platform.errors import IntegrityError

    with console(stderr=True).status("verifying the audit chain…"):
        result = operations(actor).verify_audit(from_checkpoint=from_checkpoint)
    if json_out:
        print_json(result)
    elif result["ok"]:
        console().print(f"[green]OK[/green] audit chain intact: {result['checked']:,} events from seq "
                        f"{result['start_seq']} to {result['head_seq']}, head {short(result['head_hash'], 16)}")
    if not result["ok"]:
        raise IntegrityError(f"audit chain broken at seq {result['first_bad_seq']}: {result['problem']}: "
                             f"{result['detail']}")


@app.command()
def checkpoint(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Record the chain head (seq, hash, count, time) and print it for anchoring outside the database."""
    data = operations(actor).checkpoint_audit()
    if json_out:
        print_json(data)
    else:
        console().print(f"checkpoint {data['id']}: seq={data['seq']} count={data['event_count']} "
                        f"time={data['created_at']}\nhead={data['head_hash']}\n"
                        "Keep this line somewhere the database's administrators cannot edit.")


@app.command()
def query(
    subject: Annotated[str | None, typer.Option(help="TYPE:ID, e.g. model_version:12.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who acted (a principal's display name).")] = None,
    action: Annotated[str | None, typer.Option(help="Exact action, or a prefix ending in * (model.*).")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 1000,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest events first.")] = False,
    as_name: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Audit events by subject, actor, action and time range."""
    events = operations(as_name).query_audit(subject=subject, actor=actor, action=action, since=since, until=until,
                                             limit=limit, newest_first=newest_first)
    if json_out:
        print_json(events)
        return
    import json

    def payload(e: dict) -> str:  # type: ignore[type-arg]
        text = json.dumps({k: v for k, v in e["payload"].items() if k != "principal"}, ensure_ascii=False,
                          separators=(",", ":"), sort_keys=True)
        return text if len(text) <= 70 else text[:69] + "…"

    print_table(f"{len(events)} audit events", ("seq", "time (UTC)", "actor", "auth", "action", "subject", "payload"),
                ((e["seq"], e["ts"][:23], e["actor"], (e["payload"].get("principal") or {}).get("auth", ""),
                  e["action"], f"{e['subject_type']}:{e['subject_id']}", payload(e)) for e in events))


@app.command()
def export(
    since: SinceOpt = None,
    until: UntilOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout; "
                                                "parquet needs a file).")] = None,
    actor: ActorOpt = None,
) -> None:
    """Export events with their chain fields; `python governance/auditor.py FILE` re-verifies it offline."""
    from convergence.platform.errors import InvalidInput

    if fmt == "parquet" and output is None:
        raise InvalidInput("parquet is binary: pass --output FILE")
    if output is not None and output.is_dir():
        raise InvalidInput(f"--output {output} is a directory; name a file")
    chunks = operations(actor).export_audit(format=fmt, since=since, until=until)
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    tmp = output.with_name(output.name + ".partial")  # never leave a truncated export under the real name
    lines = 0
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            lines += chunk.count(b"\n")
    tmp.replace(output)
    what = f"{lines - (fmt == 'csv'):,} events" if fmt != "parquet" else f"{output.stat().st_size:,} bytes"
    console(stderr=True).print(f"wrote {what} to {output}")
