"""Drift at volume: the window read in bulk (float32 blocks, server-side cursors, only the watched bytes) gives
the fast path's exact statistics, reads only its hour through the index, and refuses a log that lacks columns."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sqlalchemy import text

from convergence import governance as gov
from convergence.governance._drift import fast_drift
from convergence.governance._driftlog import contiguous, window_matrix, window_query, window_where
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput
from tests.people import person

UTC = dt.timezone.utc
HOUR = dt.datetime(2026, 12, 1, 12, tzinfo=UTC)


def _log(version: int, X: np.ndarray, y: np.ndarray, start: dt.datetime, *, span_s: float = 3000.0,
         killed: bool = False, prefix: str = "") -> None:
    """Log rows as serving does (float32 bytes), spread over ``span_s`` seconds from ``start``."""
    step = span_s / max(len(X), 1)
    for lo in range(0, len(X), 20_000):
        rows = [(f"{prefix}{start.timestamp()}-{i}", start + dt.timedelta(seconds=i * step), X[i], float(y[i]), 0.2,
                 killed) for i in range(lo, min(lo + 20_000, len(X)))]
        with session_scope() as s:
            gov.log_predictions(session=s, model_version_id=version, rows=rows)


def test_a_100k_row_window_gives_the_fast_paths_verdicts_and_statistics(wide_production: int) -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(0, 1, (100_000, 208)).astype(np.float32)
    X[:, 182:188] += 0.4  # six watched columns drift; the other twenty do not
    y = rng.normal(0, 1, 100_000).astype(np.float32)
    _log(wide_production, X, y, HOUR)
    # around it: the hours before and after, and a kill switch's answers inside it, none of them in the window
    _log(wide_production, X[:3000] + 5, y[:3000], HOUR - dt.timedelta(hours=1), prefix="before-")
    _log(wide_production, X[:3000] + 5, y[:3000], HOUR + dt.timedelta(hours=1), prefix="after-")
    _log(wide_production, X[:500] + 5, y[:500], HOUR, killed=True, prefix="killed-")
    with session_scope() as s:
        report, _ = gov.check_drift(session=s, principal=person("monitor"), name="wide", since=HOUR,
                                    until=HOUR + dt.timedelta(hours=1), evidently=False)
        profile = s.query(gov.ReferenceProfile).filter_by(model_version_id=wide_production).one()
        stats, columns = profile.stats, list(profile.columns)
        got = {c: dict(r) for c, r in report.columns.items()}
        rows = report.rows
    expected = fast_drift(stats, columns, np.column_stack([X[:, 182:208], y]))  # the same arrays, in memory
    assert rows == 100_000
    assert {c: r["drifted"] for c, r in got.items()} == {c: r["drifted"] for c, r in expected.items()}
    assert sorted(c for c, r in got.items() if r["drifted"]) == [f"f{p}" for p in range(182, 188)]
    for c in columns:
        for key in ("statistic", "wasserstein_normed", "psi", "ks_statistic", "current_mean"):
            assert got[c][key] == pytest.approx(expected[c][key], rel=1e-9, abs=1e-12), (c, key)


def test_scattered_positions_and_json_rows_read_the_same_columns(wide_production: int) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (300, 208)).astype(np.float32)
    y = rng.normal(0, 1, 300).astype(np.float32)
    _log(wide_production, X[:200], y[:200], HOUR, span_s=100)
    rows = [(f"json-{i}", HOUR + dt.timedelta(seconds=200 + i), [float(v) for v in X[i]], float(y[i]), 0.2)
            for i in range(200, 300)]
    with session_scope() as s:
        gov.log_predictions(session=s, model_version_id=wide_production, rows=rows)
    with session_scope(write=False) as s:
        profile = s.query(gov.ReferenceProfile).filter_by(model_version_id=wide_production).one()
        contiguous_read = window_matrix(s, profile, HOUR, HOUR + dt.timedelta(hours=1))
        profile.positions = [0, 207, 5, -1]  # not one run: whole blobs are read and picked apart
        scattered = window_matrix(s, profile, HOUR, HOUR + dt.timedelta(hours=1))
        s.rollback()
    np.testing.assert_array_equal(contiguous_read, np.column_stack([X[:, 182:208], y]))
    np.testing.assert_array_equal(scattered, np.column_stack([X[:, [0, 207, 5]], y]))


def test_a_log_without_the_watched_columns_is_one_clear_refusal(wide_production: int) -> None:
    X = np.ones((10, 100), np.float32)  # another model's 100-feature rows logged under this version
    _log(wide_production, X, np.ones(10), HOUR, span_s=10)
    with session_scope() as s, pytest.raises(InvalidInput, match="10 logged predictions have fewer than 208"):
        gov.check_drift(session=s, principal=person("monitor"), name="wide", since=HOUR,
                        until=HOUR + dt.timedelta(hours=1), evidently=False)


def test_one_hour_of_a_day_is_read_through_the_version_time_index(wide_production: int, backend: str) -> None:
    """The plan of the very statement the window runs: the (version, time) index bounds it to the hour."""
    rng = np.random.default_rng(5)
    day = HOUR.replace(hour=0)
    for h in range(24):
        _log(wide_production, rng.normal(0, 1, (1500, 208)).astype(np.float32), np.zeros(1500),
             day + dt.timedelta(hours=h), prefix=f"h{h}-")
    where = window_where([wide_production], HOUR, HOUR + dt.timedelta(hours=1))
    stmt = window_query(where, contiguous([*range(182, 208), -1]))
    with session_scope() as s:
        conn = s.connection()
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = compiled.params
        if backend == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}",
                                                                     tuple(params[k] for k in compiled.positiontup)))
            assert "USING INDEX ix_prediction_log_version_ts" in plan and "(model_version_id=? AND ts>? AND ts<?)" \
                in plan.replace(">=", ">"), plan
        else:
            conn.execute(text("ANALYZE prediction_log"))
            plan = " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}", params))
            assert "ix_prediction_log_version_ts" in plan and "Seq Scan" not in plan, plan
        assert s.execute(stmt).all().__len__() == 1500


def test_values_a_signature_did_not_measure_are_left_out_per_column() -> None:
    """NaN is "not measured" (a language request outside the greedy view): the column's statistics are the fast
    path's on its measured rows; a column with none measured does not drift."""
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (3000, 3))
    from convergence.governance._drift import column_stats

    stats = {c: column_stats(ref[:, i]) for i, c in enumerate("abc")}
    cur = rng.normal(0.5, 1, (2000, 3)).astype(np.float32)
    cur[::3, 1] = np.nan
    cur[:, 2] = np.nan
    got = fast_drift(stats, list("abc"), cur)
    alone = fast_drift({"b": stats["b"]}, ["b"], cur[~np.isnan(cur[:, 1]), 1][:, None])
    assert got["a"]["rows"] == 2000 and got["b"]["rows"] == 1333 and got["c"]["rows"] == 0
    assert got["b"]["statistic"] == pytest.approx(alone["b"]["statistic"]) and got["b"]["drifted"]
    assert not got["c"]["drifted"] and got["c"]["method"] == "not measured in this window"


def test_a_column_the_window_never_measured_is_left_out_of_evidently_and_the_share(wide_production: int) -> None:
    """A watched value logged as NaN on every row ("not measured"): Evidently is given the measured columns only
    (it refuses an empty one), and the drift share counts measured columns."""
    rng = np.random.default_rng(6)
    X = rng.normal(0, 1, (400, 208)).astype(np.float32)
    X[:, 182] = np.nan
    X[:, 183] += 3.0  # one measured column drifts
    _log(wide_production, X, rng.normal(0, 1, 400), HOUR, span_s=400)
    with session_scope() as s:
        report, _ = gov.check_drift(session=s, principal=person("monitor"), name="wide", since=HOUR,
                                    until=HOUR + dt.timedelta(hours=1), evidently=True)
        columns, share = report.columns, report.drift_share
    assert columns["f182"]["rows"] == 0 and not columns["f182"]["drifted"] and "evidently_drifted" not in columns["f182"]
    assert columns["f183"]["drifted"] and columns["f183"]["evidently_drifted"] is True
    assert share == pytest.approx(sum(r["drifted"] for r in columns.values()) / 26)  # 26 of 27 measured
