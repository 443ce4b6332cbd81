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


def test_language_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = parse_config({}, "language")
    assert cfg.teacher.layers > cfg.student.layers and cfg.gates.max_ppl_ratio == 1.2
    path = tmp_path / "lm.toml"
    path.write_text('seed = 11\n[train]\nteacher_steps = 5\n')
    cfg = load_config(path, {"student": {"d_model": 64, "layers": 1, "heads": 2}}, "language")
    assert (cfg.seed, cfg.train.teacher_steps, cfg.student.d_model) == (11, 5, 64)


@pytest.mark.parametrize("data,fragment", [
    ({"tokenizr": {}}, "tokenizr: unknown key"),
    ({"train": {"warmpu_steps": 3}}, "train.warmpu_steps: unknown key"),
    ({"student": {"d_model": 256, "layers": 2, "heads": 2}}, "must be smaller than the teacher"),
    ({"student": {"d_model": 96, "layers": 8, "heads": 2}}, "must be smaller than the teacher"),
    ({"student": {"d_model": 192, "layers": 6, "heads": 6}}, "must be smaller than the teacher"),
    ({"teacher": {"d_model": 100, "layers": 4, "heads": 3}}, "divisible by heads"),
    ({"tokenizer": {"vocab_size": 10}}, "tokenizer.vocab_size"),
    ({"corpus": {"holdout_from_year": 1700}}, "corpus.holdout_from_year"),
])
def test_bad_language_configs_are_named(data, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=r"invalid language config: .*" + fragment.replace(".", r"\.")):
        parse_config(data, "language")


def test_unknown_family() -> None:
    with pytest.raises(InvalidInput, match="unknown pipeline family 'vision'"):
        parse_config({}, "vision")
