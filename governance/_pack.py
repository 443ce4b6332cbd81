"""The audit pack: one signed, self-verifying zip per model version, for examiners and model-risk validators.

It holds the model card (Hugging Face format, generated from the registry), the lineage with its
authenticated principals, the run's evidence, drift reports with Evidently's HTML, compute and energy, the
model-risk classification, and every ledger event about the version and its ancestors with an inclusion
proof against a signed checkpoint. ``manifest.json`` lists every file's SHA-256 and ``manifest.sig`` is a
signed note over the manifest's SHA-256 with the ledger's key: ``auditor.py pack FILE --key VKEY`` checks
all of it offline.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._ledger import Event, Subject
from convergence.governance._models import AuditEvent, ControlSetting, DriftReport, PrincipalRow
from convergence.governance._principal import Principal
from convergence.platform.db import utcnow

FORMAT = "convergence.pack.v1"
SIGNED_TEXT = "convergence audit pack"


def build_pack(*, principal: Principal, version_id: int, out: Path) -> dict[str, Any]:
    """Write the pack of ``version_id`` to ``out`` (a zip); returns its manifest. Owns its transactions: when
    the newest events about the version are not covered by a checkpoint signed with the current key, one is
    signed and committed first (as the system, audited), so a pack that fails later leaves nothing published
    that the ledger does not hold."""
    from convergence.governance._queries import lineage
    from convergence.platform.db import session_scope

    with session_scope() as session:
        require(session=session, principal=principal, permission="model.pack",
                subject=Subject("model_version", str(version_id)))
        chain = _chain(lineage(session=session, version_id=version_id))
        _covering_checkpoint(session, _newest_event(session, chain))
    with session_scope(write=False) as session:
        return _build(session, principal, version_id, out)


def _build(session: Session, principal: Principal, version_id: int, out: Path) -> dict[str, Any]:
    from convergence.governance import _card, _cardpage
    from convergence.governance._checkpoints import latest
    from convergence.governance._queries import lineage

    tree = lineage(session=session, version_id=version_id)
    chain = _chain(tree)
    _name_principals(session, chain)
    checkpoint = latest(session=session, signed=True)
    events = _events(session, chain, checkpoint.seq)
    files: dict[str, bytes] = {}
    evidence = _evidence(chain)
    if evidence is not None:
        files["evidence/evidence.json"] = _json(evidence)
    reports = _drift(session, chain, files)
    risk = classification(session=session, name=chain[0]["name"])
    files["lineage.json"] = _json(_without_locations({**tree, "copies": _copies(session, version_id)}))
    files["model-risk.json"] = _json(risk)
    usage = {str(v["id"]): v.get("usage") for v in chain}
    files["usage.json"] = _json({"runs": usage, "serving": _serving_usage(session, chain[0]["id"])})
    files["drift/reports.json"] = _json(reports)
    files["ledger/checkpoint.note"] = checkpoint.note.encode()
    files["ledger/events.jsonl"] = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode()
    for e in events:
        files[f"ledger/proofs/{e['seq']:09d}.json"] = _json(_proof(session, e["seq"], checkpoint.seq))
    files["README.md"] = _card.model_card(chain=chain, evidence=evidence, risk=risk, reports=reports,
                                          events=events).encode()
    files[_card.SUMMARY_FILE[chain[0]["family"]]] = _card.summary(chain=chain, evidence=evidence).encode()
    files["card.html"] = _cardpage.card_html(chain=chain, evidence=evidence, reports=reports, risk=risk,
                                             usage=usage).encode()
    manifest = {"format": FORMAT, "model": {k: chain[0][k] for k in ("id", "name", "version", "family", "role",
                                                                      "stage", "artifact_sha256")},
                "ancestors": [v["id"] for v in chain[1:]], "created_at": utcnow().isoformat(),
                "created_by": principal.name, "checkpoint_size": checkpoint.seq,
                "events": [e["seq"] for e in events],
                "files": {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())}}
    _write(out, files, manifest)
    return manifest


TIERS = ("high", "medium", "low")


def classify(*, session: Session, principal: Principal, name: str, tier: str, owner: str, validator: str,
             next_review: str, reason: str) -> dict[str, Any]:
    """Set the model-risk fields of model ``name``: materiality tier, owner and validator (principals, resolved
    like ``#12`` or ``sa:NAME``), next review date. The risk or admin role; audited as ``model.classified``."""
    import datetime as dt

    from convergence.governance._identity import resolve_ref
    from convergence.governance._ledger import append, serialize_writes
    from convergence.governance._models import ModelVersion
    from convergence.platform.errors import InvalidInput, NotFound

    require(session=session, principal=principal, permission="model.classify", subject=Subject("model", name))
    if tier not in TIERS:
        raise InvalidInput(f"materiality tier must be one of {', '.join(TIERS)}")
    try:
        review = dt.date.fromisoformat(next_review)
    except ValueError:
        raise InvalidInput(f"next review {next_review[:40]!r} is not a date (YYYY-MM-DD)") from None
    if review <= utcnow().date():
        raise InvalidInput(f"next review {review} is not in the future")
    if not reason or not reason.strip():
        raise InvalidInput("a classification needs a reason (--reason)")
    if session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    people = {role: resolve_ref(session=session, ref=ref) for role, ref in (("owner", owner), ("validator", validator))}
    serialize_writes(session=session)
    value = {"tier": tier, "owner": people["owner"].name, "owner_id": people["owner"].id,
             "validator": people["validator"].name, "validator_id": people["validator"].id,
             "next_review": review.isoformat(), "reason": reason.strip(), "classified_by": principal.name}
    row = session.get(ControlSetting, f"model_risk.{name}") or ControlSetting(key=f"model_risk.{name}")
    before = dict(row.value) if row.value else None
    row.value, row.updated_at, row.updated_by_id = value, utcnow(), principal.id
    session.add(row)
    append(session=session, principal=principal, action="model.classified", subject=Subject("model", name),
           payload={**value, "before": before})
    return value


def classification(*, session: Session, name: str) -> dict[str, Any]:
    """The model-risk fields of ``name`` (materiality tier, owner, validator, next review), or unset ones."""
    row = session.get(ControlSetting, f"model_risk.{name}")
    return dict(row.value) if row else {"tier": None, "owner": None, "validator": None, "next_review": None}


def _chain(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The version, then its parent, its parent's parent … (each without the nested parent)."""
    out, node = [], tree
    while node is not None:
        out.append({k: v for k, v in node.items() if k != "parent"})
        node = node.get("parent")
    return out


def _name_principals(session: Session, chain: list[dict[str, Any]]) -> None:
    """Each approval says which authenticated principal made it (issuer, subject, kind), not only a name."""
    from convergence.governance._models import Approval

    for version in chain:
        rows = session.execute(select(Approval).where(Approval.model_version_id == version["id"])
                               .order_by(Approval.created_at, Approval.id)).scalars().all()
        for shown, row in zip(version.get("approvals", []), rows, strict=False):
            who = session.get(PrincipalRow, row.principal_id) if row.principal_id else None
            shown["principal"] = ({"id": who.id, "name": who.name, "kind": who.kind, "issuer": who.issuer,
                                   "subject": who.subject} if who else None)


def _covering_checkpoint(session: Session, newest: int) -> Any:
    """The latest signed checkpoint if it covers event ``newest`` and the current key signed it (the manifest
    is signed with that key: one key verifies the whole pack), else a new one made by the system."""
    from convergence.governance import _checkpoints
    from convergence.governance._identity import system_principal

    latest = _checkpoints.latest(session=session, signed=True)
    if latest is not None and latest.seq >= newest and latest.key == _checkpoints.signer().verifier_key():
        return latest
    return _checkpoints._make(session, system_principal(session=session, name="audit-pack"))


def _subjects(session: Session, chain: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Whose events the pack holds: each version and its name, run and dataset, and the version's drift
    reports and the alerts raised about it."""
    from convergence.governance._models import Alert

    first = chain[0]["id"]
    out = {("drift_report", str(i)) for i in session.execute(
        select(DriftReport.id).where(DriftReport.model_version_id == first)).scalars()}
    out |= {("alert", str(i)) for i in session.execute(select(Alert.id).where(
        Alert.subject_type == "model_version", Alert.subject_id == str(first))).scalars()}
    for v in chain:
        out |= {("model_version", str(v["id"])), ("model", v["name"])}
        if v.get("run"):
            out.add(("pipeline_run", str(v["run"]["id"])))
        if v.get("dataset"):
            out.add(("dataset", str(v["dataset"]["id"])))
    return out


def _where(session: Session, chain: list[dict[str, Any]]) -> Any:
    from sqlalchemy import and_, or_

    return or_(*(and_(AuditEvent.subject_type == t, AuditEvent.subject_id == i)
                 for t, i in sorted(_subjects(session, chain))))


def _newest_event(session: Session, chain: list[dict[str, Any]]) -> int:
    from sqlalchemy import func

    return int(session.execute(select(func.max(AuditEvent.seq)).where(_where(session, chain))).scalar() or 0)


def _events(session: Session, chain: list[dict[str, Any]], up_to: int) -> list[dict[str, Any]]:
    """Every event about the version, its ancestors, their names, runs and datasets, up to the checkpoint."""
    rows = session.execute(select(AuditEvent).where(_where(session, chain), AuditEvent.seq <= up_to)
                           .order_by(AuditEvent.seq)).scalars()
    return [Event.of(r).to_dict() for r in rows]


def _proof(session: Session, seq: int, size: int) -> dict[str, Any]:
    from convergence.governance._checkpoints import prove

    return prove(session=session, seq=seq, size=size)


MAX_EVIDENCE_BYTES = 64 << 20


def _evidence(chain: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's evidence (walk-forward, holdout, gates; or perplexities and samples) from the nearest version
    that recorded it: looked up in the artifact store by its SHA-256 only (never a path a registrant wrote),
    SHA-checked, at most 64 MiB; evidence that is missing or not a JSON object is left out."""
    from convergence.governance._artifacts import get_artifact_store
    from convergence.platform.errors import ConvergenceError

    store = get_artifact_store()
    for v in chain:
        sha = (v.get("params") or {}).get("evidence_sha256")
        if not isinstance(sha, str):
            continue
        try:
            stored = store.locate(sha)
            if stored.size > MAX_EVIDENCE_BYTES:
                return None
            data = json.loads(store.fetch(stored.uri, sha256=sha).read_bytes())
        except (ConvergenceError, ValueError):
            return None
        return data if isinstance(data, dict) else None
    return None


def _drift(session: Session, chain: list[dict[str, Any]], files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Drift reports of the version (with Evidently's HTML in the pack), oldest first."""
    from convergence.governance._drift import report_html_blob, report_to_dict

    rows = session.execute(select(DriftReport).where(DriftReport.model_version_id == chain[0]["id"])
                           .order_by(DriftReport.created_at, DriftReport.id)).scalars().all()
    out = []
    for r in rows:
        shown = {**_without_locations(report_to_dict(r)), "evidently_html": None}
        blob = report_html_blob(r)  # the stored blob itself, checked against its name (its SHA-256)
        if blob is not None:
            shown["evidently_html"] = f"drift/report-{r.id}.html"
            files[shown["evidently_html"]] = blob.read_bytes()
        out.append(shown)
    return out


def _copies(session: Session, version_id: int) -> list[dict[str, Any]]:
    """The versions made from this one (its compiled and quantized copies): lineage goes both ways."""
    from convergence.governance._models import ModelVersion

    rows = session.execute(select(ModelVersion).where(ModelVersion.parent_id == version_id)
                           .order_by(ModelVersion.id)).scalars()
    return [{"id": m.id, "name": m.name, "version": m.version, "role": m.role, "stage": m.stage,
             "artifact_sha256": m.artifact_sha256} for m in rows]


def _serving_usage(session: Session, version_id: int) -> dict[str, Any]:
    """What serving the version and its compiled or quantized copies cost: predictions, CPU-seconds and energy,
    and both per 1,000 predictions, per version."""
    from sqlalchemy import func, or_

    from convergence.governance._models import ModelVersion, Usage

    version_ids = list(session.execute(select(ModelVersion.id).where(
        or_(ModelVersion.id == version_id, ModelVersion.parent_id == version_id))).scalars())

    rows = session.execute(select(Usage.model_version_id, func.sum(Usage.predictions), func.sum(Usage.cpu_s),
                                  func.sum(Usage.kwh))
                           .where(Usage.model_version_id.in_(version_ids), Usage.run_id.is_(None))
                           .group_by(Usage.model_version_id)).all()
    out = {}
    for version_id, predictions, cpu_s, kwh in rows:
        n = int(predictions or 0)
        out[str(version_id)] = {"predictions": n, "cpu_s": float(cpu_s or 0), "kwh": float(kwh or 0),
                                "cpu_s_per_1k": float(cpu_s or 0) * 1000 / n if n else None,
                                "wh_per_1k": float(kwh or 0) * 1e6 / n if n else None}
    return out


_LOCATIONS = {"artifact_uri", "uri", "evidence_uri", "evidently_html_uri", "evidently_json_uri", "html_report",
              "evidently_json"}


def _without_locations(data: Any) -> Any:
    """The same data without where things lie on the server (file:// paths): hashes name them in a pack."""
    if isinstance(data, dict):
        return {k: _without_locations(v) for k, v in data.items() if k not in _LOCATIONS}
    if isinstance(data, list):
        return [_without_locations(v) for v in data]
    return data


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def _write(out: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """The zip: every file, the manifest, and the manifest's signed note (the ledger's key)."""
    from convergence.governance._checkpoints import signer
    from convergence.governance._notes import sign_note

    body = _json(manifest)
    note = sign_note(f"{SIGNED_TEXT}\n{hashlib.sha256(body).hexdigest()}\n", signer())
    fixed = (2026, 1, 1, 0, 0, 0)  # the same content makes the same bytes
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in sorted({**files, "manifest.json": body, "manifest.sig": note.encode()}.items()):
            zf.writestr(zipfile.ZipInfo(path, fixed), data, compress_type=zipfile.ZIP_DEFLATED)
