"""Audit export with the chain fields, streamed: JSON Lines, CSV or Parquet.

An export can be re-verified offline by ``auditor.py`` (JSON Lines and CSV) without convergence
installed: each line carries seq, ts, actor, action, subject, payload, prev_hash and hash.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._ledger import format_ts
from convergence.governance._models import AuditEvent
from convergence.platform.errors import InvalidInput
from convergence.platform.files import atomic_output

FORMATS = ("jsonl", "csv", "parquet")
FIELDS = ("seq", "ts", "actor", "action", "subject_type", "subject_id", "payload", "prev_hash", "hash")


def _rows(session: Session, since: dt.datetime | None, until: dt.datetime | None,
          batch: int = 10_000) -> Iterator[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=batch)
    if since:
        q = q.where(AuditEvent.ts >= since)
    if until:
        q = q.where(AuditEvent.ts < until)
    yield from session.execute(q).scalars()


def export_events(*, session: Session, out: Path | IO[str], fmt: str = "jsonl",
                  since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Write matching events to ``out`` (a path, or a text stream for jsonl/csv); returns the count."""
    if fmt not in FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if since and until and since > until:
        raise InvalidInput("--since is after --until")
    rows = _rows(session, since, until)
    if fmt == "parquet":
        if not isinstance(out, Path):
            raise InvalidInput("parquet is binary: pass --output FILE")
        return _parquet(rows, out)
    if isinstance(out, Path):  # a fresh exclusive file renamed into place: no half export, no symlink followed
        with atomic_output(out, mode=0o600) as raw:  # audit data: the owner's to share
            fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            count = _text(rows, fh, fmt)
            fh.detach()  # flushed; the file itself is atomic_output's to close and rename
        return count
    return _text(rows, out, fmt)


def _record(ev: AuditEvent) -> dict[str, Any]:
    return {"seq": ev.seq, "ts": format_ts(ev.ts), "actor": ev.actor, "action": ev.action,
            "subject_type": ev.subject_type, "subject_id": ev.subject_id, "payload": ev.payload,
            "prev_hash": ev.prev_hash, "hash": ev.hash}


def _text(rows: Iterator[AuditEvent], fh: IO[str], fmt: str) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for ev in rows:
            writer.writerow(_record(ev))  # payload as its canonical JSON text
            count += 1
        return count
    for ev in rows:
        rec = _record(ev)
        # The payload text is already canonical JSON: splice it in rather than re-encode it.
        payload = rec.pop("payload")
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":"))
        fh.write(line[:-1] + ',"payload":' + payload + "}\n")
        count += 1
    return count


def _parquet(rows: Iterator[AuditEvent], path: Path, batch: int = 10_000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("seq", pa.int64()), ("ts", pa.string()), ("actor", pa.string()), ("action", pa.string()),
                        ("subject_type", pa.string()), ("subject_id", pa.string()), ("payload", pa.string()),
                        ("prev_hash", pa.string()), ("hash", pa.string())])
    count, buf = 0, []
    with atomic_output(path, mode=0o600) as fh, pq.ParquetWriter(fh, schema) as writer:
        for ev in rows:
            buf.append(_record(ev))
            if len(buf) >= batch:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                count, buf = count + len(buf), []
        if buf or count == 0:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            count += len(buf)
    return count


def read_text_export(data: str) -> list[dict[str, Any]]:
    """Parse a jsonl export back into records (used by tests and the API)."""
    return [json.loads(line) for line in io.StringIO(data) if line.strip()]
