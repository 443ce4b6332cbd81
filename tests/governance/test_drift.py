"""Drift: the fast path agrees with Evidently; checks store reports, alert once per cool-down, queue webhooks."""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.governance._drift import column_stats, evidently_report, fast_drift
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, NotFound
from tests.people import person

UTC = dt.timezone.utc
COLUMNS = ["ret_1", "rvol_5", "imbalance", "output"]


def synthetic(n: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """SYNTHETIC data (unit tests only): four normal columns, the first two shifted/scaled on request."""
    data = np.random.default_rng(seed).normal(0, 1, (n, len(COLUMNS)))
    data[:, 0] += shift
    data[:, 1] *= scale
    return data


@pytest.mark.parametrize("n_ref", [5000, 600])  # Wasserstein above 1,000 reference rows, K-S below
@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.6, 1.0), (0.0, 1.8), (0.6, 1.8)])
def test_fast_path_and_evidently_agree(n_ref: int, shift: float, scale: float) -> None:
    ref, cur = synthetic(n_ref, seed=1), synthetic(n_ref, shift, scale, seed=2)
    stats = {c: column_stats(ref[:, i]) for i, c in enumerate(COLUMNS)}
    ref_df = pd.DataFrame(ref, columns=COLUMNS)
    fast = fast_drift(stats, COLUMNS, cur, ref_df)
    with tempfile.TemporaryDirectory() as tmp:
        html, js, evidently = evidently_report(ref_df, pd.DataFrame(cur, columns=COLUMNS), Path(tmp))
        assert html.stat().st_size > 10_000 and js.exists()
    assert {c: fast[c]["drifted"] for c in COLUMNS} == evidently
    assert fast["ret_1"]["drifted"] == (shift > 0) and fast["rvol_5"]["drifted"] == (scale > 1)
    assert not fast["imbalance"]["drifted"] and not fast["output"]["drifted"]


def test_few_distinct_values_use_jensen_shannon() -> None:
    rng = np.random.default_rng(0)
    ref = rng.choice([0.0, 1.0, 2.0], size=(4000, 1), p=[0.6, 0.3, 0.1])
    same, moved = rng.choice([0.0, 1.0, 2.0], size=(4000, 1), p=[0.6, 0.3, 0.1]), np.full((4000, 1), 2.0)
    stats = {"side": column_stats(ref[:, 0])}
    assert fast_drift(stats, ["side"], same)["side"]["method"] == "Jensen-Shannon distance"
    assert not fast_drift(stats, ["side"], same)["side"]["drifted"] and fast_drift(stats, ["side"], moved)["side"]["drifted"]


@pytest.fixture
def production(db_url: str, model_file: Path, evidence_file: Path) -> int:
    """A promoted version with a SYNTHETIC reference profile over 6 logged features (monitoring 3 + output)."""
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name="alpha", artifact=model_file, family="trading",
                                role="student")
        gov.save_profile(session=s, model_version_id=mv.id, data=synthetic(5000), columns=COLUMNS, positions=[3, 4, 5, -1])
    with session_scope() as s:
        gov.validate(session=s, version_id=mv.id, principal=person("val"), evidence=evidence_file)
        gov.approve(session=s, version_id=mv.id, principal=person("boss"), reason="ok")
        gov.promote(session=s, version_id=mv.id, principal=person("ops"))
    return mv.id


def _log(version: int, data: np.ndarray, at: dt.datetime) -> None:
    rows = [(str(uuid.uuid4()), at + dt.timedelta(milliseconds=i), [9.0, 9.0, 9.0, *r[:3]], float(r[3]), 0.3)
            for i, r in enumerate(data)]
    with session_scope() as s:
        gov.log_predictions(session=s, model_version_id=version, rows=rows)


