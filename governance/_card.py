"""The audit pack's words: a Hugging Face model card and a plain-language summary, generated from the registry.

The card's YAML front matter follows the Hub's model card metadata (license, tags, datasets, ``model-index``
with results), so the tools people already use read it; the body says what the model is for, what it must
not be used for, how it was trained and evaluated, and who validated and approved it.
"""

from __future__ import annotations

import json
from typing import Any

SUMMARY_FILE = {"trading": "strategy.md", "language": "language.md"}
TASKS = {"trading": ("time-series-forecasting", "Short-horizon return forecasting"),
         "language": ("text-generation", "Text generation")}


def _yaml(value: Any, indent: int = 0) -> str:
    """A small YAML writer for plain data: JSON scalars are valid YAML, so strings and numbers are quoted by JSON."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                body = _yaml(item, indent + 2)
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return f"{pad}{_scalar(value)}"


def _scalar(v: Any) -> str:
    """JSON in ASCII: a valid YAML scalar whatever the text holds (U+FFFE, line separators, quotes)."""
    return json.dumps(v, ensure_ascii=True, default=str)


_MARKDOWN = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>#|!"})


def _t(value: Any, most: int = 300) -> str:
    """Free text (names, reasons) as one inert line of markdown: whitespace of any kind folded, markdown and
    HTML characters escaped, cut to ``most`` characters. Nothing typed into the registry becomes structure."""
    text = " ".join(str(value if value is not None else "—").split())[:most]
    return "".join(c for c in text if c.isprintable()).translate(_MARKDOWN)


def _metrics(chain: list[dict[str, Any]], evidence: dict[str, Any] | None) -> list[dict[str, Any]]:
    v = chain[0]
    if evidence is None:
        return []
    if v["family"] == "trading":
        key = {"teacher": "teacher", "quantized": "int8"}.get(v["role"], "student")
        holdout = evidence.get("holdout") if isinstance(evidence.get("holdout"), dict) else {}
        hold = holdout.get(key) if isinstance(holdout.get(key), dict) else {}
        names = {"ic": "Information coefficient (holdout)", "hit_rate": "Hit rate (holdout)",
                 "sharpe": "Sharpe ratio after costs (holdout, annualized)", "fidelity": "Fidelity to the teacher",
                 "max_drawdown": "Maximum drawdown (holdout)"}
        return [{"type": k, "value": round(float(hold[k]), 6), "name": n} for k, n in names.items()
                if isinstance(hold.get(k), (int, float)) and not isinstance(hold.get(k), bool)]
    key = "teacher" if v["role"] == "teacher" else "student"
    perplexity = evidence.get("perplexity") if isinstance(evidence.get("perplexity"), dict) else {}
    ppl = perplexity.get(key) if isinstance(perplexity.get(key), dict) else {}
    return [{"type": "perplexity", "value": round(float(val), 3), "name": f"Perplexity ({str(split)[:40]})"}
            for split, val in ppl.items() if isinstance(val, (int, float)) and not isinstance(val, bool)]


def front_matter(chain: list[dict[str, Any]], evidence: dict[str, Any] | None) -> dict[str, Any]:
    v = chain[0]
    dataset = next((c["dataset"] for c in chain if c.get("dataset")), None) or {}
    task_type, task_name = TASKS[v["family"]]
    ds = {"type": f"convergence/{dataset.get('name', 'unknown')}", "name": dataset.get("name", "unknown"),
          "revision": dataset.get("sha256", "")}
    return {
        "license": "apache-2.0",
        "library_name": "convergence",
        "pipeline_tag": task_type,
        "tags": ["convergence", v["family"], v["role"], "distillation", "audit-pack"],
        "datasets": [ds["type"]],
        "model-index": [{"name": f"{v['name']} v{v['version']}",
                         "results": [{"task": {"type": task_type, "name": task_name}, "dataset": ds,
                                      "metrics": _metrics(chain, evidence) or [{"type": "none", "value": 0,
                                                                                 "name": "no evaluation recorded"}]}]}],
    }


def _decisions(v: dict[str, Any]) -> list[str]:
    out = []
    for a in v.get("approvals", []):
        who = a.get("principal") or {}
        ident = (f"{_t(who.get('name', a['actor']))} ({_t(who.get('kind', '?'))}, {_t(who.get('issuer', '?'))} / "
                 f"{_t(who.get('subject', '?'))})")
        out.append(f"- **{_t(a['decision'])}** by {ident} at {_t(a['at'])}: {_t(a['reason'])}")
    return out or ["- none recorded"]


def _deployments(v: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """Stage changes into and out of production, and kill switches on the model's name, by whom and when."""
    out = [f"- {_t(d['at'][:19])} UTC: {_t(d['from'])} → {_t(d['to'])} by {_t(d['actor'])}"
           for d in v.get("deployments", [])]
    out += [f"- {_t(e['ts'][:19])} UTC: {_t(e['action'])} ({_t(e['subject_id'])}) by {_t(e['actor'])}: "
            f"{_t((e.get('payload') or {}).get('reason', ''))}" for e in events if e["action"].startswith("serving.")]
    return out or ["- never deployed, never killed"]


