"""The main job behind ``cvg demo``: every governance capability, end to end, on this machine, with every
persona acting through the control-plane API with its own service-account key.

It works on whatever database the settings name (SQLite under CVG_HOME by default), which becomes a
sandbox if it is new, and leaves a trail a person can inspect afterwards with the commands printed in the
summary. Each run adds new versions; nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
import os
import time
from pathlib import Path
from typing import Any

from convergence.platform.cli._common import console, short

QUICK = {"data": {"max_ticks": 100_000},
         "model": {"teacher_hidden": 256, "teacher_layers": 2, "student_hidden": 16, "epochs": 3, "student_epochs": 60},
         "eval": {"folds": 2, "latency_repeats": 100},
         "gates": {"min_fidelity": 0.5, "max_loss_ratio": 1.2, "min_speedup": 1.5, "max_int8_gap": 0.2}}

# The language pipeline for the demo: the default model sizes with fewer steps (--quick: smaller still). Speed is the
# median of 5 generations: with 2, one scheduling hiccup during the student's could pull the measured speed-up of
# the tiny models (about 3x) under the 1.5x gate, and the story would take its "gates failed" branch.
LM_DEMO = {"train": {"teacher_steps": 120, "student_steps": 160}, "eval": {"eval_tokens": 20_000, "gen_repeats": 5}}
LM_QUICK = {"corpus": {"max_train_docs": 60}, "tokenizer": {"vocab_size": 2048},
            "teacher": {"d_model": 96, "layers": 4, "heads": 4}, "student": {"d_model": 48, "layers": 1, "heads": 2},
            "train": {"context": 64, "teacher_steps": 60, "student_steps": 80},
            "eval": {"eval_tokens": 8_000, "gen_repeats": 5},
            "gates": {"max_ppl_ratio": 1.5, "min_param_ratio": 2.0, "min_speedup": 1.5, "distill_must_help": False}}
TRADING_MODEL = "es-trading-student"


@dataclasses.dataclass
class Story:
    """What the demo's steps share: the printer, the personas' API clients, and what happened."""

    out: Any
    work: Path
    quick: bool
    people: dict[str, Any] = dataclasses.field(default_factory=dict)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    step: int = 0

    def say(self, text: str) -> None:
        self.step += 1
        self.out.print(f"[bold cyan]{self.step:>2}.[/bold cyan] {text}")

    def __getitem__(self, persona: str) -> Any:
        return self.people[persona]


def _follow(story: Story, client: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Print a server-side pipeline job's steps as they finish; its summary when it ends."""
    seen = 0
    while True:
        for item in job["progress"][seen:]:
            if item["state"] != "start":
                mark = {"done": "✓", "running": "⋯"}.get(item["state"], "✗")
                story.out.print(f"      {mark} {item['step']}" + (f"  [dim]{item['detail']}[/dim]" if item["detail"] else ""))
        seen = len(job["progress"])
        if job["status"] not in ("queued", "running"):
            if job["summary"] is None:
                from convergence.platform.errors import StepFailed

                raise StepFailed(job["error"] or "no summary", step=f"pipeline job {job['id']}")
            return job["summary"]
        time.sleep(1.0)
        job = client.pipeline_job(job_id=job["id"])


def _cast(story: Story, api_url: str, keys: dict[str, str]) -> None:
    from convergence.platform.cli._cast import PERSONAS, cast

    story.people, counts = cast(api_url, keys)
    roles = ", ".join(f"{name} ({'/'.join(r) or 'calls the model'})" for name, r in PERSONAS.items())
    made = (f"admin ada created {counts['accounts']} service accounts and asked for {counts['grants']} roles; admin "
            "sam approved each grant (nobody grants alone)" if counts["accounts"] else
            "the personas' service accounts and roles are there from an earlier run")
    story.say(f"through the API, {made}: {roles}; ada asked for a key for each persona and sam approved each key, "
              "so every persona acts with its own")


