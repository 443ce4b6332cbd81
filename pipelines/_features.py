"""Bars, features and labels from trade prints, strictly causal.

A bar's features use only ticks up to that bar's last tick; the label is the forward log return
over ``horizon`` bars. Time splits put an embargo of ``horizon`` rows between training and test
so no training label looks into the test period.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from convergence.platform.errors import InvalidInput


def make_bars(frame: Any, kind: str, size: float) -> Any:
    """Aggregate ticks into time (seconds), volume (contracts) or dollar bars."""
    import pandas as pd

    price, volume = frame["Price"].to_numpy(), frame["Volume"].to_numpy()
    if kind == "time":
        ns = frame["DateTime"].astype("int64").to_numpy()
        key = ns // int(size * 1e9)
    elif kind == "volume":
        key = (np.cumsum(volume) - volume) // size  # a tick belongs to the bar its first contract falls in
    elif kind == "dollar":
        dollars = price * volume
        key = (np.cumsum(dollars) - dollars) // size
    else:
        raise InvalidInput(f"unknown bar kind {kind!r}: use time, volume or dollar")
    # Tick rule: the sign of the last non-zero price change; the first tick counts as a buy.
    step = np.sign(np.diff(price, prepend=price[0]))
    sign = pd.Series(step).replace(0, np.nan).ffill().fillna(1.0).to_numpy()
    grouped = pd.DataFrame({"key": key, "time": frame["DateTime"].to_numpy(), "price": price, "volume": volume,
                            "signed": sign * volume}).groupby("key", sort=True)
    bars = pd.DataFrame({
        "end_time": grouped["time"].last(), "open": grouped["price"].first(), "high": grouped["price"].max(),
        "low": grouped["price"].min(), "close": grouped["price"].last(), "volume": grouped["volume"].sum(),
        "trades": grouped["price"].size(), "signed_volume": grouped["signed"].sum(),
    }).reset_index(drop=True)
    return bars


def bar_features(bars: Any, lags: tuple[int, ...], vol_windows: tuple[int, ...]) -> tuple[Any, list[str]]:
    """Per-bar features from bars up to and including each bar (rolling windows look back only)."""
    import pandas as pd

    logc = np.log(bars["close"].to_numpy())
    r1 = pd.Series(np.diff(logc, prepend=np.nan))
    out: dict[str, Any] = {}
    for k in lags:
        out[f"ret_{k}"] = pd.Series(logc).diff(k)
    for w in vol_windows:
        out[f"rvol_{w}"] = r1.rolling(w).std(ddof=0)
    out["imbalance"] = bars["signed_volume"] / bars["volume"]
    out["imbalance_5"] = bars["signed_volume"].rolling(5).sum() / bars["volume"].rolling(5).sum()
    out["log_volume"] = np.log(bars["volume"])
    out["log_trades"] = np.log(bars["trades"])
    seconds = bars["end_time"].diff().dt.total_seconds()
    out["log_duration"] = np.log(seconds.clip(lower=0) + 1e-3)
    out["range"] = np.log(bars["high"] / bars["low"])
    feats = pd.DataFrame(out)
    return feats, list(feats.columns)


@dataclasses.dataclass
class FeatureSet:
    """Model-ready rows: X is (n, window × features), y the forward return, next_ret the 1-bar return."""

    X: np.ndarray
    y: np.ndarray
    next_ret: np.ndarray
    times: np.ndarray  # end time of each row's bar (datetime64[ns])
    label_end: np.ndarray  # end time of the bar each label reaches
    feature_names: list[str]
    window: int
    horizon: int
    bars: int

    def __len__(self) -> int:
        return len(self.y)


def build_features(frame: Any, *, bar: str, bar_size: float, lags: tuple[int, ...], vol_windows: tuple[int, ...],
                   window: int, horizon: int) -> FeatureSet:
    bars = make_bars(frame, bar, bar_size)
    feats, names = bar_features(bars, lags, vol_windows)
    n = len(bars)
    warmup = max(max(lags), max(vol_windows), 5)
    first = warmup + window - 1
    last = n - horizon - 1  # the last row whose label exists
    if last < first:
        raise InvalidInput(f"{n} bars are too few for window {window}, warm-up {warmup} and horizon {horizon}: "
                           f"use smaller bars, a shorter horizon or more data")
    values = feats.to_numpy(dtype=np.float64)
    if not np.isfinite(values[warmup:]).all():
        raise InvalidInput("features contain non-finite values after the warm-up; check the tick data")
    logc = np.log(bars["close"].to_numpy())
    rows = np.arange(first, last + 1)
    # Row t sees feature rows t-window+1 .. t: a strided view, copied once into float32.
    windows = np.lib.stride_tricks.sliding_window_view(values, (window, values.shape[1]))[:, 0]
    X = windows[rows - window + 1].reshape(len(rows), -1).astype(np.float32)
    y = (logc[rows + horizon] - logc[rows]).astype(np.float32)
    next_ret = (logc[rows + 1] - logc[rows]).astype(np.float32)
    end = bars["end_time"].to_numpy()
    return FeatureSet(X, y, next_ret, end[rows], end[rows + horizon], names, window, horizon, n)


def time_folds(n: int, folds: int, holdout_fraction: float, horizon: int) -> tuple[list[tuple[range, range]], tuple[range, range]]:
    """Walk-forward folds (expanding train, next block as test) before a final holdout.

    Every train range ends ``horizon`` rows before its test range starts (embargo)."""
    holdout_start = int(n * (1 - holdout_fraction))
    if holdout_start - horizon < 2 * (folds + 1) or n - holdout_start < 2:
        raise InvalidInput(f"{n} rows are too few for {folds} folds and a {holdout_fraction:.0%} holdout")
    block = holdout_start // (folds + 1)
    out = []
    for k in range(1, folds + 1):
        test = range(k * block, (k + 1) * block if k < folds else holdout_start)
        out.append((range(0, max(test.start - horizon, 1)), test))
    return out, (range(0, holdout_start - horizon), range(holdout_start, n))


def standardize(X: np.ndarray, train: range) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training rows only (std floored to avoid division by ~0)."""
    mean = X[train.start:train.stop].mean(axis=0)
    std = X[train.start:train.stop].std(axis=0)
    return mean.astype(np.float32), np.maximum(std, 1e-8).astype(np.float32)