def model_card(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None, risk: dict[str, Any],
               reports: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> str:  # type: ignore[assignment]
    v = chain[0]
    lineage = " → ".join(f"{_t(c['role'])} #{c['id']} ({_t(c['name'])} v{c['version']}, {_t(c['stage'])})"
                         for c in reversed(chain))
    lineage += f" (dataset {_t((next((c['dataset'] for c in chain if c.get('dataset')), None) or {}).get('name'))})"
    checks = [f"- {_t(c.get('check'))}: {_t(c.get('value'))} {_t(c.get('op'))} {_t(c.get('threshold'))} — "
              f"{'pass' if c.get('passed') is True else 'FAIL'}" for c in _gate_checks(evidence)]
    drift = [f"- report {r['id']} ({_t(r['window_start'][:16])} → {_t(r['window_end'][:16])}, {r['rows']:,} rows): "
             f"{'DRIFT' if r['drifted'] else 'no drift'}, share {r['drift_share']:.2f}" for r in reports]
    run = next((c.get("run") for c in chain if c.get("run")), None) or {}
    intended = ("ranks the next few bars' return of the E-mini S&P 500 future from recent trade prints, for a "
                "desk's signal inside a latency budget" if v["family"] == "trading" else
                "continues English text in the register of US presidential addresses; a small distilled "
                "model for experiments and monitoring, not for facts or advice")
    return "\n".join([
        "---", _yaml(front_matter(chain, evidence)), "---", "",
        f"# {_t(v['name'])} version {v['version']} ({_t(v['family'])}, {_t(v['role'])})", "",
        "Generated from the convergence registry and ledger; nothing here was typed by hand. "
        "`manifest.json` lists every file's SHA-256 and `manifest.sig` signs it with the control plane's key.", "",
        "## Intended use", "", f"This model {intended}. Stage now: **{v['stage']}**.", "",
        "## Limitations and where it must not be used", "",
        "- Trained and evaluated on the data named below only; outside that market, period or text it is untested.",
        "- Its outputs are forecasts or text, never orders or facts: a person or a checked system decides.",
        "- A kill switch stops it on every replica; its approver fixed what it answers then "
        f"(safe output: {v.get('safe_output')}).", "",
        "## Model risk", "",
        f"- materiality tier: {_t(risk.get('tier') or 'not classified')}; owner: {_t(risk.get('owner'))}; "
        f"validator: {_t(risk.get('validator'))}; next review: {_t(risk.get('next_review'))}", "",
        "## Training and evaluation", "",
        f"- lineage: {lineage}",
        f"- run {_t(run.get('id'))} ({_t(run.get('pipeline'))}), code version {_t(run.get('code_version'))}",
        f"- artifact SHA-256 {_t(v['artifact_sha256'])}", "", "Gates:", "", *(checks or ["- none recorded"]), "",
        "## Validation and approval", "", *_decisions(v), "",
        "## Deployments and kill switches", "", *_deployments(v, list(events)), "",
        "## Monitoring", "", *(drift or ["- no drift report yet"]), "",
        "## Risks", "",
        "- Markets and language change: drift checks compare live inputs with the training reference and alert.",
        "- A distilled student copies its teacher's errors; fidelity and the label-only control are in the gates.",
        "",
    ])


def _gate_checks(evidence: dict[str, Any] | None) -> list[dict[str, Any]]:
    gates = (evidence or {}).get("gates")
    checks = gates.get("checks") if isinstance(gates, dict) else None
    return [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _folds(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    wf = evidence.get("walk_forward")
    folds = wf.get("folds") if isinstance(wf, dict) else None
    return [f for f in folds if isinstance(f, dict)] if isinstance(folds, list) else []


def summary(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None) -> str:
    """For trading, the plain-language strategy summary with the walk-forward table; for language, the corpus,
    held-out perplexities and fixed-seed samples. Evidence of any shape renders (missing values show as —)."""
    v, e = chain[0], evidence or {}
    if v["family"] == "trading":
        feats = (e.get("config") or {}).get("features") or {} if isinstance(e.get("config"), dict) else {}
        feats = feats if isinstance(feats, dict) else {}
        rows = []
        for f in _folds(e):
            student = f.get("student") if isinstance(f.get("student"), dict) else {}
            rows.append(f"| {_t(f.get('fold'))} | {_t(str(f.get('test_start', ''))[:19])} | {_num(f.get('rows'), ',')} | "
                        f"{_num(student.get('ic'), '.4f')} | {_num(student.get('hit_rate'), '.3f')} | "
                        f"{_num(student.get('fidelity'), '.3f')} |")
        passed = "; ".join(f"{_t(c.get('check'))} {_num(c.get('value'), '.4g')} {_t(c.get('op'))} {_t(c.get('threshold'))}"
                           for c in _gate_checks(e) if c.get("passed") is True) or "none recorded"
        features = e.get("features") if isinstance(e.get("features"), list) else []
        return "\n".join([
            f"# Strategy summary: {_t(v['name'])} v{v['version']}", "",
            f"- **Inputs**: {len(features)} features from {_t(feats.get('bar', 'volume'))} bars of "
            f"{_t(feats.get('bar_size', '?'))} contracts: lagged returns, volatility, order-flow imbalance.",
            f"- **Horizon**: the return over the next {_t(feats.get('horizon', '?'))} bars.",
            "- **Output**: a forecast of that return; its sign is the side, its size the conviction. It places no "
            "order itself.",
            f"- **Gates it passed**: {passed}.",
            "- **Must not be used**: on other instruments, other sessions or with other bar sizes without a new "
            "validation; when its kill switch is on; as the only control on order size.", "",
            "## Walk-forward (student, out of sample)", "",
            "| fold | test from | rows | IC | hit rate | fidelity |", "|---|---|---|---|---|---|", *rows, ""])
    corpus = e.get("corpus") if isinstance(e.get("corpus"), dict) else {}
    ppl = e.get("perplexity") if isinstance(e.get("perplexity"), dict) else {}
    samples = (e.get("samples") or {}).get("student") if isinstance(e.get("samples"), dict) else []
    return "\n".join([
        f"# Language model summary: {_t(v['name'])} v{v['version']}", "",
        f"- **Corpus**: {_t(corpus.get('source', '?'))}; held out: {_t(corpus.get('split', '?'))}",
        *[f"- **Perplexity** {_t(k)}: " + ", ".join(f"{_t(sp)} {_num(p, '.1f')}" for sp, p in d.items())
          for k, d in ppl.items() if isinstance(d, dict)], "",
        "## Fixed-seed samples (student)", "",
        *[f"- {_t(s, 400)}" for s in (samples if isinstance(samples, list) else [])], ""])