def _trading(story: Story) -> dict[str, Any]:
    from convergence.platform.errors import PolicyViolation

    month = time.strftime("%Y-%m", time.gmtime())
    budget = story["fin"].set_budget(metric="kwh", period=month, hard=1.0, soft=0.0001,
                                     reason="demo: monthly energy budget for model training")
    story.facts["budget_id"] = budget["budget_id"]
    story.say(f"fin set this month's energy budget: 1 kWh hard, 0.1 Wh soft (budget {budget['budget_id']}); "
              "every step is metered")
    story.say("quinn asked the API to run the trading pipeline (local Ray on the server): E-mini ticks → features → "
              "teacher (Ray Train) → distilled student → walk-forward → onnxruntime graphs (float, static INT8) → gates"
              + (" [quick settings]" if story.quick else ""))
    job = story["quinn"].run_pipeline(family="trading", overrides=QUICK if story.quick else {})
    summary = _follow(story, story["quinn"], job)
    if summary["status"] != "succeeded":
        raise PolicyViolation(f"trading gates failed, nothing registered: {'; '.join(summary['gates']['failed'])}")
    v, h = summary["versions"], summary["holdout"]
    story.facts["student"] = v["student"]
    story.say(f"quinn's run {summary['run_id']} registered teacher {v['teacher']} → student {v['student']} → "
              f"compiled {v.get('student_onnx', '—')} and INT8 {v.get('int8', '—')}: student fidelity "
              f"{h['student']['fidelity']:.3f}, "
              f"{summary['latency']['teacher']['batch1_s'] / summary['latency']['student']['batch1_s']:.1f}x faster "
              f"than the teacher at batch 1; evidence {summary['evidence']}")
    return summary


def _four_eyes(story: Story, summary: dict[str, Any]) -> None:
    from convergence.platform.errors import Forbidden

    v = summary["versions"]
    evidence = story["carol"].upload_artifact(source=Path(summary["evidence"]))["sha256"]
    copies = [k for k in ("int8", "student_onnx") if k in v]  # a copy whose compile gate failed is not there
    for key in ("student", *copies):
        story["carol"].validate_model(version_id=v[key], evidence_sha256=evidence,
                                      reason="walk-forward, holdout and equivalence evidence reviewed")
    story.say(f"carol (validator) uploaded the run's evidence and validated the student {v['student']} and its "
              f"onnxruntime copies ({', '.join(f'{k} {v[k]}' for k in copies)})")
    refusals = []
    try:
        story["quinn"].approve_model(version_id=v["student"], reason="my model looks good")
    except Forbidden as exc:
        refusals.append(f"by role ({exc.rule})")
    grant = story["ada"].request_grant(principal="sa:quinn", role="approver", reason="demo: try to self-approve")
    story["sam"].approve_grant(grant_id=grant["id"], reason="second admin")
    try:
        story["quinn"].approve_model(version_id=v["student"], reason="now I hold the approver role")
    except Forbidden as exc:
        refusals.append(f"by identity ({exc.rule}), even holding the approver role")
    story["ada"].revoke_role(principal="sa:quinn", role="approver", reason="demo over")
    story.say(f"quinn tried to approve her own model: refused {' and then '.join(refusals)}; both refusals are "
              "on the audit trail, and ada took the role back")
    for key in ("student", *copies):
        story["alice"].approve_model(version_id=v[key], reason="meets model risk policy", safe_output=0.0)
    for key in ("student", "int8"):
        if key in v:
            story["ops"].promote_model(version_id=v[key], reason="release")
    story.say(f"alice approved the student ({v['student']}) and its copies, fixing 0.0 (flat) as what they answer "
              "if killed; ops promoted both to production (the student and its INT8 copy)")


