"""The replica's helpers: Prometheus text, the batched prediction logger (and what it does when the
database is away), and the kill watcher's memory of the last good state."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.serving._runtime import KillWatcher, Metrics, PredictionLogger
from tests.people import person


def test_metrics_render_counters_gauges_and_cumulative_histograms() -> None:
    m = Metrics()
    m.inc("predictions_total", 3, version_id="7")
    m.set("queue_depth", 2)
    for v in (0.0004, 0.003, 0.003, 9.0):
        m.observe("latency_seconds", v, Metrics.LATENCY_BUCKETS)
    text = m.render()
    assert 'cvg_serving_predictions_total{version_id="7"} 3' in text and "cvg_serving_queue_depth 2" in text
    assert 'cvg_serving_latency_seconds_bucket{le="0.0005"} 1' in text
    assert 'cvg_serving_latency_seconds_bucket{le="0.005"} 3' in text
    assert 'cvg_serving_latency_seconds_bucket{le="+Inf"} 4' in text and "cvg_serving_latency_seconds_count 4" in text


@pytest.fixture
def version(db_url: str, model_file: Path) -> int:
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("q"), name="m", artifact=model_file, family="trading",
                                  role="student").id


def test_logger_writes_batches_with_the_version_and_samples(version: int) -> None:
    import numpy as np

    logger = PredictionLogger(version, sample=1.0, flush_s=10, max_rows=3)
    logger.add(["a0", "a1"], [[0.5], [1.5]], [1.0, 3.0], 0.1)  # JSON lists
    X = np.arange(10, dtype=np.float32).reshape(5, 2) / 3  # binary float32 rows
    logger.add([f"b{i}" for i in range(5)], X, X.sum(axis=1), 0.2)
    assert [logger.flush(), logger.flush(), logger.flush()] == [3, 3, 1] and logger.flush() == 0
    with session_scope(write=False) as s:
        rows = s.query(gov.PredictionLog).order_by(gov.PredictionLog.id).all()
    assert [r.prediction_id for r in rows] == ["a0", "a1", "b0", "b1", "b2", "b3", "b4"]
    assert rows[0].features == [0.5] and rows[0].features_f32 is None
    assert rows[-1].features is None and rows[-1].vector == X[4].tolist()  # float32 exactly
    assert {r.model_version_id for r in rows} == {version} and rows[-1].output == float(X[4].sum())
    none = PredictionLogger(version, sample=0.0, flush_s=10)
    none.add(["x"], [[1.0]], [1.0], 0.1)
    assert none.flush() == 0


def test_logger_and_watcher_survive_a_database_that_went_away(version: int, monkeypatch) -> None:
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    with session_scope() as s:
        gov.kill(session=s, name="m", reason="stop", principal=person("risk"))
    watcher = KillWatcher(0.05)
    watcher.poll()
    assert watcher.state("m")["reason"] == "stop"
    logger = PredictionLogger(version, sample=1.0, flush_s=10)
    logger.add(["lost"], [[1.0]], [1.0], 0.1)
    monkeypatch.setenv("CVG_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    dispose_engines()
    watcher.start()
    watcher.stop.wait(0.3)
    watcher.stop.set()
    assert watcher.state("m")["reason"] == "stop"  # the last known state holds: a killed model stays killed
    assert logger.flush() == 0 and logger.failed == 1  # counted, not half-written


def test_usage_recorder_attributes_compute_to_the_version_with_its_predictions(version: int) -> None:
    from convergence.serving._runtime import UsageRecorder

    served = [0]
    recorder = UsageRecorder(version, "trading", lambda: served[0], interval_s=60)
    recorder.record()  # starts the meter
    sum(i * i for i in range(300_000))  # some real CPU work to meter
    served[0] = 1500
    recorder.record()
    served[0] = 1600
    recorder.record()
    with session_scope(write=False) as s:
        rows = s.query(gov.Usage).filter_by(model_version_id=version).order_by(gov.Usage.id).all()
    assert [r.predictions for r in rows] == [1500, 100] and rows[0].cpu_s > 0 and rows[0].family == "trading"


def test_a_flush_is_written_in_small_pieces_inside_one_transaction(version: int, monkeypatch) -> None:
    """Pieces keep the GIL free for requests; the transaction keeps a flush all-or-nothing: a piece the database
    refuses takes the pieces before it with it, and every row taken is counted as lost."""
    import numpy as np

    from convergence import governance

    calls: list[int] = []
    real = governance.log_predictions

    def counted(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(kwargs["rows"]))
        if kwargs["rows"][0][0] == "refused":
            raise ValueError("the database refused a row")
        return real(**kwargs)

    monkeypatch.setattr(governance, "log_predictions", counted)
    logger = PredictionLogger(version, sample=1.0, flush_s=10, max_rows=5, piece_rows=2)
    X = np.ones((7, 2), dtype=np.float32)
    logger.add([f"p{i}" for i in range(7)], X, X.sum(axis=1), 0.1)
    assert logger.flush() == 5 and calls == [2, 2, 1]  # max_rows per flush, in pieces of piece_rows
    assert logger.flush() == 2 and logger.flush() == 0 and logger.written == 7
    calls.clear()
    logger.add(["ok0", "ok1", "refused"], X[:3], X[:3].sum(axis=1), 0.1)
    assert logger.flush() == 0 and calls == [2, 1] and logger.failed == 3
    with session_scope(write=False) as s:
        ids = {r.prediction_id for r in s.query(gov.PredictionLog).all()}
    assert ids == {f"p{i}" for i in range(7)}  # ok0 and ok1 went back with the refused piece
