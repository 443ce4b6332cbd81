"""The main job behind ``cvg demo``: every governance capability, end to end, on this machine.

It works on whatever database the settings name (SQLite under CVG_HOME by default) and leaves a
trail a person can inspect afterwards with the commands printed in the summary. Each run adds new
versions; nothing is deleted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from convergence.platform.cli._common import console, short


def run_story(*, workdir: str | None = None) -> dict[str, Any]:
    from convergence import governance as gov
    from convergence.platform import migrate
    from convergence.platform.db import redact_url, session_scope
    from convergence.platform.errors import PolicyViolation
    from convergence.platform.settings import get_settings

    out = console()
    settings = get_settings()
    work = Path(workdir) if workdir else settings.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        out.print(f"[bold cyan]{step:>2}.[/bold cyan] {text}")

    status = migrate.upgrade()
    say(f"database {status.url} migrated to {status.head}")

    # No training pipeline has landed yet: the demo registers a model "trained elsewhere". Its weights
    # are synthetic placeholders, labelled as such in the artifact itself.
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dataset = work / "features-sample.csv"
    dataset.write_text("ret_1,ret_5,vol_20,label\n0.0010,0.0030,0.012,1\n-0.0020,0.0010,0.015,0\n")
    artifacts = []
    for i, (w1, w2) in enumerate([(0.31, -0.12), (0.29, -0.10)], 1):
        path = work / f"model-{stamp}-{i}.json"
        path.write_text(json.dumps({"kind": "linear", "synthetic_placeholder": True, "weights": [w1, w2],
                                    "trained": stamp, "note": "placeholder until the trading pipeline lands"}))
        artifacts.append(path)
    evidence = work / f"validation-{stamp}.md"
    evidence.write_text("# Validation report\n\nOut-of-sample checks reviewed; limits documented.\n")

    with session_scope() as s:
        v1 = gov.register_model(session=s, actor="bob", name="demo-trading", artifact=artifacts[0], family="trading",
                                role="student", dataset=str(dataset), metrics={"ic": 0.041, "hit_rate": 0.53})
    say(f"bob registered demo-trading v{v1.version} (id {v1.id}), artifact {short(v1.artifact_sha256)}, "
        f"dataset {dataset.name} hashed into the registry")

    with session_scope() as s:
        gov.validate(session=s, version_id=v1.id, actor="carol", evidence=evidence, reason="independent review")
    say(f"carol validated version {v1.id} with evidence {evidence.name}")

    try:
        with session_scope() as s:
            gov.approve(session=s, version_id=v1.id, actor="bob", reason="looks good to me")
    except PolicyViolation as exc:
        say(f"bob tried to approve his own model: refused ([italic]{exc.message}[/italic]) and the refusal was audited")

    with session_scope() as s:
        gov.approve(session=s, version_id=v1.id, actor="alice", reason="meets model risk policy")
        gov.promote(session=s, version_id=v1.id, actor="ops", reason="first release")
    say(f"alice approved version {v1.id}; ops promoted it to production")

    with session_scope() as s:
        v2 = gov.register_model(session=s, actor="bob", name="demo-trading", artifact=artifacts[1], family="trading",
                                role="student", dataset=str(dataset), metrics={"ic": 0.044, "hit_rate": 0.54})
    with session_scope() as s:
        gov.validate(session=s, version_id=v2.id, actor="carol", evidence=evidence, reason="re-validation")
        gov.approve(session=s, version_id=v2.id, actor="alice", reason="improves IC")
        gov.promote(session=s, version_id=v2.id, actor="ops", reason="weekly release")
    say(f"version {v2.id} went through the same four eyes and replaced version {v1.id} in production")

    with session_scope() as s:
        restored = gov.rollback(session=s, name="demo-trading", actor="ops", reason="demo rollback drill")
    say(f"ops rolled back: version {restored.id} is in production again, version {v2.id} retired")

    with session_scope() as s:
        cp = gov.checkpoint(session=s, actor="auditor")
    say(f"checkpoint {cp.id}: seq {cp.seq}, head {short(cp.head_hash, 16)} (anchor this outside the database)")

    with session_scope(write=False) as s:
        result = gov.verify(session=s)
    say(f"audit chain verified: {result.checked:,} events, {'intact' if result.ok else 'BROKEN: ' + str(result.detail)}")

    export = work / f"audit-{stamp}.jsonl"
    with session_scope(write=False) as s:
        count = gov.export_events(session=s, out=export, fmt="jsonl")
    auditor = Path(gov.__file__).with_name("auditor.py")
    offline = subprocess.run([sys.executable, str(auditor), str(export)], capture_output=True, text=True)
    say(f"exported {count:,} events to {export}; the standalone auditor says: {offline.stdout.strip()}")

    elapsed = time.perf_counter() - started
    out.rule("summary")
    out.print(f"database     {redact_url(settings.resolved_database_url)}\n"
              f"artifacts    {settings.resolved_artifact_store}\n"
              f"demo files   {work}\n"
              f"audit trail  {result.head_seq:,} events, chain {'intact' if result.ok else 'BROKEN'}\n"
              f"took         {elapsed:.1f} s\n\n"
              "look further:\n"
              f"  cvg models lineage {restored.id}\n"
              "  cvg models history demo-trading\n"
              "  cvg audit query --subject model_version:%d\n"
              "  cvg audit verify\n"
              f"  python {auditor} {export}" % v1.id)
    return {"ok": result.ok and offline.returncode == 0, "events": result.head_seq, "export": str(export)}
