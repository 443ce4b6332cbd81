"""Trading configuration: strict keys, clear errors, JSON and TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from convergence.pipelines import load_config, parse_config
from convergence.platform.errors import InvalidInput, NotFound


def test_defaults_and_nested_overrides(tmp_path: Path) -> None:
    cfg = parse_config({})
    assert cfg.features.bar == "volume" and cfg.model.workers == 2 and cfg.gates.min_fidelity == 0.95
    path = tmp_path / "c.toml"
    path.write_text('seed = 3\n[eval]\nfolds = 3\n')
    cfg = load_config(path, {"eval": {"cost_bps": 1.0}})
    assert (cfg.seed, cfg.eval.folds, cfg.eval.cost_bps) == (3, 3, 1.0)


@pytest.mark.parametrize("data,fragment", [
    ({"modle": {}}, "modle: unknown key"),
    ({"model": {"epochs": 0}}, "model.epochs"),
    ({"features": {"bar": "renko"}}, "features.bar"),
    ({"features": {"lags": []}}, "lags"),
    ({"eval": {"holdout_fraction": 1.5}}, "eval.holdout_fraction"),
])
def test_bad_configs_are_named(data, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment.replace(".", r"\.")):
        parse_config(data)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_config(bad)
