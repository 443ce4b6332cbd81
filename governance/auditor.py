#!/usr/bin/env python3
"""Verify a convergence ledger offline: the Python standard library plus ``cryptography`` (for Ed25519).

    python auditor.py EXPORT                                   # the hash chain of an export (jsonl or csv)
    python auditor.py checkpoint NOTE --key VKEY               # a signed checkpoint
    python auditor.py export EXPORT --checkpoint NOTE --key VKEY   # an export against a checkpoint
    python auditor.py inclusion PROOF.json --key VKEY          # `cvg audit prove SEQ --json` output
    python auditor.py consistency PROOF.json --key VKEY        # `cvg audit consistency OLD --json` output
    python auditor.py rotation STATEMENT --key OLD_VKEY        # a key rotation, signed by the old key
    python auditor.py pack PACK.zip --pubkey VKEY              # `cvg models pack` output, every file and proof

Exit 0 = verified, 1 = the evidence does not hold, 2 = unreadable input. This file imports nothing from
convergence: an auditor can read all of it in a few minutes, and convergence itself verifies with it.

The formats:
- event hash: sha256(json.dumps([seq, ts, actor, action, subject_type, subject_id, payload, prev_hash],
  sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()), ts as 2026-11-24T08:15:00.123456Z,
  the first event's prev_hash 64 zeros; each prev_hash is the previous event's hash, seq rises by one.
- Merkle tree (RFC 6962 / 9162): leaf i (0-based) is the event with seq i+1, its leaf input the 32 raw bytes
  of the event hash: leaf = sha256(0x00 || bytes.fromhex(hash)), node = sha256(0x01 || left || right).
- checkpoint (C2SP tlog-checkpoint): the text "ORIGIN\\nSIZE\\nbase64(root)\\n", signed as a C2SP signed
  note: text, a blank line, then "\\u2014 NAME base64(keyhash[4] || ed25519 signature[64])\\n" per signer;
  keyhash = sha256(NAME || "\\n" || 0x01 || public key)[:4]; a verifier key is NAME+hex(keyhash)+base64(0x01 || public key).
"""

import base64
import csv
import hashlib
import json
import sys
import zipfile

GENESIS = "0" * 64
_EM_DASH = "\u2014 "


class Invalid(ValueError):
    """The evidence does not hold (as opposed to: it could not be read)."""


# --- the hash chain ----------------------------------------------------------------------------

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


def verify(events, on_event=None):
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
        if on_event is not None:
            on_event(ev)
        prev_hash, expected, checked = ev["hash"], seq + 1, checked + 1
    return checked, None


