"""The main job behind ``cvg demo``: every governance capability, end to end, on this machine.

It works on whatever database the settings name (SQLite under CVG_HOME by default) and leaves a
trail a person can inspect afterwards with the commands printed in the summary. Each run adds new
versions; nothing is deleted.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from convergence.platform.cli._common import console, short


QUICK = {"data": {"max_ticks": 100_000},
         "model": {"teacher_hidden": 256, "teacher_layers": 2, "student_hidden": 16, "epochs": 3, "student_epochs": 60},
         "eval": {"folds": 2, "latency_repeats": 100},
         "gates": {"min_fidelity": 0.5, "max_loss_ratio": 1.2, "min_speedup": 1.5, "max_int8_gap": 0.2}}


# The language pipeline for the demo: the default model sizes with fewer steps (--quick: smaller still).
LM_DEMO = {"train": {"teacher_steps": 120, "student_steps": 160}, "eval": {"eval_tokens": 20_000, "gen_repeats": 2}}
LM_QUICK = {"corpus": {"max_train_docs": 60}, "tokenizer": {"vocab_size": 2048},
            "teacher": {"d_model": 96, "layers": 4, "heads": 4}, "student": {"d_model": 48, "layers": 1, "heads": 2},
            "train": {"context": 64, "teacher_steps": 60, "student_steps": 80},
            "eval": {"eval_tokens": 8_000, "gen_repeats": 2},
            "gates": {"max_ppl_ratio": 1.5, "min_param_ratio": 2.0, "min_speedup": 1.5, "distill_must_help": False}}


def _language(say: Any, out: Any, quick: bool) -> tuple[dict[str, int], dict[str, Any]]:
    """Train and distill the language model, then validate, approve and promote its student (four eyes)."""
    from convergence import governance as gov
    from convergence.pipelines import parse_config, run_language
    from convergence.platform.db import session_scope

    cfg = parse_config(LM_QUICK if quick else LM_DEMO, "language")
    say("language pipeline on local Ray: State of the Union addresses (npm) → byte-level BPE → transformer teacher "
        "(Ray Train) → distilled student + label-only control (Ray tasks) → perplexity on 2010–2021 and Reuters")
    summary = run_language(cfg, actor="nina", progress=_indented(out))
    ppl, speed, size = summary["perplexity"], summary["speed"], summary["size"]
    if summary["status"] != "succeeded":
        say(f"language gates failed, nothing registered: {'; '.join(summary['gates']['failed'])} "
            f"(evidence {summary['evidence']}); the story goes on with the trading models")
        return {}, summary["usage"]
    v = summary["versions"]
    sample = summary["samples"]["student"][0]
    say(f"nina's run {summary['run_id']} registered teacher {v['teacher']} → student {v['student']}: "
        f"{size['teacher']['params'] / size['student']['params']:.1f}x fewer parameters, "
        f"{speed['student']['tokens_per_s_batch1'] / speed['teacher']['tokens_per_s_batch1']:.1f}x the tokens/s, "
        f"held-out perplexity {ppl['student']['sotu_holdout']:.0f} vs teacher {ppl['teacher']['sotu_holdout']:.0f} "
        f"(label-only {ppl['label_only']['sotu_holdout']:.0f}); sample: {sample['prompt']}{sample['text'][:60]!r}…")
    with session_scope() as s:
        gov.validate(session=s, version_id=v["student"], actor="carol", evidence=Path(summary["evidence"]),
                     reason="held-out perplexity, speed and samples reviewed")
        gov.approve(session=s, version_id=v["student"], actor="alice", reason="meets model risk policy")
        gov.promote(session=s, version_id=v["student"], actor="ops", reason="release")
    say(f"carol validated, alice approved and ops promoted the language student ({v['student']}); "
        f"lineage: corpus {summary['dataset']['id']} → tokenizer {summary['tokenizer']['id']} → teacher "
        f"{v['teacher']} → student {v['student']}")
    return v, summary["usage"]


def _indented(out: Any) -> Any:
    def show(step: str, state: str, detail: str) -> None:
        if state != "start":
            out.print(f"      {'✓' if state == 'done' else '✗'} {step}" + (f"  [dim]{detail}[/dim]" if detail else ""))

    return show


def run_story(*, workdir: str | None = None, quick: bool = False) -> dict[str, Any]:
    from convergence import governance as gov
    from convergence.platform import migrate
    from convergence.platform.db import redact_url, session_scope
    from convergence.platform.errors import PolicyViolation
    from convergence.platform.settings import get_settings

    out = console()
    settings = get_settings()
    work = Path(workdir) if workdir else settings.home / "demo"
    out.print("[bold]convergence demo[/bold]: the whole governed lifecycle on this machine "
              f"(database {redact_url(settings.resolved_database_url)})")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        out.print(f"[bold cyan]{step:>2}.[/bold cyan] {text}")

    status = migrate.upgrade()
    say(f"database {status.url} migrated to {status.head}")

    from convergence.pipelines import parse_config, run_trading

    month = time.strftime("%Y-%m", time.gmtime())
    with session_scope() as s:
        gov.ensure_project(session=s, name="default", actor="fin")
        budget, _ = gov.set_budget(session=s, actor="fin", project="default", metric="kwh", period=month, hard=1.0,
                                   soft=0.0001, reason="demo: monthly energy budget for model training")
    say(f"fin set this month's energy budget: 1 kWh hard, 0.1 Wh soft (budget {budget.id}); every step is metered")

    # The trading pipeline on the real E-mini ticks; --quick shrinks the models and the data, not the steps.
    cfg = parse_config(QUICK if quick else {})
    say("trading pipeline on local Ray: E-mini ticks → features → teacher (Ray Train) → distilled student → "
        "INT8 → walk-forward → gates" + (" [quick settings]" if quick else ""))
    summary = run_trading(cfg, actor="quinn", progress=_indented(out))
    if summary["status"] != "succeeded":
        say(f"gates failed, nothing registered: {'; '.join(summary['gates']['failed'])}")
        return {"ok": False, "summary": summary}
    v = summary["versions"]
    h = summary["holdout"]
    say(f"quinn's run {summary['run_id']} registered teacher {v['teacher']} → student {v['student']} → INT8 "
        f"{v['int8']}: student fidelity {h['student']['fidelity']:.3f}, "
        f"{summary['latency']['teacher']['batch1_s'] / summary['latency']['student']['batch1_s']:.1f}x faster "
        f"than the teacher at batch 1; evidence {summary['evidence']}")
    evidence = Path(summary["evidence"])

    for key in ("student", "int8"):
        with session_scope() as s:
            gov.validate(session=s, version_id=v[key], actor="carol", evidence=evidence,
                         reason="walk-forward and holdout evidence reviewed")
    say(f"carol (model validation) validated versions {v['student']} and {v['int8']} with the run's evidence")

    try:
        with session_scope() as s:
            gov.approve(session=s, version_id=v["student"], actor="quinn", reason="my model looks good")
    except PolicyViolation as exc:
        say(f"quinn tried to approve her own model: refused ([italic]{exc.message}[/italic]) and the refusal was audited")

    with session_scope() as s:
        for key in ("student", "int8"):
            gov.approve(session=s, version_id=v[key], actor="alice", reason="meets model risk policy")
            gov.promote(session=s, version_id=v[key], actor="ops", reason="release")
    say(f"alice approved and ops promoted the student ({v['student']}) and its INT8 copy ({v['int8']}) to production")

    # Serving: the promoted student behind BentoML; the later (holdout) ticks are its production traffic.
    import httpx

    from convergence.pipelines import holdout_features
    from convergence.serving import ServerProcess

    secret = "demo-signing-secret"
    X = holdout_features(version_id=v["student"])
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    # --float: the float student is faster than its INT8 copy at this size (measured; see the README)
    with ServerProcess("trading", "--float", log=work / "serve-trading.log") as server:
        say(f"ops started `cvg serve trading` ({server.url}): BentoML serving the production student, "
            f"approved and SHA-256 checked; output in {server.log}")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.post("/predict", json={"rows": [x.tolist()]}).json() for x in X]
            with session_scope() as s:
                gov.kill(session=s, name=f"{cfg.name}-student", reason="demo: risk stops the algorithm", actor="risk")
            time.sleep(1.0)  # replicas read the switch four times a second
            stopped = client.post("/predict", json={"rows": [X[0].tolist()]})
            with session_scope() as s:
                gov.resume(session=s, name=f"{cfg.name}-student", actor="risk", reason="demo: checks done")
            time.sleep(1.0)
            back = client.post("/predict", json={"rows": [X[0].tolist()]}).status_code
        say(f"the student answered {len(answers):,} requests with the later ticks (each with its version "
            f"{answers[0]['version_id']} and a prediction id, logged in batches); risk killed it → "
            f"{stopped.status_code} {stopped.json().get('message', '')!r}; resumed → {back}")
    with gov.ReferenceReceiver(secret) as receiver:
        with session_scope() as s:
            sub = gov.subscribe(session=s, actor="ops", url=receiver.url, events=["drift.alert"], secret=secret)
        say(f"ops subscribed a local receiver ({receiver.url}, subscription {sub.id}) to drift alerts")
        with session_scope() as s:
            report, alerts = gov.check_drift(session=s, name=f"{cfg.name}-student", since=since,
                                             until=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1),
                                             actor="monitor")
            drifted = [c for c, r in report.columns.items() if r["drifted"]]
            html = gov.report_html_path(report)
        delivered = gov.deliver_until_idle(deadline_s=15)
        with session_scope() as s:  # the receiver goes away with the demo; so does its subscription
            gov.unsubscribe(session=s, subscription_id=sub.id, actor="ops")
        say(f"drift check (report {report.id}): {len(drifted)} of {len(report.columns)} columns drifted"
            + (f" ({', '.join(drifted[:5])}{'…' if len(drifted) > 5 else ''})" if drifted else "")
            + f"; {len(alerts)} new alerts; the receiver verified and accepted {len(receiver.events)} signed "
              f"webhook(s) ({delivered['delivered']} delivered, {receiver.rejected} rejected); Evidently report {html}")

    lm_versions, lm_usage = _language(say, out, quick)

    with session_scope(write=False) as s:
        status = next(b for b in gov.budget_status(session=s, project="default") if b["id"] == budget.id)
        alerts = gov.list_alerts(session=s, kind="budget.soft_limit")
    usage = summary["usage"]
    say(f"budgets: the trading run used {usage['kwh'] * 1000:.2f} Wh, the language run {lm_usage['kwh'] * 1000:.2f} Wh "
        f"({'measured' if usage['measured'] else 'estimated'}; {usage['cpu_hours'] + lm_usage['cpu_hours']:.3f} CPU-h, "
        f"{usage['gco2e'] + lm_usage['gco2e']:.2f} gCO2e together); this month {status['used'] * 1000:.2f} Wh of "
        f"{status['hard'] * 1000:.0f} Wh ({status['fraction']:.2%}); soft-limit alerts: {len(alerts)}")

    with session_scope() as s:
        cp = gov.checkpoint(session=s, actor="auditor")
    say(f"checkpoint {cp.id}: seq {cp.seq}, head {short(cp.head_hash, 16)} (anchor this outside the database)")

    with session_scope(write=False) as s:
        result = gov.verify(session=s)
    say(f"audit chain verified: {result.checked:,} events, {'intact' if result.ok else 'BROKEN: ' + str(result.detail)}")

    export = work / f"audit-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
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
              f"evidence     {evidence}\n"
              f"models       trading: teacher {v['teacher']}, student {v['student']} (production), INT8 {v['int8']} "
              "(production)\n"
              + (f"             language: teacher {lm_versions['teacher']}, student {lm_versions['student']} "
                 "(production)\n" if lm_versions else "") + "\n"
              "look further:\n"
              f"  cvg models lineage {v['int8']}\n"
              + (f"  cvg models lineage {lm_versions['student']}\n" if lm_versions else "") +
              f"  cvg models history {cfg.name}-student\n"
              f"  cvg audit query --subject model_version:{v['student']}\n"
              "  cvg pipelines runs\n"
              "  cvg budgets show\n"
              f"  cvg drift history {cfg.name}-student\n"
              "  cvg webhooks list\n"
              "  cvg budgets report --by step\n"
              "  cvg audit verify\n"
              f"  python {auditor} {export}")
    return {"ok": result.ok and offline.returncode == 0, "events": result.head_seq, "export": str(export),
            "summary": summary}
