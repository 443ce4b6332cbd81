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
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return json.dumps(v, ensure_ascii=False, default=str)


def _metrics(chain: list[dict[str, Any]], evidence: dict[str, Any] | None) -> list[dict[str, Any]]:
    v = chain[0]
    if evidence is None:
        return []
    if v["family"] == "trading":
        key = {"teacher": "teacher", "quantized": "int8"}.get(v["role"], "student")
        hold = (evidence.get("holdout") or {}).get(key) or {}
        names = {"ic": "Information coefficient (holdout)", "hit_rate": "Hit rate (holdout)",
                 "sharpe": "Sharpe ratio after costs (holdout, annualized)", "fidelity": "Fidelity to the teacher",
                 "max_drawdown": "Maximum drawdown (holdout)"}
        return [{"type": k, "value": round(float(hold[k]), 6), "name": n} for k, n in names.items() if k in hold]
    key = "teacher" if v["role"] == "teacher" else "student"
    ppl = (evidence.get("perplexity") or {}).get(key) or {}
    return [{"type": "perplexity", "value": round(float(val), 3), "name": f"Perplexity ({split})"}
            for split, val in ppl.items()]


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
        ident = f"{who.get('name', a['actor'])} ({who.get('kind', '?')}, {who.get('issuer', '?')} / {who.get('subject', '?')})"
        out.append(f"- **{a['decision']}** by {ident} at {a['at']}: {a['reason']}")
    return out or ["- none recorded"]


def _deployments(v: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """Stage changes into and out of production, and kill switches on the model's name, by whom and when."""
    out = [f"- {d['at'][:19]} UTC: {d['from'] or '—'} → {d['to']} by {d['actor']}" for d in v.get("deployments", [])]
    out += [f"- {e['ts'][:19]} UTC: {e['action']} ({e['subject_id']}) by {e['actor']}: "
            f"{(e.get('payload') or {}).get('reason', '')}" for e in events if e["action"].startswith("serving.")]
    return out or ["- never deployed, never killed"]


def model_card(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None, risk: dict[str, Any],
               reports: list[dict[str, Any]], events: list[dict[str, Any]] = ()) -> str:  # type: ignore[assignment]
    v = chain[0]
    lineage = " → ".join(f"{c['role']} #{c['id']} ({c['name']} v{c['version']}, {c['stage']})" for c in reversed(chain))
    lineage += f" (dataset {(next((c['dataset'] for c in chain if c.get('dataset')), None) or {}).get('name', '—')})"
    gates = (evidence or {}).get("gates") or {}
    checks = [f"- {c['check']}: {c['value']:.4g} {c['op']} {c['threshold']} — {'pass' if c['passed'] else 'FAIL'}"
              for c in gates.get("checks", [])]
    drift = [f"- report {r['id']} ({r['window_start'][:16]} → {r['window_end'][:16]}, {r['rows']:,} rows): "
             f"{'DRIFT' if r['drifted'] else 'no drift'}, share {r['drift_share']:.2f}" for r in reports]
    run = next((c.get("run") for c in chain if c.get("run")), None) or {}
    intended = ("ranks the next few bars' return of the E-mini S&P 500 future from recent trade prints, for a "
                "desk's signal inside a latency budget" if v["family"] == "trading" else
                "continues English text in the register of US presidential addresses; a small distilled "
                "model for experiments and monitoring, not for facts or advice")
    return "\n".join([
        "---", _yaml(front_matter(chain, evidence)), "---", "",
        f"# {v['name']} version {v['version']} ({v['family']}, {v['role']})", "",
        "Generated from the convergence registry and ledger; nothing here was typed by hand. "
        "`manifest.json` lists every file's SHA-256 and `manifest.sig` signs it with the control plane's key.", "",
        "## Intended use", "", f"This model {intended}. Stage now: **{v['stage']}**.", "",
        "## Limitations and where it must not be used", "",
        "- Trained and evaluated on the data named below only; outside that market, period or text it is untested.",
        "- Its outputs are forecasts or text, never orders or facts: a person or a checked system decides.",
        "- A kill switch stops it on every replica; its approver fixed what it answers then "
        f"(safe output: {v.get('safe_output')}).", "",
        "## Model risk", "",
        f"- materiality tier: {risk.get('tier') or 'not classified'}; owner: {risk.get('owner') or '—'}; "
        f"validator: {risk.get('validator') or '—'}; next review: {risk.get('next_review') or '—'}", "",
        "## Training and evaluation", "",
        f"- lineage: {lineage}",
        f"- run {run.get('id', '—')} ({run.get('pipeline', '—')}), code version {run.get('code_version', '—')}",
        f"- artifact SHA-256 {v['artifact_sha256']}", "", "Gates:", "", *(checks or ["- none recorded"]), "",
        "## Validation and approval", "", *_decisions(v), "",
        "## Deployments and kill switches", "", *_deployments(v, list(events)), "",
        "## Monitoring", "", *(drift or ["- no drift report yet"]), "",
        "## Risks", "",
        "- Markets and language change: drift checks compare live inputs with the training reference and alert.",
        "- A distilled student copies its teacher's errors; fidelity and the label-only control are in the gates.",
        "",
    ])


def summary(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None) -> str:
    """For trading, the plain-language strategy summary with the walk-forward table; for language, the corpus,
    held-out perplexities and fixed-seed samples."""
    v, e = chain[0], evidence or {}
    if v["family"] == "trading":
        cfg = e.get("config", {})
        feats = cfg.get("features", {})
        rows = [f"| {f['fold']} | {f['test_start'][:19]} | {f['rows']:,} | {f['student']['ic']:.4f} | "
                f"{f['student']['hit_rate']:.3f} | {f['student'].get('fidelity', float('nan')):.3f} |"
                for f in (e.get("walk_forward") or {}).get("folds", [])]
        return "\n".join([
            f"# Strategy summary: {v['name']} v{v['version']}", "",
            f"- **Inputs**: {len(e.get('features', []))} features from {feats.get('bar', 'volume')} bars of "
            f"{feats.get('bar_size', '?')} contracts: lagged returns, volatility, order-flow imbalance.",
            f"- **Horizon**: the return over the next {feats.get('horizon', '?')} bars.",
            "- **Output**: a forecast of that return; its sign is the side, its size the conviction. It places no "
            "order itself.",
            "- **Gates it passed**: " + ("; ".join(f"{c['check']} {c['value']:.4g} {c['op']} {c['threshold']}"
                                                   for c in (e.get("gates") or {}).get("checks", []) if c["passed"])
                                         or "none recorded") + ".",
            "- **Must not be used**: on other instruments, other sessions or with other bar sizes without a new "
            "validation; when its kill switch is on; as the only control on order size.", "",
            "## Walk-forward (student, out of sample)", "",
            "| fold | test from | rows | IC | hit rate | fidelity |", "|---|---|---|---|---|---|", *rows, ""])
    corpus, ppl = e.get("corpus", {}), e.get("perplexity", {})
    samples = (e.get("samples") or {}).get("student") or []
    return "\n".join([
        f"# Language model summary: {v['name']} v{v['version']}", "",
        f"- **Corpus**: {corpus.get('source', '?')}; held out: {corpus.get('split', '?')}",
        *[f"- **Perplexity** {k}: " + ", ".join(f"{s} {p:.1f}" for s, p in d.items()) for k, d in ppl.items()], "",
        "## Fixed-seed samples (student)", "",
        *[f"- {json.dumps(s, ensure_ascii=False)[:400]}" for s in samples], ""])
