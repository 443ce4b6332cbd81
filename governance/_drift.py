"""Drift monitoring: reference profiles at registration, a fast vectorised check against them, and
Evidently's report for the record.

The fast path applies the tests Evidently's DataDriftPreset chooses by default for numeric columns:
with more than 1,000 reference rows, Wasserstein distance normed by the reference's standard
deviation (drift at ≥ 0.1); with fewer, a two-sample Kolmogorov–Smirnov test (p < 0.05); columns
with five or fewer distinct values use Jensen–Shannon distance (≥ 0.1). Reference quantiles are
cached in the profile, so a check sorts only the current window. PSI on cached bins is reported too.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._alerts import raise_alert
from convergence.governance._artifacts import get_artifact_store
from convergence.governance._contract_io import encode_log
from convergence.governance._driftlog import window_matrix
from convergence.governance._ledger import Subject, append, serialize_writes
from convergence.governance._models import DriftReport, ModelVersion, PredictionLog, ReferenceProfile
from convergence.governance._principal import Principal
from convergence.governance._replay import check_recorded
from convergence.platform.db import utcnow
from convergence.platform.errors import InvalidInput, NotFound
from convergence.platform.settings import get_settings

LEVELS = np.linspace(0.0, 1.0, 2001)  # quantile levels kept per column
SAMPLE_ROWS = 20_000  # reference rows kept for Evidently's report and small-sample tests
W_THRESHOLD, JS_THRESHOLD, KS_ALPHA = 0.1, 0.1, 0.05


# --- profiles -------------------------------------------------------------------------------------

def column_stats(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)].astype(np.float64)
    if v.size == 0:
        raise InvalidInput("a reference column has no finite values")
    uniq, counts = np.unique(v, return_counts=True)
    stats: dict[str, Any] = {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
                             "quantiles": np.quantile(v, LEVELS).tolist(), "n_unique": int(min(len(uniq), 6))}
    edges = np.unique(np.quantile(v, np.linspace(0, 1, 11)))
    stats["psi_edges"] = edges.tolist()
    stats["psi_fracs"] = (np.histogram(v, bins=edges)[0] / v.size).tolist() if len(edges) > 1 else [1.0]
    if len(uniq) <= 5:
        stats["values"] = {repr(float(u)): int(c) for u, c in zip(uniq, counts)}
    return stats


def save_profile(*, session: Session, model_version_id: int, data: np.ndarray, columns: list[str],
                 positions: list[int], seed: int = 0) -> ReferenceProfile:
    """Profile ``data`` (rows × columns: the model's monitored inputs and, last, its output)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data.ndim != 2 or data.shape[1] != len(columns):
        raise InvalidInput(f"reference data has shape {data.shape}, expected (rows, {len(columns)})")
    stats = {c: column_stats(data[:, i]) for i, c in enumerate(columns)}
    rng = np.random.default_rng(seed)
    sample = data if len(data) <= SAMPLE_ROWS else data[np.sort(rng.choice(len(data), SAMPLE_ROWS, replace=False))]
    buf = io.BytesIO()
    pq.write_table(pa.table({c: sample[:, i] for i, c in enumerate(columns)}), buf)
    stored = get_artifact_store().put_bytes(buf.getvalue())
    profile = ReferenceProfile(model_version_id=model_version_id, columns=columns, positions=positions,
                               rows=len(data), stats=stats, sample_uri=stored.uri, sample_sha256=stored.sha256,
                               created_at=utcnow())
    session.add(profile)
    session.flush()
    return profile


def reference_sample(profile: ReferenceProfile) -> Any:
    import pyarrow.parquet as pq

    path = get_artifact_store().fetch(profile.sample_uri, sha256=profile.sample_sha256)
    return pq.read_table(path).to_pandas()


# --- the fast path --------------------------------------------------------------------------------

def _wasserstein_from_quantiles(q_ref: np.ndarray, q_cur: np.ndarray) -> np.ndarray:
    """W1 = ∫|Q_ref(p) − Q_cur(p)| dp over the cached levels (trapezoid), per column."""
    return np.trapezoid(np.abs(q_ref - q_cur), LEVELS, axis=0)


def _js(ref_counts: dict[str, int], cur: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(ref_counts) | {repr(float(x)) for x in np.unique(cur)})
    cur_counts = {k: 0 for k in keys}
    for value, count in zip(*np.unique(cur, return_counts=True)):
        cur_counts[repr(float(value))] = int(count)
    p = np.array([ref_counts.get(k, 0) for k in keys], float) + 1e-4
    q = np.array([cur_counts[k] for k in keys], float) + 1e-4
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def fast_drift(stats: dict[str, dict[str, Any]], columns: list[str], current: np.ndarray,
               reference_sample: Any = None) -> dict[str, dict[str, Any]]:
    """Per-column drift statistics and verdicts for ``current`` (rows × columns) against a profile, with the rows
    each used. A non-finite value is "not measured" (a signature's view that does not apply to a request): it is
    left out of its column, as the profile left such values out; a column with none measured does not drift."""
    if current.ndim != 2 or current.shape[1] != len(columns):
        raise InvalidInput(f"current data has {current.shape[1] if current.ndim == 2 else '?'} columns, "
                           f"the reference has {len(columns)}")
    if len(current) == 0:
        raise InvalidInput("the current window is empty")
    finite = np.isfinite(current)
    if finite.all():  # the common case (every trading window): one vectorised pass
        return _fast_block(stats, columns, current, reference_sample)
    whole = [i for i in range(len(columns)) if finite[:, i].all()]
    out = _fast_block(stats, [columns[i] for i in whole], current[:, whole], reference_sample) if whole else {}
    for i in sorted(set(range(len(columns))) - set(whole)):
        c, values = columns[i], current[finite[:, i], i]
        if len(values):
            out.update(_fast_block(stats, [c], values[:, None], reference_sample))
        else:
            out[c] = {"method": "not measured in this window", "statistic": 0.0, "threshold": 0.0, "drifted": False,
                      "wasserstein_normed": 0.0, "psi": 0.0, "ks_statistic": 0.0, "rows": 0,
                      "reference_mean": stats[c]["mean"], "current_mean": 0.0}
    return {c: out[c] for c in columns}


def _fast_block(stats: dict[str, dict[str, Any]], columns: list[str], current: np.ndarray,
                reference_sample: Any) -> dict[str, dict[str, Any]]:
    """``fast_drift`` for a block of finite values: one sort per column, the rest on the cached quantiles."""
    ordered = np.sort(current, axis=0)  # the one sort per column this check needs
    pos = LEVELS * (len(ordered) - 1)
    lo, frac = np.floor(pos).astype(int), (pos - np.floor(pos))[:, None]
    hi = np.minimum(lo + 1, len(ordered) - 1)
    q_cur = ordered[lo] * (1 - frac) + ordered[hi] * frac  # numpy's "linear" quantiles, from the sorted window
    q_ref = np.array([stats[c]["quantiles"] for c in columns]).T
    w = _wasserstein_from_quantiles(q_ref, q_cur)
    out: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(columns):
        s, cur = stats[c], current[:, i]
        w_norm = float(w[i] / max(s["std"], 0.001))
        edges = np.asarray(s["psi_edges"])
        cur_fracs = (np.histogram(np.clip(cur, edges[0], edges[-1]), bins=edges)[0] / len(cur)
                     if len(edges) > 1 else np.ones(1))
        ref_fracs = np.asarray(s["psi_fracs"])
        # PSI = Σ (cur − ref) · ln(cur / ref); the 1e-4 floor only keeps empty bins out of the logarithm
        psi = float(np.sum((cur_fracs - ref_fracs) * np.log((cur_fracs + 1e-4) / (ref_fracs + 1e-4))))
        # K-S statistic on the cached grid: the largest gap between the reference's levels and the share of
        # the window below each reference quantile (exact at the 2,001 grid points).
        below = np.searchsorted(ordered[:, i], q_ref[:, i], side="right") / len(cur)
        result = {"wasserstein_normed": w_norm, "psi": psi, "ks_statistic": float(np.max(np.abs(below - LEVELS))),
                  "rows": int(len(cur)),
                  "reference_mean": s["mean"], "current_mean": float(cur.mean(dtype=np.float64))}
        few_values = "values" in s and len(set(s["values"]) | {repr(float(x)) for x in np.unique(cur)}) <= 5
        if s["n"] <= 1000:  # Evidently's rule for small references (it would use chi-square for few values)
            if reference_sample is None:
                raise InvalidInput(f"column {c}: a reference of {s['n']} rows needs its sample for the KS test")
            from scipy.stats import ks_2samp  # 1.7 s to import: only for the small references that need it

            p_value = float(ks_2samp(reference_sample[c].dropna().to_numpy(), cur).pvalue)
            result.update(method="K-S p_value", statistic=p_value, threshold=KS_ALPHA, drifted=p_value < KS_ALPHA)
        elif few_values:
            js = _js(s["values"], cur)
            result.update(method="Jensen-Shannon distance", statistic=js, threshold=JS_THRESHOLD,
                          drifted=js >= JS_THRESHOLD)
        else:
            result.update(method="Wasserstein distance (normed)", statistic=w_norm, threshold=W_THRESHOLD,
                          drifted=w_norm >= W_THRESHOLD)
        out[c] = result
    return out


def evidently_report(reference: Any, current: Any, out_dir: Path) -> tuple[Path, Path, dict[str, bool]]:
    """Evidently's DataDriftPreset on the same columns: HTML and JSON for the record, and its verdicts."""
    import json

    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()]).run(current, reference)
    html, js = out_dir / "evidently.html", out_dir / "evidently.json"
    snapshot.save_html(str(html))
    data = snapshot.dict()
    js.write_text(json.dumps(data, default=str))
    verdicts = {}
    for metric in data["metrics"]:
        cfg = metric.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            value, threshold, method = metric["value"], cfg["threshold"], cfg["method"]
            verdicts[cfg["column"]] = bool(value < threshold if "p_value" in method else value >= threshold)
    return html, js, verdicts


