"""Trading metrics on hand-made series (synthetic, with known answers)."""

from __future__ import annotations

import numpy as np

from convergence.pipelines._metrics import evaluate, long_short, pearson, spearman


def test_rank_and_linear_correlation() -> None:
    a = np.array([1.0, 2, 3, 4, 5])
    assert abs(spearman(a, a ** 3) - 1.0) < 1e-12 and abs(pearson(a, -a) + 1.0) < 1e-12
    assert spearman(a, np.ones(5)) == 0.0  # constant input: no information, not NaN


def test_long_short_pays_costs_on_position_changes() -> None:
    pred = np.array([1.0, 1.0, -1.0, -1.0])
    ret = np.array([0.01, 0.01, -0.01, -0.01])
    free = long_short(pred, ret, cost_bps=0.0, periods_per_year=252)
    costly = long_short(pred, ret, cost_bps=10.0, periods_per_year=252)
    assert free["total_return"] == 0.04 and free["max_drawdown"] == 0.0
    # turnover: enter long (1), flip to short (2) → 3 units × 10 bps
    assert abs(costly["total_return"] - (0.04 - 3 * 0.001)) < 1e-12 and costly["turnover"] == 0.75


def test_evaluate_reports_hit_rate_and_drawdown() -> None:
    pred = np.array([1.0, -1.0, 1.0, 1.0])
    y = np.array([0.02, 0.01, -0.03, 0.01])
    m = evaluate(pred, y, y, cost_bps=0.0, periods_per_year=252)
    assert m["hit_rate"] == 0.5 and abs(m["max_drawdown"] - 0.04) < 1e-12
