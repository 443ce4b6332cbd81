"""Bars and features: strictly causal, correctly aggregated, time splits that never overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convergence.pipelines._features import build_features, make_bars, time_folds
from convergence.platform.errors import InvalidInput

KW = {"lags": (1, 2, 5), "vol_windows": (5, 10), "window": 4, "horizon": 3}


@pytest.mark.parametrize("bar,size", [("time", 5.0), ("volume", 200), ("dollar", 20_000)])
def test_bars_conserve_volume_and_trades(synthetic_ticks: pd.DataFrame, bar: str, size: float) -> None:
    bars = make_bars(synthetic_ticks, bar, size)
    assert bars["volume"].sum() == synthetic_ticks["Volume"].sum()
    assert bars["trades"].sum() == len(synthetic_ticks)
    assert (bars["high"] >= bars["close"]).all() and (bars["low"] <= bars["open"]).all()
    assert bars["end_time"].is_monotonic_increasing and (bars["signed_volume"].abs() <= bars["volume"]).all()


@pytest.mark.parametrize("bar,size", [("time", 5.0), ("volume", 200)])
def test_features_are_causal(synthetic_ticks: pd.DataFrame, bar: str, size: float) -> None:
    base = build_features(synthetic_ticks, bar=bar, bar_size=size, **KW)
    cut = synthetic_ticks["DateTime"].iloc[len(synthetic_ticks) * 2 // 3]
    future = synthetic_ticks["DateTime"] > cut
    perturbed = synthetic_ticks.copy()
    perturbed.loc[future, "Price"] = perturbed.loc[future, "Price"] * 1.05 + 3.0
    perturbed.loc[future, "Volume"] = perturbed.loc[future, "Volume"] + 1
    other = build_features(perturbed, bar=bar, bar_size=size, **KW)
    past = base.times < np.datetime64(cut)
    # bars that closed before the cut keep exactly the same inputs...
    assert past.sum() > 100
    np.testing.assert_array_equal(base.X[past], other.X[: past.sum()])
    # ...while the labels that reach past the cut do change: the perturbation was real
    reaching = past & (base.label_end > np.datetime64(cut))
    assert reaching.any() and not np.allclose(base.y[reaching], other.y[: past.sum()][reaching[: past.sum()]])


def test_labels_are_forward_returns(synthetic_ticks: pd.DataFrame) -> None:
    fs = build_features(synthetic_ticks, bar="volume", bar_size=200, **KW)
    bars = make_bars(synthetic_ticks, "volume", 200)
    logc = np.log(bars["close"].to_numpy())
    first = len(logc) - KW["horizon"] - 1 - (len(fs) - 1)
    np.testing.assert_allclose(fs.y[0], logc[first + KW["horizon"]] - logc[first], rtol=1e-5)
    assert fs.X.shape[1] == KW["window"] * len(fs.feature_names)


def test_horizon_longer_than_the_data_is_refused(synthetic_ticks: pd.DataFrame) -> None:
    with pytest.raises(InvalidInput, match="too few"):
        build_features(synthetic_ticks.head(3000), bar="volume", bar_size=200, lags=(1,), vol_windows=(5,),
                       window=4, horizon=10_000)


def test_time_folds_never_overlap(synthetic_ticks: pd.DataFrame) -> None:
    fs = build_features(synthetic_ticks, bar="volume", bar_size=100, **KW)
    folds, (train, holdout) = time_folds(len(fs), 3, 0.2, KW["horizon"])
    for tr, te in [*folds, (train, holdout)]:
        assert tr.stop <= te.start - KW["horizon"]
        assert fs.label_end[tr.stop - 1] < fs.times[te.start]  # no training label sees the test period
    tests = [te for _, te in folds]
    assert all(a.stop <= b.start for a, b in zip(tests, tests[1:])) and tests[-1].stop <= holdout.start
    with pytest.raises(InvalidInput, match="too few"):
        time_folds(10, 5, 0.2, 3)