# --- the check ------------------------------------------------------------------------------------

def production_version(session: Session, name: str) -> ModelVersion:
    mv = session.execute(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == "production")
                         ).scalars().first()
    if mv is None:
        known = session.execute(select(ModelVersion.id).where(ModelVersion.name == name)).first()
        raise NotFound(f"no model called {name!r}" if known is None else f"no version of {name!r} is in production",
                       hint="`cvg models list` shows the registry")
    return mv


def production_params(*, session: Session, name: str) -> dict[str, Any]:
    """The registry params of NAME's production version (a retraining run reuses its config), once the
    ledger confirms that version is the one in production."""
    mv = production_version(session, name)
    check_recorded(session=session, version=mv)
    return dict(mv.params or {})


def production_family(*, session: Session, name: str) -> str:
    """The model family of NAME's production version (a retraining run runs that family's pipeline)."""
    return production_version(session, name).family


def served_as(session: Session, mv: ModelVersion) -> list[int]:
    """The versions whose answers are ``mv``'s: it and its compiled and INT8 copies (serving may pick one)."""
    copies = session.execute(select(ModelVersion.id).where(ModelVersion.parent_id == mv.id,
                                                           ModelVersion.role.in_(("compiled", "quantized")))).scalars()
    return [mv.id, *copies]