def _serving(story: Story, summary: dict[str, Any]) -> dt.datetime:
    import httpx

    from convergence.pipelines import holdout_features
    from convergence.platform.errors import Forbidden
    from convergence.serving import ServerProcess

    X = holdout_features(version_id=summary["versions"]["student"])
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    desk = {"authorization": story["desk"].http.headers["authorization"]}  # the desk's own key
    # no --float/--int8: serving takes whichever approved form of the student was measured fastest at batch 1
    with ServerProcess("trading", log=story.work / "serve-trading.log",
                       env={"CVG_SERVE_AUTH": "required"}) as server:
        info = httpx.get(server.url + "/info", headers={"authorization": story["ops"].http.headers["authorization"]},
                         timeout=30).json()["trading"]
        story.say(f"ops started `cvg serve trading` ({server.url}) with authentication required: BentoML serving "
                  f"{info['model']} ({info.get('role')}, {info.get('runtime')}), approved and SHA-256 checked, picked "
                  f"as {info.get('why')}; output in {server.log}")
        with httpx.Client(base_url=server.url, timeout=30, headers=desk) as client:
            answers = [client.post("/predict", json={"rows": [x.tolist()]}).json() for x in X]
            anonymous = httpx.post(server.url + "/predict", json={"rows": [X[0].tolist()]}).status_code
            try:
                story["ops"].kill(name=TRADING_MODEL, reason="ops thinks it misbehaves")
                ops_kill = "allowed?!"
            except Forbidden as exc:
                ops_kill = f"refused ({exc.rule})"
            story["risk"].kill(name=TRADING_MODEL, reason="demo: risk stops the algorithm", safe_output=True)
            time.sleep(1.0)  # replicas read the switch four times a second
            stopped = client.post("/predict", json={"rows": [X[0].tolist()]}).json()
            story["risk"].resume(name=TRADING_MODEL, reason="demo: checks done")
            time.sleep(1.0)
            back = client.post("/predict", json={"rows": [X[0].tolist()]})
        story.say(f"the trading desk (its own key) sent {len(answers):,} requests with the later ticks (each answered "
                  f"with version {answers[0]['version_id']} and a prediction id, logged in batches; without a key: "
                  f"{anonymous}); ops' kill was {ops_kill}; risk killed it → answers {stopped['predictions']} flagged "
                  f"killed={stopped.get('killed')} (the approved safe output, logged and flagged); resumed → "
                  f"{back.status_code}: {len(answers) + (back.status_code == 200):,} answers of the model and 1 "
                  "killed one in the log")
    return since


def _drift(story: Story, since: dt.datetime) -> None:
    from convergence import governance as gov

    secret = "demo-signing-secret"
    with gov.ReferenceReceiver(secret) as receiver:
        sub = story["ada"].subscribe(url=receiver.url, events=["drift.alert"], secret=secret)
        story.say(f"ada (admin) subscribed a local receiver ({receiver.url}, subscription {sub['id']}) to drift alerts")
        until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()
        report = story["monitor"].check_drift(name=TRADING_MODEL, since=since.isoformat(), until=until)
        story["ada"].unsubscribe(subscription_id=sub["id"])  # the receiver goes away with the demo
        drifted = [c for c, r in report["columns"].items() if r["drifted"]]
        story.say(f"monitor's drift check (report {report['id']}, {report['rows']:,} predictions of the model, the "
                  f"killed one left out): {len(drifted)} of {len(report['columns'])} columns drifted"
                  + (f" ({', '.join(drifted[:5])}{'…' if len(drifted) > 5 else ''})" if drifted else "")
                  + f"; {len(report['new_alerts'])} new alerts; the receiver verified and accepted "
                    f"{len(receiver.events)} signed webhook(s) ({report['webhooks']['delivered']} delivered, "
                    f"{receiver.rejected} rejected); Evidently report {report['html_report']}")


def _rollout(story: Story, summary: dict[str, Any]) -> dict[str, Any] | None:
    """A retrained student rolled out beside the first: shadow, a canary that trips, a canary that is promoted."""
    from convergence.pipelines import holdout_features
    from convergence.platform.cli._story_rollout import retrain, rollout

    new = retrain(story, QUICK)
    if new is None:
        return None
    return rollout(story, holdout_features(version_id=summary["versions"]["student"], limit=600), new)