def test_check_stores_report_alerts_once_and_queues_webhooks(production: int) -> None:
    with session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/hook", events=["drift.alert"], secret="s3cret")
    t0 = dt.datetime(2026, 11, 1, tzinfo=UTC)
    _log(production, synthetic(3000, seed=5), t0)
    _log(production, synthetic(3000, shift=0.7, scale=2.0, seed=6), t0 + dt.timedelta(hours=1))
    with session_scope() as s:
        calm, alerts = gov.check_drift(session=s, name="alpha", since=t0, until=t0 + dt.timedelta(minutes=30),
                                       principal=person("monitor"), evidently=False)
        assert not calm.drifted and alerts == [] and calm.rows == 3000
    with session_scope() as s:
        report, alerts = gov.check_drift(session=s, name="alpha", since=t0 + dt.timedelta(hours=1),
                                         until=t0 + dt.timedelta(hours=2), principal=person("monitor"), evidently=True)
        assert report.drifted and report.drift_share == 0.5 and report.severity == "critical"
        assert sorted(a.payload["column"] for a in alerts) == ["ret_1", "rvol_5"]
        assert report.evidently_html_uri and report.columns["ret_1"]["evidently_drifted"] is True
    with session_scope() as s:  # the same drift again within the cool-down: counted, not re-raised
        _, again = gov.check_drift(session=s, name="alpha", since=t0 + dt.timedelta(hours=1),
                                   until=t0 + dt.timedelta(hours=2), principal=person("monitor"), evidently=False)
        assert again == []
    with session_scope(write=False) as s:
        rows = gov.list_alerts(session=s, kind="drift")
        assert len(rows) == 2 and {a.count for a in rows} == {2}
        deliveries = gov.list_deliveries(session=s)
        assert len(deliveries) == 2 and {d.status for d in deliveries} == {"pending"}
        assert len(gov.query_events(session=s, action="drift.checked")) == 3 and gov.verify(session=s).ok
        assert [r.id for r in gov.drift_history(session=s, name="alpha")] == [3, 2, 1]


def test_bad_input_is_refused_and_stores_nothing(production: int) -> None:
    t0 = dt.datetime(2026, 11, 1, tzinfo=UTC)
    with session_scope() as s:
        bad = [(str(uuid.uuid4()), t0, [1.0, 2.0], 0.1, None)]  # only 2 features: the profile reads positions 3–5
        gov.log_predictions(session=s, model_version_id=production, rows=bad)
    cases = [("nope", t0, t0 + dt.timedelta(hours=1), NotFound, "no model called"),
             ("alpha", t0 + dt.timedelta(days=1), t0 + dt.timedelta(days=2), InvalidInput, "no predictions"),
             ("alpha", t0, t0 + dt.timedelta(hours=1), InvalidInput, "lacks columns"),
             ("alpha", t0, t0, InvalidInput, "window is empty")]
    for name, since, until, error, match in cases:
        with pytest.raises(error, match=match), session_scope() as s:
            gov.check_drift(session=s, name=name, since=since, until=until, principal=person("monitor"), evidently=False)
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.DriftReport)).scalar() == 0
        assert s.execute(select(func.count()).select_from(gov.Alert)).scalar() == 0


def test_binary_and_json_logged_inputs_read_the_same(production: int) -> None:
    """Serving logs float32 bytes, replays log JSON lists: the drift window sees the same numbers."""
    from convergence.governance._drift import window_matrix

    data = synthetic(50).astype(np.float32)
    t0 = dt.datetime(2026, 11, 2, tzinfo=UTC)
    t1 = t0 + dt.timedelta(hours=1)
    _log(production, data.astype(np.float64), t0)
    rows = [(str(uuid.uuid4()), t1 + dt.timedelta(milliseconds=i), np.array([9.0, 9.0, 9.0, *r[:3]], np.float32),
             float(r[3]), 0.3) for i, r in enumerate(data)]
    with session_scope() as s:
        gov.log_predictions(session=s, model_version_id=production, rows=rows)
    with session_scope(write=False) as s:
        profile = s.query(gov.ReferenceProfile).filter_by(model_version_id=production).one()
        as_json = window_matrix(s, profile, t0, t0 + dt.timedelta(minutes=1))
        as_bytes = window_matrix(s, profile, t1, t1 + dt.timedelta(minutes=1))
    np.testing.assert_array_equal(as_json, as_bytes)
    np.testing.assert_array_equal(as_bytes, data)


def test_the_binary_log_path_stores_each_instant_exactly(production: int) -> None:
    """Serving's fast insert writes SQLite's timestamp text itself (the second's text made once per flush):
    whole seconds, a second boundary, another timezone and microseconds all read back as the same instant."""
    base = dt.datetime(2026, 12, 6, 23, 59, 59, 999_999, tzinfo=UTC)
    instants = [base, base + dt.timedelta(microseconds=1), dt.datetime(2026, 12, 7, 0, 0, tzinfo=UTC),
                base.astimezone(dt.timezone(dt.timedelta(hours=-5))) + dt.timedelta(seconds=2, microseconds=7)]
    rows = [(f"t-{i}", at, np.full(6, i, dtype=np.float32), float(i), 0.3) for i, at in enumerate(instants)]
    with session_scope() as s:
        gov.log_predictions(session=s, model_version_id=production, rows=rows)
    with session_scope(write=False) as s:
        stored = dict(s.execute(select(gov.PredictionLog.prediction_id, gov.PredictionLog.ts)
                                .where(gov.PredictionLog.prediction_id.like("t-%"))).all())
    assert [stored[f"t-{i}"] for i in range(len(instants))] == [at.astimezone(UTC) for at in instants]