def check_drift(*, session: Session, principal: Principal, name: str, since: dt.datetime, until: dt.datetime,
                evidently: bool = True) -> tuple[DriftReport, list[Any]]:
    """Compare the window with the production version's profile, store the report, raise alerts and
    queue their webhooks — all in the caller's transaction. Returns the report and the new alerts."""
    from convergence.governance._webhooks import enqueue

    require(session=session, principal=principal, permission="drift.check", subject=Subject("model", name))
    if since >= until:
        raise InvalidInput("the window is empty: --since must be before --until")
    mv = production_version(session, name)
    profile = session.execute(select(ReferenceProfile).where(ReferenceProfile.model_version_id == mv.id)
                              ).scalar_one_or_none()
    if profile is None:
        raise NotFound(f"version {mv.id} of {name} has no reference profile",
                       hint="versions registered by the pipelines carry one (a language version registered before "
                            "language monitoring existed has none: its retraining run registers one that does)")
    current = window_matrix(session, profile, since, until, served_as(session, mv))
    small = min(s["n"] for s in profile.stats.values()) <= 1000  # a column the K-S test judges needs the sample
    sample = reference_sample(profile) if evidently or small else None
    results = fast_drift(profile.stats, profile.columns, current, sample)
    html_uri = json_uri = None
    measured = [c for c, r in results.items() if r["rows"]]  # a column the window never measured: not Evidently's
    if evidently and measured:
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            frame = pd.DataFrame(current.astype(np.float64), columns=profile.columns)[measured]
            html, js, verdicts = evidently_report(sample[measured], frame, Path(tmp))
            store = get_artifact_store()
            html_uri, json_uri = store.put(html).uri, store.put(js).uri
        for column, verdict in verdicts.items():
            if column in results:
                results[column]["evidently_drifted"] = verdict
    drifted = [c for c, r in results.items() if r["drifted"]]
    share = len(drifted) / max(len(measured), 1)  # of the columns this window measured
    severity = None if not drifted else "critical" if share >= get_settings().drift_critical_share else "warning"
    serialize_writes(session=session)
    report = DriftReport(model_version_id=mv.id, window_start=since, window_end=until, rows=len(current),
                         columns=results, drift_share=share, drifted=bool(drifted), severity=severity,
                         evidently_html_uri=html_uri, evidently_json_uri=json_uri, created_at=utcnow(),
                         created_by=principal.name)
    session.add(report)
    session.flush()
    append(session=session, principal=principal, action="drift.checked", subject=Subject("drift_report", str(report.id)),
           payload={"model_version_id": mv.id, "rows": len(current), "drift_share": share, "drifted": drifted,
                    "window": [since.isoformat(), until.isoformat()]})
    new_alerts = []
    for column in drifted:
        r = results[column]
        alert, created = raise_alert(
            session=session, principal=principal, kind="drift", severity=severity or "warning",
            dedupe_key=f"drift:{mv.id}:{column}", subject=Subject("model_version", str(mv.id)),
            message=f"{name} v{mv.version}: {column} drifted ({r['method']} {r['statistic']:.3g}, "
                    f"threshold {r['threshold']})",
            payload={"column": column, "report_id": report.id, **{k: r[k] for k in ("method", "statistic", "threshold")}},
            cooldown_s=get_settings().drift_cooldown_s)
        if created:
            new_alerts.append(alert)
            enqueue(session=session, event_type="drift.alert", data={
                "alert_id": alert.id, "model": name, "model_version_id": mv.id, "column": column,
                "severity": alert.severity, "message": alert.message, "report_id": report.id,
                "drift_share": share})
    return report, new_alerts


