"""Plots as inline SVG, drawn from numbers only, every label escaped: no script, nothing fetched, and no
inline style (so a page with a strict Content-Security-Policy shows them). Used by the audit pack's card.html
and by the console.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

__all__ = ["esc", "bar_svg", "heat_svg", "line_svg", "timeline_svg"]

W, H, PAD = 640, 220, 40


def esc(value: Any) -> str:
    """HTML-escaped text, quotes included (safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _scale(values: list[float], lo_px: float, hi_px: float) -> Any:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def line_svg(ys: list[float], *, title: str, breaks: list[int] = ()) -> str:  # type: ignore[assignment]
    """A line over ``ys`` (index on x), with dashed lines at ``breaks`` (fold boundaries)."""
    if len(ys) < 2:
        return f"<p>{esc(title)}: not enough points to draw.</p>"
    x = _scale([0, len(ys) - 1], PAD, W - 10)
    y = _scale(ys, H - 25, 10)
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
    marks = "".join(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="10" y2="{H - 25}" stroke="#d0d7de" '
                    'stroke-dasharray="4 3"/>' for b in breaks)
    return (f'<svg role="img" aria-label="{esc(title)}" width="{W}" height="{H}" viewBox="0 0 {W} {H}">{marks}'
            f'<polyline class="line" fill="none" stroke-width="1.6" points="{points}"/>'
            f'<text x="2" y="14">{max(ys):.4g}</text><text x="2" y="{H - 25}">{min(ys):.4g}</text></svg>')


def bar_svg(labels: list[str], values: list[float], *, title: str) -> str:
    """Bars from a zero line: green above, red below."""
    if not values:
        return f"<p>{esc(title)}: nothing recorded.</p>"
    y = _scale([min(0.0, *values), max(0.0, *values)], H - 25, 10)
    step = (W - PAD) / len(values)
    bars = "".join(
        f'<rect class="{"good" if v >= 0 else "bad"}" x="{PAD + i * step + 4:.1f}" y="{min(y(v), y(0)):.1f}" '
        f'width="{max(step - 8, 2):.1f}" height="{max(abs(y(v) - y(0)), 1):.1f}"><title>{esc(label)}: {v:.4g}</title>'
        f'</rect><text x="{PAD + i * step + 4:.1f}" y="{H - 8}">{esc(str(label)[:14])}</text>'
        for i, (label, v) in enumerate(zip(labels, values, strict=True)))
    return (f'<svg role="img" aria-label="{esc(title)}" width="{W}" height="{H}" viewBox="0 0 {W} {H}">'
            f'<line x1="{PAD}" x2="{W}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#57606a"/>{bars}</svg>')


def heat_svg(rows: list[str], cols: list[str], cells: dict[tuple[str, str], tuple[float, bool]], *, title: str) -> str:
    """Drift per column (rows) and report (columns): the statistic as opacity, drifted cells red."""
    if not rows or not cols:
        return f"<p>{esc(title)}: no drift report yet.</p>"
    cw, rh, left = min(60, (W - 150) / len(cols)), 16, 150
    out = [f'<svg role="img" aria-label="{esc(title)}" width="{W}" height="{len(rows) * rh + 30}" '
           f'viewBox="0 0 {W} {len(rows) * rh + 30}">']
    for r, name in enumerate(rows):
        out.append(f'<text x="2" y="{r * rh + 12}">{esc(str(name)[:22])}</text>')
        for c, col in enumerate(cols):
            stat, drifted = cells.get((name, col), (0.0, False))
            fill = "#cf222e" if drifted else "#0969da"
            out.append(f'<rect x="{left + c * cw:.1f}" y="{r * rh}" width="{cw - 2:.1f}" height="{rh - 2}" '
                       f'fill="{fill}" fill-opacity="{min(1.0, 0.15 + abs(stat) * 3):.2f}"><title>{esc(name)} '
                       f'{esc(col)}: {stat:.3g}{" drifted" if drifted else ""}</title></rect>')
    out += [f'<text x="{left + c * cw:.1f}" y="{len(rows) * rh + 14}">{esc(str(col)[:10])}</text>' for c, col in enumerate(cols)]
    return "".join(out) + "</svg>"


def timeline_svg(stages: list[dict[str, Any]], *, title: str) -> str:
    """Each stage change as a dot on a time axis, labelled with the stage it entered."""
    if not stages:
        return f"<p>{esc(title)}: no stage change recorded.</p>"
    times = [dt.datetime.fromisoformat(s["at"]).timestamp() for s in stages]
    x = _scale(times if len(set(times)) > 1 else [times[0] - 1, times[0] + 1], PAD, W - 80)
    dots = "".join(f'<circle cx="{x(t):.1f}" cy="{40 + (i % 3) * 22}" r="5" class="line" fill="#0969da">'
                   f'<title>{esc(s["at"])} {esc(s["to"])} by {esc(s["actor"])}</title></circle>'
                   f'<text x="{x(t) + 8:.1f}" y="{44 + (i % 3) * 22}">{esc(s["to"])}</text>'
                   for i, (t, s) in enumerate(zip(times, stages, strict=True)))
    return (f'<svg role="img" aria-label="{esc(title)}" width="{W}" height="120" viewBox="0 0 {W} 120">'
            f'<line x1="{PAD}" x2="{W - 80}" y1="100" y2="100" stroke="#57606a"/>{dots}</svg>')
