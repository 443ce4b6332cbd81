"""What each console page shows, gathered through ``Operations`` as the signed-in principal (so every read is
checked against the same permission table as the API), plus the page's charts.

Each ``*_page`` returns ``(template, context)``; sections a role may not read are left out and say which
permission they need rather than failing the whole page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from convergence.platform.api.operations import Operations
from convergence.platform.errors import NotFound
from convergence.platform.plots import bar_svg, esc, heat_svg, timeline_svg

SORTS = ("name", "family", "stage", "tier", "alerts", "validated")
TIER_ORDER = {"high": 0, "medium": 1, "low": 2, None: 3}


def may(ops: Operations, permission: str) -> bool:
    """Whether the principal holds a role with ``permission`` (what to show; the services still enforce it)."""
    from convergence.governance import identity

    return bool(ops.principal.roles & identity.roles_for(permission))


def inventory_page(ops: Operations, *, q: str = "", family: str = "", stage: str = "", tier: str = "",
                   sort: str = "name", desc: bool = False) -> tuple[str, dict[str, Any]]:
    from convergence import governance as gov

    with ops.reading("model.read") as session:
        rows = gov.views.inventory(session=session)
    everything = rows
    if q:
        rows = [r for r in rows if q.lower() in r["name"].lower()]
    rows = [r for r in rows if (not family or r["family"] == family) and (not stage or r["stage"] == stage)
            and (not tier or (r["tier"] or "unset") == tier)]
    sort = sort if sort in SORTS else "name"
    keys = {"name": lambda r: r["name"], "family": lambda r: (r["family"], r["name"]),
            "stage": lambda r: (r["stage"], r["name"]), "tier": lambda r: (TIER_ORDER.get(r["tier"], 3), r["name"]),
            "alerts": lambda r: (-r["open_drift_alerts"], r["name"]),
            "validated": lambda r: ((r["last_validation"] or {}).get("at") or "", r["name"])}
    rows.sort(key=keys[sort], reverse=desc)
    choices = {"family": sorted({r["family"] for r in everything}), "stage": sorted({r["stage"] for r in everything}),
               "tier": sorted({r["tier"] or "unset" for r in everything}, key=lambda t: TIER_ORDER.get(t, 3))}
    return "inventory.html", {"rows": rows, "total": len(everything), "choices": choices, "sorts": SORTS,
                              "filters": {"q": q, "family": family, "stage": stage, "tier": tier},
                              "sort": sort, "desc": desc}


def model_page(ops: Operations, version_id: int) -> tuple[str, dict[str, Any]]:
    from convergence import governance as gov

    events = may(ops, "audit.read")
    with ops.reading("model.read") as session:
        view = gov.views.version_view(session=session, version_id=version_id, events=events)
    version = view["version"]
    usage = version.get("usage") or next((v.get("usage") for v in view["chain"] if v.get("usage")), None)
    steps = (usage or {}).get("steps", {})
    reports = list(reversed(view["drift"]))
    columns = sorted({c for r in reports for c in (r["columns"] or {})})[:40]
    cells = {(c, f"#{r['id']}"): (float((r["columns"] or {}).get(c, {}).get("statistic") or 0.0),
                                  bool((r["columns"] or {}).get(c, {}).get("drifted")))
             for r in reports for c in columns}
    charts = {
        "lineage": lineage_svg(view["graph"], current=version_id),
        "stages": timeline_svg(version.get("stages", []), title="stage timeline"),
        "drift": heat_svg(columns, [f"#{r['id']}" for r in reports], cells, title="drift per column"),
        "energy": bar_svg(list(steps), [float(s.get("kwh") or 0) * 1000 for s in steps.values()],
                          title="energy per pipeline step (Wh)"),
    }
    return "model.html", {"view": view, "v": version, "usage": usage, "charts": charts, "events_allowed": events,
                          "can_pack": may(ops, "model.pack")}


def time_travel_page(ops: Operations, *, name: str = "", at: str = "") -> tuple[str, dict[str, Any]]:
    from convergence import governance as gov
    from convergence.platform.timeparse import parse_time

    with ops.reading("model.read") as session:
        names = gov.views.model_names(session=session)
        result = None
        if name:
            when = parse_time(at or "now", option="instant")
            result = gov.views.moment(session=session, name=name, at=when, events=may(ops, "audit.read"))
    return "time_travel.html", {"names": names, "name": name, "at": at, "result": result,
                                "events_allowed": may(ops, "audit.read")}


class ChainStatus:
    """The whole chain's verification for the ledger page, reused for ``max_age_s`` (a full check reads every
    event: a page view must not cost that each time). Not keyed on the head: an edited row leaves it unchanged."""

    def __init__(self, *, max_age_s: float) -> None:
        import threading

        self.max_age_s = max_age_s
        self._last: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()  # one full check at a time: views arriving meanwhile wait and reuse it

    def get(self, ops: Operations) -> dict[str, Any]:
        import time

        with self._lock:
            last = self._last
            if last is None or time.monotonic() - last[0] >= self.max_age_s:
                last = self._last = (time.monotonic(), ops.verify_audit())
                return {**last[1], "age_s": 0.0}
        return {**last[1], "age_s": time.monotonic() - last[0]}


def ledger_page(ops: Operations, *, chain: ChainStatus, limit: int = 50,
                before: int | None = None) -> tuple[str, dict[str, Any]]:
    from convergence import governance as gov

    with ops.reading("audit.read") as session:
        head_seq, _ = gov.head(session=session)
        until = min(before, head_seq + 1) if before else head_seq + 1
        events = [e.to_dict() for e in gov.views.recent_events(session=session, before=until, limit=limit)]
    status = chain.get(ops)
    try:
        checkpoint = ops.latest_checkpoint()
    except NotFound:  # none signed yet: the page says so
        checkpoint = None
    try:
        pubkey = ops.ledger_pubkey()
    except NotFound:  # a new ledger has no signing key until its first checkpoint
        pubkey = {"key": "", "anchors": []}
    return "ledger.html", {"status": status, "checkpoint": checkpoint, "pubkey": pubkey,
                           "events": events, "head_seq": head_seq, "limit": limit,
                           "older": events[-1]["seq"] if events and events[-1]["seq"] > 1 else None}


def budgets_page(ops: Operations, *, project: str = "", months: int = 6) -> tuple[str, dict[str, Any]]:
    status = ops.show_budgets(project=project or None)
    now = dt.datetime.now(dt.timezone.utc)
    starts = [_month_start(now, back) for back in range(months - 1, -1, -1)]
    labels, kwh, cpu = [], [], []
    for start, end in zip(starts, [*starts[1:], None], strict=True):
        rows = ops.usage_report(project=project or None, since=start.isoformat(),
                                until=end.isoformat() if end else None, by="family")
        for row in rows:
            labels.append(f"{start:%Y-%m} {row['family'] or '-'}")
            kwh.append(row["kwh"] * 1000)
            cpu.append(row["cpu_hours"])
    gauges = [(b, gauge_svg(b["used"], b["soft"], b["hard"], title=f"{b['project']} {b['family']} {b['metric']}"))
              for b in status["budgets"]]
    charts = {"energy": bar_svg(labels, kwh, title="energy per month and family (Wh)"),
              "cpu": bar_svg(labels, cpu, title="CPU hours per month and family")}
    projects = sorted({b["project"] for b in status["budgets"]})
    return "budgets.html", {"status": status, "gauges": gauges, "charts": charts, "project": project,
                            "projects": projects}


def _month_start(now: dt.datetime, back: int) -> dt.datetime:
    year, month = now.year, now.month - back
    while month < 1:
        year, month = year - 1, month + 12
    return dt.datetime(year, month, 1, tzinfo=dt.timezone.utc)


def gauge_svg(used: float, soft: float | None, hard: float, *, title: str) -> str:
    """Used against a hard limit as a bar, the soft limit as a tick; red past the hard limit, amber past soft."""
    width, height, left = 640, 46, 4
    span = max(hard, used, 1e-12)
    x = lambda v: left + (width - 2 * left) * min(max(v, 0.0), span) / span  # noqa: E731
    state = "bad" if used >= hard else "warn" if soft is not None and used >= soft else "good"
    soft_mark = (f'<line x1="{x(soft):.1f}" x2="{x(soft):.1f}" y1="4" y2="30" stroke="#9a6700" stroke-width="2">'
                 f'<title>soft limit {soft:.4g}</title></line>') if soft is not None else ""
    return (f'<svg role="img" aria-label="{esc(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><rect x="{left}" y="8" width="{width - 2 * left}" height="18" '
            f'fill="#eaeef2"/><rect class="{state}" x="{left}" y="8" width="{x(used) - left:.1f}" height="18">'
            f'<title>used {used:.4g} of {hard:.4g}</title></rect>'
            f'<line x1="{x(hard):.1f}" x2="{x(hard):.1f}" y1="4" y2="30" stroke="#1b1f24" stroke-width="2"/>'
            f'{soft_mark}<text x="{left}" y="42">{used:.4g} of {hard:.4g} ({used / hard:.0%})</text></svg>')


def lineage_svg(graph: dict[str, Any], *, current: int) -> str:
    """Lineage as a left-to-right graph: each node in the column of its longest path from a source; version
    nodes are links (keyboard-focusable), the current one outlined."""
    nodes, edges = graph["nodes"], graph["edges"]
    if not nodes:
        return "<p>No lineage recorded.</p>"
    depth = {n["id"]: 0 for n in nodes}
    for _ in nodes:  # longest path, relaxed |V| times (the graph is tiny and acyclic)
        for e in edges:
            if e["from"] in depth and e["to"] in depth:
                depth[e["to"]] = max(depth[e["to"]], depth[e["from"]] + 1)
    rows: dict[int, int] = {}
    place = {}
    for n in nodes:
        col = depth[n["id"]]
        place[n["id"]] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    bw, bh, gx, gy = 150, 46, 44, 18
    width = (max(c for c, _ in place.values()) + 1) * (bw + gx)
    height = max(rows.values()) * (bh + gy) + 10
    pos = {k: (10 + c * (bw + gx), 6 + r * (bh + gy)) for k, (c, r) in place.items()}
    out = [f'<svg role="img" aria-label="lineage" class="lineage" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
           'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#57606a"/></marker></defs>']
    for e in edges:
        if e["from"] in pos and e["to"] in pos:
            (x1, y1), (x2, y2) = pos[e["from"]], pos[e["to"]]
            out.append(f'<line x1="{x1 + bw}" y1="{y1 + bh / 2}" x2="{x2 - 2}" y2="{y2 + bh / 2}" stroke="#57606a" '
                       'marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n["id"]]
        klass = f"node {esc(n['kind'])}" + (" current" if n.get("version_id") == current else "")
        box = (f'<rect class="{klass}" x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6"/>'
               f'<text x="{x + 8}" y="{y + 18}" class="label">{esc(str(n["label"])[:22])}</text>'
               f'<text x="{x + 8}" y="{y + 36}">{esc(str(n["detail"])[:26])}</text>')
        if n.get("version_id"):
            box = f'<a href="/ui/models/{int(n["version_id"])}" aria-label="{esc(n["label"])}">{box}</a>'
        out.append(box)
    return "".join(out) + "</svg>"


def report_html(ops: Operations, report_id: int) -> bytes:
    """Evidently's HTML report of a drift check, from the store by its hash (the route serves it sandboxed)."""
    from convergence import governance as gov

    with ops.reading("drift.read") as session:
        blob = gov.report_html_blob(gov.get_report(session=session, report_id=report_id))
    if blob is None:
        raise NotFound(f"drift report {report_id} has no Evidently report (the check ran with --no-evidently)")
    return blob.read_bytes()


def proof_data(ops: Operations, seq: int) -> dict[str, Any]:
    """An event as stored, its inclusion proof and the signed checkpoint, for the browser to check."""
    from convergence import governance as gov

    with ops.reading("audit.read") as session:
        return gov.views.browser_proof(session=session, seq=seq)
