"""``cvg audit``: verify the hash chain, checkpoint it, query it, export it (the auditor role)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from convergence.platform.cli._common import (
    ActorOpt,
    JsonOpt,
    console,
    operations,
    print_json,
    print_table,
    short,
)

app = typer.Typer(help="The verifiable audit trail: verify it (against published checkpoints too), sign and publish "
                       "checkpoints, prove inclusion and consistency, query, export (the auditor or admin role).",
                  no_args_is_help=True)

SinceOpt = Annotated[str | None, typer.Option("--since", help="From this time (ISO 8601, 'now', or an age: 2h, 7d).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this time (same forms as --since).")]


KeyOpt = Annotated[str | None, typer.Option("--key", help="Verifier key to check signed checkpoints with "
                                           "(NAME+HASH+BASE64; default: this ledger's own, `cvg audit pubkey`).")]


@app.command()
def verify(
    from_checkpoint: Annotated[int | None, typer.Option("--from-checkpoint", help="Start at a checkpoint id "
                                                        "instead of the genesis event.")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="A published checkpoint (file, "
                                                   "s3://BUCKET/KEY or https URL) to hold the database against, "
                                                   "besides those found in the anchors.")] = None,
    key: KeyOpt = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute the chain and its Merkle tree (streaming), check every checkpoint in the database, every one
    published in the anchors and --checkpoint, then every gating table against the ledger; exit 5 naming the first bad seq and the damage (edited,
    inserted, deleted, reordered, truncated, rewritten)."""
    from convergence.governance import ledger
    from convergence.platform.errors import IntegrityError
    from convergence.platform.settings import get_settings

    note = ledger.fetch(checkpoint, get_settings()) if checkpoint else None  # read here, where the file is
    with console(stderr=True).status("verifying the audit chain…"):
        result = operations(actor).verify_audit(from_checkpoint=from_checkpoint, checkpoint=note, key=key)
    if json_out:
        print_json(result)
    elif result["ok"]:
        outside = [p for p in result.get("published", []) if p.get("signed")]
        against = (f"; matches {len(outside)} signed checkpoint(s) published outside the database "
                   f"(up to {max(p['size'] for p in outside):,} events)") if outside else ""
        console().print(f"[green]OK[/green] audit chain intact: {result['checked']:,} events from seq "
                        f"{result['start_seq']} to {result['head_seq']}, head {short(result['head_hash'], 16)}{against}")
    if not result["ok"]:
        where = f"audit chain broken at seq {result['first_bad_seq']}" if result["first_bad_seq"] else \
            "audit ledger not verified"
        raise IntegrityError(f"{where}: {result['problem']}: {result['detail']}")