# --- RFC 6962 Merkle tree ----------------------------------------------------------------------

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The Merkle root of a growing list of leaves in O(log n) memory: perfect subtrees, largest first."""

    def __init__(self, size=0, stack=()):
        self.size, self.stack = size, list(stack)  # stack of (height, hash), the subtrees making up ``size``

    def append(self, leaf, on_node=None, min_height=1):
        """Add a leaf; ``on_node(height, index, hash)`` hears of every subtree it completes of ``min_height`` or more."""
        height, digest, position = 0, leaf, self.size
        while self.stack and self.stack[-1][0] == height:
            digest = node_hash(self.stack.pop()[1], digest)
            height += 1
            if on_node is not None and height >= min_height:
                on_node(height, position >> height, digest)
        self.stack.append((height, digest))
        self.size += 1

    def root(self):
        if not self.stack:
            return hashlib.sha256(b"").digest()
        digest = self.stack[-1][1]
        for _height, left in reversed(self.stack[:-1]):
            digest = node_hash(left, digest)
        return digest


def _past_right_edge(fn, sn):
    """Both RFC 9162 verifiers: after a left-hand sibling at an even ``fn``, climb past its zero bits."""
    while not fn & 1 and fn != 0:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 section 2.1.3.2: does ``proof`` place ``leaf`` at ``index`` in the tree of ``size`` with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _past_right_edge(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(size1, size2, proof, root1, root2):
    """RFC 9162 section 2.1.4.2: is the tree of ``size2`` (``root2``) an append-only extension of ``size1``?"""
    if size1 == size2:
        return not proof and root1 == root2
    if not 0 < size1 < size2 or not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # an exact power of two: the old root is itself a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _past_right_edge(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == root1 and sr == root2 and sn == 0


# --- signed notes and checkpoints ----------------------------------------------------------------

def key_hash(name, public_key):
    return hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]


def parse_verifier_key(vkey):
    """``NAME+hex(keyhash)+base64(0x01 || key)`` → (name, keyhash, 32-byte Ed25519 public key)."""
    try:
        name, hash_hex, b64 = vkey.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
        hash_bytes = bytes.fromhex(hash_hex)
    except ValueError:
        raise ValueError("a verifier key looks like NAME+8 hex digits+base64") from None
    if not name or len(raw) != 33 or raw[0] != 1 or len(hash_bytes) != 4:
        raise ValueError("not an Ed25519 verifier key (NAME+keyhash+base64(0x01 || 32 bytes))")
    if key_hash(name, raw[1:]) != hash_bytes:
        raise ValueError(f"verifier key {name}: its key hash does not match its key")
    return name, hash_bytes, raw[1:]


def split_note(note):
    """A signed note → (text, [(name, keyhash, signature)])."""
    if "\n\n" not in note:
        raise Invalid("not a signed note: no blank line before the signatures")
    cut = note.rindex("\n\n")
    text, lines = note[:cut + 1], note[cut + 2:]
    if not lines.endswith("\n"):
        raise Invalid("a signed note ends with a newline")
    sigs = []
    for line in lines[:-1].split("\n"):
        if not line.startswith(_EM_DASH) or line.count(" ") != 2:
            raise Invalid(f"not a signature line: {line[:60]!r}")
        name, b64 = line[2:].split(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise Invalid(f"signature of {name} is not base64") from None
        if len(raw) != 68:
            raise Invalid(f"signature of {name} is not an Ed25519 note signature")
        sigs.append((name, raw[:4], raw[4:]))
    return text, sigs


def verify_note(note, vkey):
    """Return the note's text if ``vkey`` signed it, else raise ``Invalid`` saying why."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    name, khash, public = parse_verifier_key(vkey)
    text, sigs = split_note(note)
    mine = [sig for n, h, sig in sigs if n == name and h == khash]
    if not mine:
        signers = ", ".join(f"{n}+{h.hex()}" for n, h, _ in sigs) or "nobody"
        raise Invalid(f"not signed by {name}+{khash.hex()} (signed by {signers})")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(mine[0], text.encode())
    except InvalidSignature:
        raise Invalid(f"the signature of {name} does not verify: the note was altered or signed by another key") from None
    return text


def parse_checkpoint(text):
    """A checkpoint's text → (origin, size, root bytes)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise Invalid("a checkpoint has an origin, a size and a root hash, one per line")
    origin, size, root = lines[0], lines[1], lines[2]
    if not (size.isascii() and size.isdigit()) or (size != "0" and size.startswith("0")):
        raise Invalid(f"checkpoint size {size[:30]!r} is not a decimal number")
    try:
        digest = base64.b64decode(root, validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise Invalid("checkpoint root hash is not base64 of 32 bytes")
    return origin, int(size), digest


def verify_checkpoint(note, vkey, witness=None):
    """A published checkpoint, checked with the log's key (and a witness's, when given) → (origin, size, root)."""
    text = verify_note(note, vkey)
    if witness:
        verify_note(note, witness)
    origin, size, root = parse_checkpoint(text)
    name = parse_verifier_key(vkey)[0]
    if origin != name:
        raise Invalid(f"checkpoint origin {origin!r} is not the key's name {name!r}")
    return origin, size, root


def verify_rotation(note, old_vkey):
    """A key rotation statement signed by the old key → the new verifier key it hands over to."""
    lines = verify_note(note, old_vkey).split("\n")
    if len(lines) != 5 or lines[0] != "convergence ledger key rotation" or lines[1] != old_vkey.strip():
        raise Invalid("not a key rotation statement from this key")
    parse_verifier_key(lines[2])
    return lines[2]


# --- commands ----------------------------------------------------------------------------------

def export_against(path, note, vkey):
    """The export's chain, and the Merkle root of its first SIZE events against the signed checkpoint."""
    _origin, size, root = verify_checkpoint(note, vkey)
    tree = CompactRange()

    def add(ev):
        if tree.size < size:
            tree.append(leaf_hash(bytes.fromhex(ev["hash"])))

    def from_genesis(events):
        for ev in events:
            if tree.size == 0 and ev["seq"] != 1:
                raise Invalid(f"the export starts at seq {ev['seq']}: checking it against a checkpoint needs an "
                              "export from seq 1 (without --since)")
            yield ev

    checked, problem = verify(from_genesis(read(path)), on_event=add)
    if problem:
        raise Invalid(f"chain broken after {checked} good events: {problem}")
    if tree.size < size:
        raise Invalid(f"the export holds {tree.size} events; the checkpoint covers {size} (truncated)")
    if tree.root() != root:
        raise Invalid(f"the first {size} events do not have the signed root: the ledger was rewritten")
    return f"{checked} events, chain intact; the first {size} match the signed checkpoint"


