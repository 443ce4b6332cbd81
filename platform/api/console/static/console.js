// The console's only script: local times on hover, and the inclusion check of a ledger event, done here in the
// browser with WebCrypto (SHA-256, Ed25519) against the signed checkpoint and the public key in the page's
// field, so the reader need not take the server's word that an event is in the ledger.
"use strict";

const enc = new TextEncoder();

function localTimes() {
  for (const t of document.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(d.getTime())) t.title = "your local time: " + d.toLocaleString();
  }
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function unhex(s) {
  if (typeof s !== "string" || !/^([0-9a-f]{2})*$/.test(s)) throw new Error("a proof hash is not hex");
  return Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16));
}

function unbase64(s, what) {
  try {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  } catch (e) {
    throw new Error(`${what} is not base64`);
  }
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

const leafHash = (data) => sha256(concat(Uint8Array.of(0), data));
const nodeHash = (left, right) => sha256(concat(Uint8Array.of(1), left, right));

// C2SP signed-note verifier key: NAME+hex(keyhash)+base64(0x01 || 32-byte Ed25519 key)
async function parseKey(vkey) {
  const parts = vkey.trim().split("+");
  if (parts.length < 3 || !/^[0-9a-f]{8}$/.test(parts[1])) throw new Error("the public key looks like NAME+8 hex digits+base64");
  const name = parts[0], hash = unhex(parts[1]), raw = unbase64(parts.slice(2).join("+"), "the public key");
  if (!name || raw.length !== 33 || raw[0] !== 1) throw new Error("not an Ed25519 verifier key");
  const computed = (await sha256(concat(enc.encode(name), Uint8Array.of(10, 1), raw.slice(1)))).slice(0, 4);
  if (!equal(computed, hash)) throw new Error("the public key's hash does not match its key");
  return { name, hash, key: raw.slice(1) };
}

function splitNote(note) {
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0) throw new Error("the checkpoint is not a signed note");
  const text = note.slice(0, cut + 1), lines = note.slice(cut + 2);
  if (!lines.endsWith("\n")) throw new Error("the checkpoint's signatures do not end with a newline");
  return { text, sigs: lines.slice(0, -1).split("\n").map((line) => {
    const fields = line.split(" ");
    if (fields.length !== 3 || fields[0] !== "\u2014") throw new Error("a signature line is malformed");
    const raw = unbase64(fields[2], "a signature");
    if (raw.length !== 68) throw new Error("a signature is not an Ed25519 note signature");
    return { name: fields[1], hash: raw.slice(0, 4), sig: raw.slice(4) };
  }) };
}

async function verifyNote(note, key) {
  const { text, sigs } = splitNote(note);
  const mine = sigs.find((s) => s.name === key.name && equal(s.hash, key.hash));
  if (!mine) throw new Error(`the checkpoint is not signed by ${key.name}`);
  let pub;
  try {
    pub = await crypto.subtle.importKey("raw", key.key, { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    throw new Error("this browser cannot check Ed25519 signatures (WebCrypto); use governance/auditor.py");
  }
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, pub, mine.sig, enc.encode(text)))) {
    throw new Error("the checkpoint's signature does not verify with this key");
  }
  return text;
}

function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || lines[lines.length - 1] !== "") throw new Error("the checkpoint's text is malformed");
  if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("the checkpoint's size is not a number");
  const root = unbase64(lines[2], "the checkpoint's root");
  if (root.length !== 32) throw new Error("the checkpoint's root is not 32 bytes");
  return { origin: lines[0], size: Number(lines[1]), root };
}

// The bytes the ledger hashes: [seq,ts,actor,action,subject_type,subject_id,payload,prev_hash] as compact JSON,
// the payload exactly as stored (already canonical); JSON.stringify escapes strings as Python's json does.
function eventBytes(seq, e) {
  const q = JSON.stringify;
  for (const f of ["ts", "actor", "action", "subject_type", "subject_id", "payload", "prev_hash"]) {
    if (typeof e[f] !== "string") throw new Error(`the event has no ${f}`);
  }
  JSON.parse(e.payload);
  return enc.encode(`[${seq},${q(e.ts)},${q(e.actor)},${q(e.action)},${q(e.subject_type)},${q(e.subject_id)},` +
                    `${e.payload},${q(e.prev_hash)}]`);
}

// RFC 9162 section 2.1.3.2
async function verifyInclusion(index, size, leaf, proof, root) {
  if (!(index >= 0 && index < size) || proof.length > 64 || proof.some((p) => p.length !== 32)) return false;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

async function checkEvent(seq, out) {
  out.textContent = "checking…";
  delete out.dataset.result;
  try {
    if (!Number.isInteger(seq) || seq < 1) throw new Error("give an event's seq, a positive whole number");
    if (!window.crypto || !crypto.subtle) throw new Error("this page is not in a secure context (https or loopback): WebCrypto is off");
    const key = await parseKey(document.getElementById("pubkey").value);
    const answer = await fetch(`/ui/ledger/proof/${seq}`, { credentials: "same-origin", headers: { accept: "application/json" } });
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.message || `the server answered ${answer.status}`);
    const cp = parseCheckpoint(await verifyNote(data.checkpoint, key));
    if (cp.origin !== key.name) throw new Error(`the checkpoint is of log ${cp.origin}, not ${key.name}`);
    if (data.tree_size !== cp.size) throw new Error("the proof is for another tree than the checkpoint signs");
    if (!Array.isArray(data.proof)) throw new Error("the server sent no proof");
    const leaf = await leafHash(await sha256(eventBytes(seq, data.event)));
    if (!(await verifyInclusion(seq - 1, cp.size, leaf, data.proof.map(unhex), cp.root))) {
      throw new Error(`event ${seq} as stored now is not the event the signed tree of ${cp.size} events holds: it was changed after it was written`);
    }
    const e = data.event;
    out.textContent = `verified: #${seq} ${e.action} by ${e.actor} at ${e.ts} is in the tree of ${cp.size} events signed by ${key.name}`;
    out.dataset.result = "verified";
  } catch (err) {
    out.textContent = `failed: ${err.message}`;
    out.dataset.result = "failed";
  }
}

function wire() {
  localTimes();
  for (const button of document.querySelectorAll("button.check")) {
    const out = document.querySelector(`output.verdict[data-seq="${button.dataset.seq}"]`);
    button.addEventListener("click", () => checkEvent(Number(button.dataset.seq), out));
  }
  const single = document.getElementById("check-button");
  if (single) {
    const input = document.getElementById("check-seq"), out = document.getElementById("check-result");
    single.addEventListener("click", () => checkEvent(Number(input.value.trim()), out));
    input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") checkEvent(Number(input.value.trim()), out); });
  }
}

document.addEventListener("DOMContentLoaded", wire);
