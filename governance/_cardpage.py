"""``card.html``: the audit pack's page for people who would rather look than read.

One self-contained file (inline CSS, plots as inline SVG, no script, nothing fetched): the walk-forward
equity curve and the IC per fold, drift per column over time, energy per step, and the stage timeline.
Every value is escaped; the plots are drawn from numbers only.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

W, H, PAD = 640, 220, 40
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:760px;color:#1b1f24}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.8em}figure{margin:0}figcaption{color:#57606a;font-size:.9em}
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:2px 8px;text-align:left}
svg text{font:11px system-ui,sans-serif;fill:#57606a}.good{fill:#2da44e}.bad{fill:#cf222e}.line{stroke:#0969da}
@media print{body{margin:0;max-width:none}}"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _scale(values: list[float], lo_px: float, hi_px: float) -> Any:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def line_svg(ys: list[float], *, title: str, breaks: list[int] = ()) -> str:  # type: ignore[assignment]
    """A line over ``ys`` (index on x), with dashed lines at ``breaks`` (fold boundaries)."""
    if len(ys) < 2:
        return f"<p>{_e(title)}: not enough points to draw.</p>"
    x = _scale([0, len(ys) - 1], PAD, W - 10)
    y = _scale(ys, H - 25, 10)
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
    marks = "".join(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="10" y2="{H - 25}" stroke="#d0d7de" '
                    'stroke-dasharray="4 3"/>' for b in breaks)
    return (f'<svg role="img" aria-label="{_e(title)}" width="{W}" height="{H}" viewBox="0 0 {W} {H}">{marks}'
            f'<polyline class="line" fill="none" stroke-width="1.6" points="{points}"/>'
            f'<text x="2" y="14">{max(ys):.4g}</text><text x="2" y="{H - 25}">{min(ys):.4g}</text></svg>')


def bar_svg(labels: list[str], values: list[float], *, title: str) -> str:
    """Bars from a zero line: green above, red below."""
    if not values:
        return f"<p>{_e(title)}: nothing recorded.</p>"
    y = _scale([min(0.0, *values), max(0.0, *values)], H - 25, 10)
    step = (W - PAD) / len(values)
    bars = "".join(
        f'<rect class="{"good" if v >= 0 else "bad"}" x="{PAD + i * step + 4:.1f}" y="{min(y(v), y(0)):.1f}" '
        f'width="{max(step - 8, 2):.1f}" height="{max(abs(y(v) - y(0)), 1):.1f}"><title>{_e(label)}: {v:.4g}</title>'
        f'</rect><text x="{PAD + i * step + 4:.1f}" y="{H - 8}">{_e(label)[:14]}</text>'
        for i, (label, v) in enumerate(zip(labels, values, strict=True)))
    return (f'<svg role="img" aria-label="{_e(title)}" width="{W}" height="{H}" viewBox="0 0 {W} {H}">'
            f'<line x1="{PAD}" x2="{W}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#57606a"/>{bars}</svg>')


def heat_svg(rows: list[str], cols: list[str], cells: dict[tuple[str, str], tuple[float, bool]], *, title: str) -> str:
    """Drift per column (rows) and report (columns): the statistic as opacity, drifted cells red."""
    if not rows or not cols:
        return f"<p>{_e(title)}: no drift report yet.</p>"
    cw, rh, left = min(60, (W - 150) / len(cols)), 16, 150
    out = [f'<svg role="img" aria-label="{_e(title)}" width="{W}" height="{len(rows) * rh + 30}" '
           f'viewBox="0 0 {W} {len(rows) * rh + 30}">']
    for r, name in enumerate(rows):
        out.append(f'<text x="2" y="{r * rh + 12}">{_e(name)[:22]}</text>')
        for c, col in enumerate(cols):
            stat, drifted = cells.get((name, col), (0.0, False))
            fill = "#cf222e" if drifted else "#0969da"
            out.append(f'<rect x="{left + c * cw:.1f}" y="{r * rh}" width="{cw - 2:.1f}" height="{rh - 2}" '
                       f'fill="{fill}" fill-opacity="{min(1.0, 0.15 + abs(stat) * 3):.2f}"><title>{_e(name)} '
                       f'{_e(col)}: {stat:.3g}{" drifted" if drifted else ""}</title></rect>')
    out += [f'<text x="{left + c * cw:.1f}" y="{len(rows) * rh + 14}">{_e(col)[:10]}</text>' for c, col in enumerate(cols)]
    return "".join(out) + "</svg>"


def timeline_svg(stages: list[dict[str, Any]], *, title: str) -> str:
    """Each stage change as a dot on a time axis, labelled with the stage it entered."""
    if not stages:
        return f"<p>{_e(title)}: no stage change recorded.</p>"
    times = [dt.datetime.fromisoformat(s["at"]).timestamp() for s in stages]
    x = _scale(times if len(set(times)) > 1 else [times[0] - 1, times[0] + 1], PAD, W - 80)
    dots = "".join(f'<circle cx="{x(t):.1f}" cy="{40 + (i % 3) * 22}" r="5" class="line" fill="#0969da">'
                   f'<title>{_e(s["at"])} {_e(s["to"])} by {_e(s["actor"])}</title></circle>'
                   f'<text x="{x(t) + 8:.1f}" y="{44 + (i % 3) * 22}">{_e(s["to"])}</text>'
                   for i, (t, s) in enumerate(zip(times, stages, strict=True)))
    return (f'<svg role="img" aria-label="{_e(title)}" width="{W}" height="120" viewBox="0 0 {W} 120">'
            f'<line x1="{PAD}" x2="{W - 80}" y1="100" y2="100" stroke="#57606a"/>{dots}</svg>')


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


def card_html(*, chain: list[dict[str, Any]], evidence: dict[str, Any] | None, reports: list[dict[str, Any]],
              risk: dict[str, Any], usage: dict[str, Any]) -> str:
    v, e = chain[0], evidence or {}
    figures = []
    if v["family"] == "trading":
        from convergence.governance._card import _folds

        folds = _folds(e)
        equity, breaks = _equity(folds)
        figures.append(("Walk-forward equity (student, net of costs; dashed: fold boundaries)",
                        line_svg(equity, title="walk-forward equity", breaks=breaks)))
        ics = [(f"fold {f.get('fold')}", float(f["student"]["ic"])) for f in folds
               if isinstance(f.get("student"), dict) and _number(f["student"].get("ic"))]
        figures.append(("Information coefficient per fold (student, out of sample)",
                        bar_svg([k for k, _ in ics], [x for _, x in ics], title="IC per fold")))
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