def inclusion(proof, vkey):
    _origin, size, root = verify_checkpoint(proof["checkpoint"], vkey)
    if proof["tree_size"] != size:
        raise Invalid(f"proof is for a tree of {proof['tree_size']} events, the checkpoint signs {size}")
    event = proof.get("event")
    digest = event_hash(event) if event else proof["event_hash"]
    if event and digest != event["hash"]:
        raise Invalid("the event's content does not match its hash")
    leaf = leaf_hash(bytes.fromhex(digest))
    path = [bytes.fromhex(h) for h in proof["proof"]]
    if not verify_inclusion(proof["seq"] - 1, size, leaf, path, root):
        raise Invalid(f"seq {proof['seq']} is not in the signed tree of {size} events")
    return f"seq {proof['seq']} is included in the signed tree of {size} events"


def consistency(proof, vkey):
    _o1, size1, root1 = verify_checkpoint(proof["old_checkpoint"], vkey)
    _o2, size2, root2 = verify_checkpoint(proof["new_checkpoint"], vkey)
    path = [bytes.fromhex(h) for h in proof["proof"]]
    if not verify_consistency(size1, size2, path, root1, root2):
        raise Invalid(f"the tree of {size2} events does not extend the tree of {size1}: history was rewritten")
    return f"the tree of {size2} events extends the signed tree of {size1} (append-only)"


MAX_PACK_BYTES = 4 << 30


def _contiguous(path, zf):
    """Every byte of the zip belongs to a listed entry, in order, then the directory: nothing hidden between
    or after the entries for a reader that walks local headers instead of the directory."""
    import struct

    with open(path, "rb") as fh:
        data = fh.read()
    at = 0
    for info in sorted(zf.infolist(), key=lambda i: i.header_offset):
        if info.header_offset != at or data[at:at + 4] != b"PK\x03\x04":
            raise Invalid("the pack holds bytes outside its listed files (a hidden entry)")
        name_len, extra_len = struct.unpack("<HH", data[at + 26:at + 30])
        at += 30 + name_len + extra_len + info.compress_size + (16 if info.flag_bits & 0x08 else 0)
    if at != zf.start_dir or zf.comment:
        raise Invalid("the pack holds bytes outside its listed files (a hidden entry or a comment)")