def _language(story: Story) -> tuple[dict[str, int], dict[str, Any]]:
    """Train and distill the language model through the API, then validate, approve and promote its student."""
    story.say("nina asked the API to run the language pipeline: State of the Union addresses (npm) → byte-level BPE "
              "→ transformer teacher (Ray Train) → distilled student + label-only control (Ray tasks) → perplexity "
              "on 2010–2021 and Reuters")
    summary = _follow(story, story["nina"], story["nina"].run_pipeline(
        family="language", overrides=LM_QUICK if story.quick else LM_DEMO))
    ppl, speed, size = summary["perplexity"], summary["speed"], summary["size"]
    if summary["status"] != "succeeded":
        story.say(f"language gates failed, nothing registered: {'; '.join(summary['gates']['failed'])} "
                  f"(evidence {summary['evidence']}); the story goes on with the trading models")
        return {}, summary["usage"]
    v = summary["versions"]
    sample = summary["samples"]["student"][0]
    story.say(f"nina's run {summary['run_id']} registered teacher {v['teacher']} → student {v['student']}: "
              f"{size['teacher']['params'] / size['student']['params']:.1f}x fewer parameters, "
              f"{speed['student']['tokens_per_s_batch1'] / speed['teacher']['tokens_per_s_batch1']:.1f}x the tokens/s, "
              f"held-out perplexity {ppl['student']['sotu_holdout']:.0f} vs teacher {ppl['teacher']['sotu_holdout']:.0f} "
              f"(label-only {ppl['label_only']['sotu_holdout']:.0f}); sample: {sample['prompt']}{sample['text'][:60]!r}…")
    steps = (LM_QUICK if story.quick else LM_DEMO)["train"]
    story.say(f"what to expect of it: {steps['teacher_steps']} teacher and {steps['student_steps']} student steps "
              "on 2 CPU cores (the README's language table uses 200 and 300, hence its lower perplexities) teach a "
              "model the addresses' words and rhythm, not sense: its sample is fluent-looking word salad; it is "
              "judged by held-out perplexity against its teacher and the label-only control, not by its prose")
    evidence = story["carol"].upload_artifact(source=Path(summary["evidence"]))["sha256"]
    story["carol"].validate_model(version_id=v["student"], evidence_sha256=evidence,
                                  reason="held-out perplexity, speed and samples reviewed")
    story["alice"].approve_model(version_id=v["student"], reason="meets model risk policy")
    story["ops"].promote_model(version_id=v["student"], reason="release")
    story.say(f"carol validated, alice approved and ops promoted the language student ({v['student']}); "
              f"lineage: corpus {summary['dataset']['id']} → tokenizer {summary['tokenizer']['id']} → teacher "
              f"{v['teacher']} → student {v['student']}")
    return v, summary["usage"]


def _audit(story: Story, usage: dict[str, Any], lm_usage: dict[str, Any]) -> dict[str, Any]:
    shown = story["fin"].show_budgets()
    status = next(b for b in shown["budgets"] if b["id"] == story.facts["budget_id"])
    story.say(f"budgets: the trading run used {usage['kwh'] * 1000:.2f} Wh, the language run {lm_usage['kwh'] * 1000:.2f} "
              f"Wh ({'measured' if usage['measured'] else 'estimated'}; "
              f"{usage['cpu_hours'] + lm_usage['cpu_hours']:.3f} CPU-h, {usage['gco2e'] + lm_usage['gco2e']:.2f} gCO2e "
              f"together); this month {status['used'] * 1000:.2f} Wh of {status['hard'] * 1000:.0f} Wh "
              f"({status['fraction']:.2%}); soft-limit alerts: {len(shown['alerts'])}")
    student = story.facts["student"]
    story["risk"].classify_model(name=TRADING_MODEL, tier="high", owner="quinn", validator="carol",
                                 next_review=(dt.date.today() + dt.timedelta(days=182)).isoformat(),
                                 reason="a desk signal that sizes orders: material")
    auditor = story["auditor"]
    cp = auditor.checkpoint_audit()
    story.say(f"risk classified {TRADING_MODEL} as high materiality (owner quinn, validator carol, review in six "
              f"months); auditor signed checkpoint {cp['id']}: the Merkle tree of {cp['seq']:,} events, root "
              f"{short(cp['root_hash'], 16)}, published outside the database to {', '.join(cp['anchors'])}")
    pack = story.work / f"audit-pack-{student}.zip"
    with open(pack, "wb") as fh:
        for chunk in auditor.model_pack(version_id=student):
            fh.write(chunk)
    result = auditor.verify_audit()
    refused = auditor.query_audit(action="*_refused", limit=10_000)
    story.say(f"audit chain verified: {result['checked']:,} events, "
              f"{'intact' if result['ok'] else 'BROKEN: ' + str(result['detail'])}, every gating table matching the "
              f"ledger and the published checkpoint; every event names its principal and how it authenticated; "
              f"{len(refused)} refusal(s) recorded with the rule that refused them")
    _console_pages(story, auditor, student)
    return {"result": result, **_offline(story, auditor, cp, pack)}