def log_predictions(*, session: Session, model_version_id: int, rows: list[tuple[Any, ...]]) -> int:
    """Batch-write predictions (prediction id, time, features, output, latency ms[, killed[, shadow]]); used by
    serving. Features given as a numpy array are stored as float32 bytes, a list as JSON; ``killed`` flags an
    answer given by a kill switch's safe output rather than the model, ``shadow`` one never returned."""
    from sqlalchemy import insert

    if not rows:
        return 0
    if all(isinstance(r[2], np.ndarray) for r in rows) and _insert_binary(session, model_version_id, rows):
        return len(rows)
    session.execute(insert(PredictionLog), [
        {"prediction_id": pid, "model_version_id": model_version_id, "ts": ts, "output": float(o), "latency_ms": lat,
         "killed": bool(flags and flags[0]), "shadow": bool(len(flags) > 1 and flags[1]),
         **({"features": None, "features_f32": encode_log(f)} if isinstance(f, np.ndarray)
            else {"features": list(map(float, f)), "features_f32": None})}
        for pid, ts, f, o, lat, *flags in rows])
    return len(rows)


def _insert_binary(session: Session, model_version_id: int, rows: list[Any]) -> bool:
    """The serving hot path: one DBAPI executemany (5 µs a row against the ORM's 15, and the flush holds
    the server's GIL that long). False for a driver whose parameter style is not handled here."""
    conn = session.connection()
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:
        return False
    sqlite = conn.dialect.name == "sqlite"
    seconds: dict[int, str] = {}

    def ts(value: dt.datetime) -> Any:
        """The storage UTCDateTime uses: naive UTC text on SQLite ("%Y-%m-%d %H:%M:%S.%f"), the second's text
        made once (strftime per row was half of a row's cost, paid while the flush holds the GIL)."""
        utc = value.astimezone(dt.timezone.utc)
        if not sqlite:
            return utc
        second = math.floor(utc.timestamp())
        if (text := seconds.get(second)) is None:
            text = seconds[second] = utc.strftime("%Y-%m-%d %H:%M:%S")
        return f"{text}.{utc.microsecond:06d}"

    sql = ("INSERT INTO prediction_log (prediction_id, model_version_id, ts, features, features_f32, output, "
           f"latency_ms, killed, shadow) VALUES ({mark}, {mark}, {mark}, NULL, {mark}, {mark}, {mark}, {mark}, {mark})")
    conn.exec_driver_sql(sql, [(pid, model_version_id, ts(at), encode_log(f), float(o),
                                None if lat is None else float(lat), bool(flags and flags[0]),
                                bool(len(flags) > 1 and flags[1]))
                               for pid, at, f, o, lat, *flags in rows])
    return True