def pack(path, vkey):
    """An audit pack (`cvg models pack`): the manifest signed by ``vkey``, every file's SHA-256, nothing added,
    the checkpoint signed, and every listed event intact and included in the signed tree."""
    with zipfile.ZipFile(path) as zf:
        listed = zf.namelist()
        names = set(listed)
        if sum(i.file_size for i in zf.infolist()) > MAX_PACK_BYTES:
            raise Invalid(f"the pack unpacks to more than {MAX_PACK_BYTES >> 30} GiB: not one of ours")
        if len(names) != len(listed):  # two members of one name: a reader could be shown either
            raise Invalid("the pack holds two files of the same name")
        _contiguous(path, zf)
        if not {"manifest.json", "manifest.sig", "ledger/checkpoint.note"} <= names:
            raise Invalid("not an audit pack: manifest.json, manifest.sig or ledger/checkpoint.note is missing")
        body = zf.read("manifest.json")
        lines = verify_note(zf.read("manifest.sig").decode("utf-8"), vkey).split("\n")
        if lines[:2] != ["convergence audit pack", hashlib.sha256(body).hexdigest()] or len(lines) != 3:
            raise Invalid("manifest.sig does not sign this manifest.json: the manifest was changed")
        manifest = json.loads(body)
        files = manifest["files"]
        extra = sorted(names - set(files) - {"manifest.json", "manifest.sig"})
        if extra:
            raise Invalid(f"files the manifest does not list: {', '.join(extra[:5])}")
        for name, digest in sorted(files.items()):
            if name not in names:
                raise Invalid(f"{name} is missing from the pack")
            if hashlib.sha256(zf.read(name)).hexdigest() != digest:
                raise Invalid(f"{name} was changed after the pack was signed")
        note = zf.read("ledger/checkpoint.note").decode("utf-8")
        _origin, size, _root = verify_checkpoint(note, vkey)
        if size != manifest["checkpoint_size"]:
            raise Invalid(f"the checkpoint signs {size} events; the manifest says {manifest['checkpoint_size']}")
        events = [json.loads(line) for line in zf.read("ledger/events.jsonl").decode("utf-8").split("\n") if line]
        if [e["seq"] for e in events] != manifest["events"]:
            raise Invalid("ledger/events.jsonl does not hold the events the manifest lists")
        for ev in events:
            if event_hash(ev) != ev["hash"]:
                raise Invalid(f"event {ev['seq']}: its content does not match its hash")
            proof = json.loads(zf.read(f"ledger/proofs/{ev['seq']:09d}.json"))
            if proof["checkpoint"] != note or proof["event"] is None or proof["event"]["hash"] != ev["hash"]:
                raise Invalid(f"event {ev['seq']}: its proof is for another checkpoint or another event")
            inclusion(proof, vkey)
    model = manifest["model"]
    return (f"audit pack of {model['name']} version {model['version']} (#{model['id']}): manifest signed, "
            f"{len(files)} files intact, {len(events)} events included in the signed tree of {size} events")


def _option(args, flag):
    if flag in args:
        at = args.index(flag)
        if at + 1 >= len(args):
            raise ValueError(f"{flag} needs a value")
        value = args[at + 1]
        del args[at:at + 2]
        return value
    return None


def _text(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


def run(argv):
    args = list(argv[1:])
    key, witness, cp = _option(args, "--key"), _option(args, "--witness"), _option(args, "--checkpoint")
    key = key or _option(args, "--pubkey")
    if len(args) == 1 and not key:
        checked, problem = verify(read(args[0]))
        if problem:
            raise Invalid(f"BROKEN after {checked} good events: {problem}")
        return f"{checked} events, chain intact"
    if len(args) != 2 or not key:
        raise ValueError("usage: see the top of auditor.py")
    command, path = args
    if command == "checkpoint":
        origin, size, root = verify_checkpoint(_text(path), key, witness)
        return f"checkpoint of {origin}: {size} events, root {root.hex()}" + (", witnessed" if witness else "")
    if command == "rotation":
        return f"the key {key.split('+')[0]} handed over to {verify_rotation(_text(path), key)}"
    if command == "export" and cp:
        return export_against(path, _text(cp), key)
    if command == "pack":
        return pack(path, key)
    if command in ("inclusion", "consistency"):
        with open(path, encoding="utf-8") as fh:
            proof = json.load(fh)
        return (inclusion if command == "inclusion" else consistency)(proof, key)
    raise ValueError("usage: see the top of auditor.py")


def main(argv):
    try:
        message = run(argv)
    except Invalid as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - a malformed input (bad zip, odd compression, bad JSON) is one line
        print(f"cannot read the input: {exc}"[:500], file=sys.stderr)
        return 2
    print(f"OK: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