@app.command()
def checkpoint(
    if_due: Annotated[bool, typer.Option("--if-due", help="Only when CVG_LEDGER_CHECKPOINT_EVENTS events or "
                                         "CVG_LEDGER_CHECKPOINT_S seconds passed (for a CronJob).")] = False,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign the Merkle tree of the ledger (a C2SP checkpoint, Ed25519), publish it outside the database (the
    anchor directory, S3 Object Lock when set, `audit.checkpoint` webhooks) and record it."""
    data = operations(actor).checkpoint_audit(if_due=if_due)
    if json_out:
        print_json(data)
    elif not data.get("made"):
        console().print(f"not due: the last checkpoint ({data.get('seq', 0):,} events) is recent enough")
    else:
        console().print(f"checkpoint {data['id']}: {data['seq']:,} events, root {data['root_hash']}\n"
                        f"published to: {', '.join(data['anchors'])}\n\n{data['note']}")


@app.command()
def pubkey(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Print the verifier key of the ledger's checkpoints: give it to auditors (`auditor.py … --key KEY`)."""
    data = operations(actor).ledger_pubkey()
    if json_out:
        print_json(data)
    else:
        print(data["key"])


@app.command()
def prove(
    seq: Annotated[int, typer.Argument(help="The event's seq.", min=1)],
    size: Annotated[int | None, typer.Option("--size", min=1, help="Against the signed checkpoint of this many "
                                             "events (default: the latest).")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """An inclusion proof of one event in the latest signed checkpoint; `--json > p.json` and
    `python governance/auditor.py inclusion p.json --key KEY` checks it with the public key alone."""
    data = operations(actor).prove_inclusion(seq=seq, size=size)
    if json_out:
        print_json(data)
        return
    console().print(f"seq {data['seq']} (leaf {data['leaf_index']}) in the tree of {data['tree_size']:,} events\n"
                    f"event hash {data['event_hash']}\nroot       {data['root_hash']}\n"
                    f"path ({len(data['proof'])} hashes):")
    for digest in data["proof"]:
        print(f"  {digest}")


@app.command()
def consistency(
    old: Annotated[int, typer.Argument(help="Size of the older signed checkpoint.", min=1)],
    new: Annotated[int | None, typer.Argument(help="Size of the newer one (default: the latest).", min=1)] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A consistency proof: the newer signed tree extends the older one (nothing before it changed);
    `python governance/auditor.py consistency p.json --key KEY` checks it."""
    data = operations(actor).prove_consistency(old=old, new=new)
    if json_out:
        print_json(data)
        return
    console().print(f"the tree of {data['new_size']:,} events extends the tree of {data['old_size']:,}\n"
                    f"old root {data['old_root']}\nnew root {data['new_root']}\npath ({len(data['proof'])} hashes):")
    for digest in data["proof"]:
        print(f"  {digest}")


@app.command()
def keygen(
    name: Annotated[str, typer.Argument(help="The key's name, which is the checkpoints' origin "
                                        "(e.g. ledger.example.com/prod).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File for the signing key (created 0600, never "
                                         "overwritten).")],
) -> None:
    """Make a signing key for checkpoints (or a witness's); prints the verifier key to publish. Point
    CVG_LEDGER_KEY_FILE (or CVG_LEDGER_WITNESS_KEY_FILE) at the file, or store it in a Kubernetes Secret."""
    from convergence.governance import ledger

    key = ledger.generate_key(name)
    ledger.write_key_file(output, key)
    print(ledger.Ed25519NoteSigner.from_key(key).verifier_key())


@app.command("rotate-key")
def rotate_key(
    new_key_file: Annotated[Path, typer.Argument(help="The new signing key (from `cvg audit keygen`), on the "
                                                "machine that signs (the API server with CVG_API_URL).")],
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Rotate the checkpoint signing key (admin): the old key signs a statement naming the new one, which is
    published and recorded; afterwards set CVG_LEDGER_KEY_FILE to the new file. Auditors follow it with
    `auditor.py rotation STATEMENT --key OLD`."""
    data = operations(actor).rotate_ledger_key(new_key_file=str(new_key_file.absolute()))
    if json_out:
        print_json(data)
        return
    console().print(f"rotation recorded at {data['tree_size']:,} events; published to {', '.join(data['anchors'])}\n"
                    f"new verifier key: {data['new_key']}\nnow set CVG_LEDGER_KEY_FILE={new_key_file} (or the "
                    "Secret) where checkpoints are signed")


@app.command()
def cosign(
    note: Annotated[Path, typer.Argument(help="A signed checkpoint file.")],
    key_file: Annotated[Path, typer.Option("--key-file", help="The witness's signing key file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: stdout).")] = None,
) -> None:
    """Cosign a published checkpoint with a witness key held elsewhere (compliance): verifiers can then ask
    for both signatures (`auditor.py checkpoint NOTE --key LOG --witness WITNESS`)."""
    from convergence.governance import ledger
    from convergence.platform.errors import InvalidInput

    from convergence.platform.settings import get_settings

    text = ledger.fetch(str(note), get_settings())
    try:
        signed = ledger.cosign(text, ledger.Ed25519NoteSigner.from_key(ledger.read_key_file(key_file)))
    except ValueError as exc:
        raise InvalidInput(f"{note}: {exc}") from None
    if output is None:
        sys.stdout.write(signed)
        return
    from convergence.platform.files import atomic_output

    with atomic_output(output) as fh:
        fh.write(signed.encode("utf-8"))


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

    from convergence.platform.files import atomic_output, check_output

    if fmt == "parquet" and output is None:
        raise InvalidInput("parquet is binary: pass --output FILE")
    if output is not None:
        check_output(output)  # a folder, a device, a FIFO or a link: refused before the export is made
    chunks = operations(actor).export_audit(format=fmt, since=since, until=until)
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    lines = 0
    with atomic_output(output, mode=0o600) as fh:  # never a truncated export under the real name
        for chunk in chunks:
            fh.write(chunk)
            lines += chunk.count(b"\n")
    what = f"{lines - (fmt == 'csv'):,} events" if fmt != "parquet" else f"{output.stat().st_size:,} bytes"
    console(stderr=True).print(f"wrote {what} to {output}")
