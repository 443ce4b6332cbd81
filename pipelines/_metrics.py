"""Out-of-sample trading metrics: IC, hit rate, a long/short rule after costs, drawdown, fidelity."""

from __future__ import annotations

import math

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _pnl(pred: np.ndarray, next_ret: np.ndarray, cost_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold sign(prediction) for one bar; pay cost_bps per unit of position change → (net pnl, turnover)."""
    position = np.sign(pred)
    turnover = np.abs(np.diff(position, prepend=0.0))
    return position * next_ret - turnover * cost_bps * 1e-4, turnover


def equity_curve(pred: np.ndarray, next_ret: np.ndarray, *, cost_bps: float, points: int = 60) -> list[float]:
    """The long-short strategy's cumulative net return at ``points`` evenly spaced bars (the model card's plot)."""
    equity = np.cumsum(_pnl(pred, next_ret, cost_bps)[0])
    if not len(equity):
        return []
    at = np.unique(np.linspace(0, len(equity) - 1, min(points, len(equity))).round().astype(int))
    return [round(float(equity[i]), 8) for i in at]


def long_short(pred: np.ndarray, next_ret: np.ndarray, *, cost_bps: float, periods_per_year: float) -> dict[str, float]:
    """Hold sign(prediction) for one bar; pay cost_bps per unit of position change."""
    pnl, turnover = _pnl(pred, next_ret, cost_bps)
    sd = pnl.std()
    sharpe = float(pnl.mean() / sd * math.sqrt(periods_per_year)) if sd > 0 else 0.0
    equity = np.cumsum(pnl)
    drawdown = float((np.maximum.accumulate(np.concatenate([[0.0], equity]))[1:] - equity).max()) if len(pnl) else 0.0
    return {"sharpe": sharpe, "max_drawdown": drawdown, "turnover": float(turnover.mean()),
            "total_return": float(equity[-1]) if len(pnl) else 0.0}


def evaluate(pred: np.ndarray, y: np.ndarray, next_ret: np.ndarray, *, cost_bps: float,
             periods_per_year: float) -> dict[str, float]:
    nonzero = y != 0
    hit = float((np.sign(pred[nonzero]) == np.sign(y[nonzero])).mean()) if nonzero.any() else 0.0
    out = {"mse": float(np.mean((pred - y) ** 2)), "ic": spearman(pred, y), "hit_rate": hit}
    out.update(long_short(pred, next_ret, cost_bps=cost_bps, periods_per_year=periods_per_year))
    return out


def periods_per_year(times: np.ndarray) -> float:
    """Bars per year, from the bars per trading day seen in the data (252 trading days)."""
    if len(times) < 2:
        return 252.0
    days = (times[-1] - times[0]) / np.timedelta64(1, "D")
    return float(len(times) / max(days, 1 / 24) * 252)