def _console_pages(story: Story, auditor: Any, student: int) -> None:
    """The console (`cvg api` serves it under /ui) as the auditor sees it: every page answers, read-only."""
    paths = {"inventory": "/ui/", "the first student": f"/ui/models/{student}",
             "time travel": f"/ui/time-travel?name={TRADING_MODEL}&at=now", "ledger": "/ui/ledger",
             "budgets": "/ui/budgets"}
    answers = {name: auditor.http.get(path) for name, path in paths.items()}
    ok = [name for name, answer in answers.items() if answer.status_code == 200]
    story.facts["console"] = f"{auditor.base_url}/ui"
    story.say(f"the console at {auditor.base_url}/ui showed the auditor {len(ok)} of {len(paths)} pages "
              f"({', '.join(ok)}): approvals by principal, what was live when, the ledger with an inclusion check "
              "that runs in the browser with the public key, budgets as charts; nothing on it writes")


def _offline(story: Story, auditor: Any, cp: dict[str, Any], pack: Path) -> dict[str, Any]:
    """What an outsider checks with the public key alone: the export against the signed checkpoint, the
    inclusion of the student's approval, and the student's audit pack."""
    from convergence import governance as gov

    export = story.work / f"audit-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    with open(export, "wb") as fh:
        for chunk in auditor.export_audit(format="jsonl"):
            fh.write(chunk)
    key = auditor.ledger_pubkey()["key"]
    note, proof = story.work / "checkpoint.note", story.work / "approval-proof.json"
    note.write_text(cp["note"], encoding="utf-8")
    approval = auditor.query_audit(action="model.approved", newest_first=True, limit=1)[0]
    proof.write_text(json.dumps(auditor.prove_inclusion(seq=approval["seq"])), encoding="utf-8")
    script = Path(gov.__file__).with_name("auditor.py")
    runs = [subprocess.run([sys.executable, str(script), *args, "--key", key], capture_output=True, text=True)
            for args in (["export", str(export), "--checkpoint", str(note)], ["inclusion", str(proof)],
                         ["pack", str(pack)])]
    story.say(f"auditor exported the trail to {export}; with only the public key ({key.split('+')[0]}) the "
              f"standalone auditor says: {runs[0].stdout.strip()}; and for the approval of model version "
              f"{approval['subject_id']} (seq {approval['seq']}): {runs[1].stdout.strip()}")
    story.say(f"auditor packed student {story.facts['student']}, the one the desk traded on first, for an "
              f"examiner ({pack}: "
              "Hugging Face model card, strategy "
              f"summary, lineage, evidence, drift, usage, every ledger event with its proof, a signed manifest); "
              f"offline: {runs[2].stdout.strip()}")
    return {"export": export, "offline_ok": all(r.returncode == 0 for r in runs), "script": script, "key": key,
            "note": note, "proof": proof, "pack": pack}


def run_story(*, workdir: str | None = None, quick: bool = False) -> dict[str, Any]:
    from convergence.platform import migrate
    from convergence.platform.cli._cast import admin_keys, prepare_sandbox, revoke_demo_keys
    from convergence.platform.db import redact_url
    from convergence.platform.settings import get_settings
    from convergence.serving import ServerProcess

    # The demo's receivers (the webhook "Slack") listen on loopback, which the webhook policy refuses by default.
    os.environ.setdefault("CVG_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")
    get_settings.cache_clear()
    settings = get_settings()
    story = Story(console(), Path(workdir) if workdir else settings.home / "demo", quick)
    story.out.print("[bold]convergence demo[/bold]: the whole governed lifecycle on this machine "
                    f"(database {redact_url(settings.resolved_database_url)})")
    story.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    status = migrate.upgrade()
    installer = prepare_sandbox()
    keys, fresh = admin_keys()
    story.say(f"database {status.url} migrated to {status.head}, a sandbox; " + (
        f"the OS account ({installer.name}) installed the first admins, ada, sam and max (service accounts)" if fresh
        else "its admins ada, sam and max were installed by an earlier run; ada and sam got fresh keys (each asked "
             "for the other's, max approved: --as works here, on a sandbox only)"))
    with ServerProcess("api", log=story.work / "api.log", command=("api",)) as api:
        story.say(f"`cvg api` is up at {api.url} (authentication required; OpenAPI at {api.url}/docs)")
        _cast(story, api.url, keys)
        summary = _trading(story)
        _four_eyes(story, summary)
        since = _serving(story, summary)
        _drift(story, since)
        rolled = _rollout(story, summary)
        lm_versions, lm_usage = _language(story)
        if lm_versions:
            from convergence.platform.cli._story_language import monitor

            monitor(story, lm_versions["student"])
        audit = _audit(story, summary["usage"], lm_usage)
        revoked = revoke_demo_keys(story["sam"])
    story.say(f"sam revoked the {revoked} API keys the demo issued; the personas keep their identities and roles")
    _summary(story, summary, lm_versions, audit, time.perf_counter() - started, rolled)
    return {"ok": audit["result"]["ok"] and audit["offline_ok"], "events": audit["result"]["head_seq"],
            "export": str(audit["export"]), "summary": summary}