def drift_history(*, session: Session, name: str, limit: int = 50) -> list[DriftReport]:
    ids = select(ModelVersion.id).where(ModelVersion.name == name)
    reports = list(session.execute(select(DriftReport).where(DriftReport.model_version_id.in_(ids))
                                   .order_by(DriftReport.id.desc()).limit(limit)).scalars())
    if not reports and session.execute(ids).first() is None:
        raise NotFound(f"no model called {name!r}")
    return reports


def report_html_blob(report: DriftReport) -> Path | None:
    """The stored Evidently HTML of ``report``, fetched from the store and checked against its name (the store is
    content-addressed: the blob's file name is its SHA-256); None when the check ran without Evidently."""
    if not report.evidently_html_uri:
        return None
    return get_artifact_store().fetch(report.evidently_html_uri, sha256=report.evidently_html_uri.rsplit("/", 1)[-1])


def report_html_path(report: DriftReport) -> Path | None:
    """A readable copy of the Evidently HTML (CVG_HOME/reports/drift-ID-SHA.html) for a person to open."""
    blob = report_html_blob(report)
    if blob is None:
        return None
    import shutil

    sha = blob.name
    # Named by the report and its blob: a report id reused after retention never finds another's copy.
    target = get_settings().home / "reports" / f"drift-{report.id}-{sha[:16]}.html"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, target)
    return target


def report_to_dict(report: DriftReport) -> dict[str, Any]:
    html = report_html_path(report)
    return {"id": report.id, "model_version_id": report.model_version_id,
            "window_start": report.window_start.isoformat(), "window_end": report.window_end.isoformat(),
            "rows": report.rows, "drift_share": report.drift_share, "drifted": report.drifted,
            "severity": report.severity, "columns": report.columns, "html_report": str(html) if html else None,
            "evidently_html": report.evidently_html_uri, "evidently_json": report.evidently_json_uri,
            "created_at": report.created_at.isoformat(), "created_by": report.created_by}


def get_report(*, session: Session, report_id: int) -> DriftReport:
    report = session.get(DriftReport, report_id)
    if report is None:
        raise NotFound(f"no drift report with id {report_id}")
    return report
