#!/usr/bin/env python3
"""Re-verify a convergence audit export offline, with nothing but the Python standard library.

    python auditor.py audit.jsonl            # or audit.csv; exit 0 = intact, 1 = broken, 2 = unreadable

The hash of each event is
    sha256( json.dumps([seq, ts, actor, action, subject_type, subject_id, payload, prev_hash],
                       sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") )
where ``payload`` is the JSON object, ``ts`` the UTC time as 2026-11-24T08:15:00.123456Z, and the first
event's ``prev_hash`` is 64 zeros. Each event's ``prev_hash`` must equal the previous event's ``hash``
and ``seq`` must rise by one. An export that starts later than seq 1 is checked from its first line.
This file deliberately imports nothing from convergence: an auditor can read all of it in a minute.
"""

import csv
import hashlib
import json
import sys

GENESIS = "0" * 64


def event_hash(ev):
    payload = ev["payload"]
    if isinstance(payload, str):  # CSV exports carry the payload as its JSON text
        payload = json.loads(payload)
    fields = [ev["seq"], ev["ts"], ev["actor"], ev["action"], ev["subject_type"], ev["subject_id"],
              payload, ev["prev_hash"]]
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read(path):
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                row["seq"] = int(row["seq"])
                yield row
    else:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        raise ValueError(f"line {number} is not JSON: {exc}") from None


def verify(events):
    """Return (checked, None) if intact, else (checked, 'seq N: what is wrong')."""
    prev_hash, expected, checked = None, None, 0
    for ev in events:
        seq = ev["seq"]
        if expected is None:
            expected = seq
            prev_hash = GENESIS if seq == 1 else ev["prev_hash"]
        if seq != expected:
            return checked, f"seq {expected}: missing (the next event is seq {seq})"
        if ev["prev_hash"] != prev_hash:
            return checked, f"seq {seq}: prev_hash does not match the hash of seq {seq - 1}"
        if event_hash(ev) != ev["hash"]:
            return checked, f"seq {seq}: hash does not match the event's content (edited)"
        prev_hash, expected, checked = ev["hash"], seq + 1, checked + 1
    return checked, None


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        checked, problem = verify(read(argv[1]))
    except (OSError, KeyError, ValueError) as exc:
        print(f"cannot read {argv[1]}: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"BROKEN after {checked} good events: {problem}")
        return 1
    print(f"OK: {checked} events, chain intact")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
