"""``card.html``: the audit pack's page for people who would rather look than read.

One self-contained file (inline CSS, plots as inline SVG, no script, nothing fetched): the walk-forward
equity curve and the IC per fold, drift per column over time, energy per step, and the stage timeline.
Every value is escaped; the plots are drawn from numbers only.
"""

from __future__ import annotations

from typing import Any

from convergence.platform.plots import esc as _e, bar_svg, heat_svg, line_svg, timeline_svg

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:760px;color:#1b1f24}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.8em}figure{margin:0}figcaption{color:#57606a;font-size:.9em}
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:2px 8px;text-align:left}
svg text{font:11px system-ui,sans-serif;fill:#57606a}.good{fill:#2da44e}.bad{fill:#cf222e}.line{stroke:#0969da}
@media print{body{margin:0;max-width:none}}"""


def _number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _equity(folds: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """The folds' equity curves chained into one, and where each fold starts."""
    out: list[float] = []
    breaks = []
    for fold in folds:
        curve = [float(v) for v in fold.get("equity") or [] if _number(v)] if isinstance(fold.get("equity"), list) else []
        base = out[-1] if out else 0.0
        if out:
            breaks.append(len(out))
        out += [base + v for v in curve]
    return out, breaks


def walk_forward_figures(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    """The walk-forward equity curve and the IC per fold, as (caption, SVG), from evidence of any shape."""
    from convergence.governance._card import _folds

    folds = _folds(evidence)
    equity, breaks = _equity(folds)
    ics = [(f"fold {f.get('fold')}", float(f["student"]["ic"])) for f in folds
           if isinstance(f.get("student"), dict) and _number(f["student"].get("ic"))]
    return [("Walk-forward equity (student, net of costs; dashed: fold boundaries)",
             line_svg(equity, title="walk-forward equity", breaks=breaks)),
            ("Information coefficient per fold (student, out of sample)",
             bar_svg([k for k, _ in ics], [x for _, x in ics], title="IC per fold"))]


def card_html(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None, reports: list[dict[str, Any]],
              risk: dict[str, Any], usage: dict[str, Any]) -> str:
    v, e = chain[0], evidence or {}
    figures = walk_forward_figures(e) if v["family"] == "trading" else []
    names = sorted({c for r in reports for c in r["columns"]})
    cols = [f"#{r['id']} {r['window_end'][5:16]}" for r in reports]
    cells = {(c, col): (float(r["columns"][c].get("statistic", 0.0)) if _number(r["columns"][c].get("statistic"))
                        else 0.0, bool(r["columns"][c].get("drifted")))
             for r, col in zip(reports, cols, strict=True) for c in r["columns"] if isinstance(r["columns"][c], dict)}
    figures.append(("Drift per column over time (red: drifted; darker: larger statistic)",
                    heat_svg(names, cols, cells, title="drift per column")))
    steps = ((usage.get(str(v["id"])) or next((u for u in usage.values() if u), None) or {}).get("steps") or {})
    figures.append(("Energy per pipeline step (Wh)", bar_svg(list(steps), [s["kwh"] * 1000 for s in steps.values()],
                                                             title="energy per step")))
    figures.append(("Stage timeline", timeline_svg(v.get("stages", []), title="stage timeline")))
    approvals = "".join(f"<tr><td>{_e(a['decision'])}</td><td>{_e((a.get('principal') or {}).get('name', a['actor']))}"
                        f"</td><td><time datetime=\"{_e(a['at'])}\" title=\"{_e(a['at'])}\">{_e(a['at'][:19])} UTC"
                        f"</time></td><td>{_e(a['reason'])}</td></tr>" for a in v.get("approvals", []))
    body = "".join(f"<h2>{_e(caption)}</h2><figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"
                   for caption, svg in figures)
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(v['name'])} v{_e(v['version'])}"
            f"</title><style>{CSS}</style></head><body><h1>{_e(v['name'])} version {_e(v['version'])} "
            f"({_e(v['family'])}, {_e(v['role'])}, {_e(v['stage'])})</h1>"
            f"<p>Materiality tier <b>{_e(risk.get('tier') or 'not classified')}</b>; owner {_e(risk.get('owner') or '—')};"
            f" validator {_e(risk.get('validator') or '—')}; next review {_e(risk.get('next_review') or '—')}. "
            f"Artifact SHA-256 <code>{_e(v['artifact_sha256'])}</code>.</p>"
            f"<h2>Validation and approval</h2><table><tr><th>decision</th><th>who</th><th>when</th><th>why</th></tr>"
            f"{approvals}</table>{body}</body></html>\n")
