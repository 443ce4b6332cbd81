"""Tick loading and cleaning: the real E-mini file, and every repair counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convergence.pipelines._data import clean_ticks, es_ticks_path, load_ticks
from convergence.platform.errors import InvalidInput, NotFound


def test_real_es_ticks_ship_in_mlfinpy() -> None:
    ticks = load_ticks(max_ticks=5_000)
    assert es_ticks_path().name == "tick_data.csv"
    assert ticks.report["rows_out"] == 5_000 and ticks.frame["Price"].between(1500, 1800).all()
    assert ticks.describe()["span"][0].startswith("2013-09-01")
    assert ticks.report["duplicate_timestamps"] > 0  # trade prints share milliseconds


def test_cleaning_counts_every_repair(synthetic_ticks: pd.DataFrame) -> None:
    frame = synthetic_ticks.head(100).copy()
    frame.loc[3, "Price"] = np.nan
    frame.loc[5, "Volume"] = 0
    frame.loc[7, "DateTime"] = frame.loc[0, "DateTime"] - pd.Timedelta("1s")  # out of order
    ticks = clean_ticks(frame)
    assert ticks.report == {"rows_in": 100, "dropped_nan_or_unparsable": 1, "dropped_nonpositive": 1,
                            "reordered_out_of_order": 1, "duplicate_timestamps": 0, "rows_out": 98}
    assert ticks.frame["DateTime"].is_monotonic_increasing


def test_missing_columns_and_empty_data(synthetic_ticks: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="lacks column.*Volume"):
        clean_ticks(synthetic_ticks.drop(columns=["Volume"]))
    with pytest.raises(InvalidInput, match="empty"):
        clean_ticks(synthetic_ticks.head(0))
    csv = tmp_path / "ticks.csv"
    csv.write_text("DateTime,Price\n2024-01-01 00:00:00,1\n")
    with pytest.raises(InvalidInput, match="lacks column"):
        load_ticks(source="csv", path=str(csv))
    with pytest.raises(NotFound):
        load_ticks(source="csv", path=str(tmp_path / "none.csv"))
    with pytest.raises(InvalidInput, match="data.path"):
        load_ticks(source="csv")
