"""Pipeline fixtures: synthetic ticks for unit tests (labelled as such), small configs over the real
E-mini ticks and the real SOTU/Reuters text for integration tests, and one local Ray shared by the
whole test session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convergence.pipelines import parse_config

# Small enough for 2 cores in about half a minute, large enough that every step does real work.
SMALL = {
    "data": {"max_ticks": 60_000},
    "model": {"teacher_hidden": 64, "teacher_layers": 2, "student_hidden": 8, "epochs": 2, "student_epochs": 10,
              "workers": 2},
    "eval": {"folds": 2, "latency_repeats": 20},
}
LENIENT_GATES = {"min_fidelity": -1.0, "max_loss_ratio": 100.0, "min_speedup": 0.0, "max_int8_gap": 100.0}

# The language pipeline on the real corpora, shrunk until a run is mostly Ray Train's start-up.
TINY_LM = {
    "corpus": {"max_train_docs": 30},
    "tokenizer": {"vocab_size": 400},
    "teacher": {"d_model": 32, "layers": 2, "heads": 2},
    "student": {"d_model": 16, "layers": 1, "heads": 1},
    "train": {"context": 32, "teacher_steps": 8, "student_steps": 8, "batch_size": 4, "warmup_steps": 2},
    "eval": {"eval_tokens": 600, "gen_tokens": 4, "gen_repeats": 1, "batch": 2, "sample_tokens": 6},
}
LENIENT_LM_GATES = {"max_ppl_ratio": 100.0, "min_param_ratio": 0.0, "min_speedup": 0.0, "distill_must_help": False}


@pytest.fixture
def synthetic_ticks() -> pd.DataFrame:
    """SYNTHETIC trade prints (a random walk), for unit tests only."""
    rng = np.random.default_rng(0)
    n = 20_000
    times = pd.Timestamp("2024-01-02 09:30") + pd.to_timedelta(np.cumsum(rng.integers(1, 400, n)), unit="ms")
    price = 100 + np.cumsum(rng.choice([-0.25, 0, 0.25], n, p=[0.3, 0.4, 0.3]))
    return pd.DataFrame({"DateTime": times, "Price": price, "Volume": rng.integers(1, 20, n)})


@pytest.fixture
def small_config():  # type: ignore[no-untyped-def]
    return parse_config({**SMALL, "gates": LENIENT_GATES})


@pytest.fixture
def tiny_lm_config():  # type: ignore[no-untyped-def]
    return parse_config({**TINY_LM, "gates": LENIENT_LM_GATES}, "language")


@pytest.fixture(scope="session")
def ray_session():  # type: ignore[no-untyped-def]
    """One local Ray for every test that needs it (start-up is the cost on 2 cores)."""
    import ray

    from convergence.pipelines._runner import connect_ray

    connect_ray()
    yield ray
    ray.shutdown()