def _summary(story: Story, summary: dict[str, Any], lm_versions: dict[str, int], audit: dict[str, Any],
             elapsed: float, rolled: dict[str, Any] | None) -> None:
    from convergence.platform.db import redact_url
    from convergence.platform.settings import get_settings

    from convergence.platform.cli._common import invocation

    settings, v, result = get_settings(), summary["versions"], audit["result"]
    cvg, python = invocation("cvg"), invocation("python").split(" ")[-1]  # how this shell reaches them
    out = story.out
    out.rule("summary")
    out.print(f"database     {redact_url(settings.resolved_database_url)} (a sandbox: --as works here, and says so)\n"
              f"artifacts    {settings.resolved_artifact_store}\n"
              f"demo files   {story.work} (api.log, serve-trading.log, the audit export, the student's audit pack)\n"
              f"audit trail  {result['head_seq']:,} events, chain {'intact' if result['ok'] else 'BROKEN'}; signed "
              f"checkpoint in {audit['note']}\n"
              f"took         {elapsed:.1f} s\n\n"
              f"evidence     {summary['evidence']}\n"
              f"models       trading: teacher {v['teacher']}, student {v['student']} "
              f"({'retired by the canary' if rolled else 'production'}), INT8 {v.get('int8', '—')} (production), "
              f"compiled {v.get('student_onnx', '—')} (approved)"
              + (f", retrained student {rolled['promoted']} (production after shadow and canary)" if rolled else "")
              + "\n"
              + (f"             language: teacher {lm_versions['teacher']}, student {lm_versions['student']} "
                 "(production)\n" if lm_versions else "") + "\n"
              "look further (as your OS account, an auditor here"
              + ("" if cvg == "cvg" else "; `source .venv/bin/activate` lets you type plain `cvg`") + "):\n"
              f"  {cvg} models lineage {v.get('student_onnx', v['student'])}\n"
              + (f"  {cvg} models lineage {lm_versions['student']}\n" if lm_versions else "") +
              f"  {cvg} models history {TRADING_MODEL}\n"
              + (f"  {cvg} audit query --action 'deployment.*'   # shadow, canaries, the guard's rollback, promotion\n"
                 if rolled else "") +
              f"  {cvg} audit query --subject model_version:{v['student']}\n"
              f"  {cvg} audit query --action '*_refused'\n"
              f"  {cvg} principals list\n"
              f"  {cvg} pipelines runs\n"
              f"  {cvg} budgets show\n"
              f"  {cvg} drift history {TRADING_MODEL}\n"
              f"  {cvg} audit verify            # chain, Merkle tree, tables vs ledger, published checkpoints\n"
              f"  {python} {audit['script']} inclusion {audit['proof']} --key {audit['key']}\n"
              f"  {python} {audit['script']} pack {audit['pack']} --pubkey {audit['key']}   # the examiner's zip\n"
              f"  {python} {audit['script']} export {audit['export']} --checkpoint {audit['note']} --key …\n"
              f"  {cvg} api   # then, with a service account's key: CVG_API_URL=http://127.0.0.1:8000 CVG_API_KEY=… "
              f"{cvg} whoami\n"
              f"  {cvg} api   # and open http://127.0.0.1:8000/ui: the console; sign in with a key or your OIDC issuer")
