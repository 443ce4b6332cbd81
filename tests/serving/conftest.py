"""Serving fixtures: a migrated SQLite database with small models registered and approved by the test
itself (SYNTHETIC weights: serving does not care how good a model is), and real BentoML servers on
localhost started through `cvg serve`, one per family per module (start-up is the cost on 2 cores)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.people import person

N_FEATURES = 8


def _approve(version_id: int, evidence: Path, promote: bool = True, safe_output: float | None = None) -> None:
    """Validate (val), approve (boss) and promote (ops) a version: three people, as separation of duties asks."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    val, boss, ops = person("val"), person("boss"), person("ops")
    with session_scope() as s:
        gov.validate(session=s, version_id=version_id, principal=val, evidence=evidence, reason="reviewed")
        gov.approve(session=s, version_id=version_id, principal=boss, reason="ok", safe_output=safe_output)
        if promote:
            gov.promote(session=s, version_id=version_id, principal=ops, reason="release")


def register_trading(tmp: Path, evidence: Path, *, name: str = "es-trading-student", stage: str = "production",
                     seed: int = 0) -> int:
    """A SYNTHETIC one-hidden-layer student with standardisation stats, registered and approved (another
    ``seed``: other weights, so other answers)."""
    import torch

    from convergence import governance as gov
    from convergence.pipelines import _nets as nets
    from convergence.platform.db import session_scope

    torch.manual_seed(seed)
    arch = {"n_in": N_FEATURES, "hidden": [16], "dropout": 0.0}
    rng = np.random.default_rng(0)
    path = nets.save_artifact(tmp / f"{name}-{time.time_ns()}.pt", net=nets.from_arch(arch), role="student", arch=arch,
                              quantized=False, mean=rng.normal(size=N_FEATURES), std=rng.uniform(0.5, 2, N_FEATURES),
                              y_scale=0.01, meta={"synthetic": True, "nonce": time.time_ns()})
    quant = person("quant")
    with session_scope() as s:
        version_id = gov.register_model(session=s, principal=quant, name=name, artifact=path, family="trading",
                                        role="student").id
    if stage != "candidate":
        _approve(version_id, evidence, promote=stage == "production", safe_output=0.0)
    return version_id


def register_language(tmp: Path, evidence: Path, *, stage: str = "production", seed: int = 0) -> int:
    """A random-initialised (SYNTHETIC weights; ``seed``) tiny GPT with a real BPE tokenizer, registered and
    approved."""
    import torch

    from convergence import governance as gov
    from convergence.pipelines import _lm as lm
    from convergence.pipelines._corpus import load_corpus
    from convergence.platform.db import session_scope

    corpus = load_corpus(holdout_from_year=2010, max_train_docs=5, reuters=False)
    tok = lm.train_tokenizer([d.text for d in corpus.train], vocab_size=300, min_frequency=2)
    spec = lm.arch(vocab=tok.get_vocab_size(), context=48, d_model=32, layers=2, heads=2)
    torch.manual_seed(seed)
    path = lm.save_artifact(tmp / f"lm-{seed}.pt", model=lm.build(spec), spec=spec, tokenizer=tok, role="student",
                            meta={})
    nlp = person("nlp")
    with session_scope() as s:
        version_id = gov.register_model(session=s, principal=nlp, name="sotu-lm-student", artifact=path,
                                        family="language", role="student").id
    _approve(version_id, evidence, promote=stage == "production")
    return version_id


@pytest.fixture(scope="module")
def serving_db(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[dict[str, Any]]:
    """A module's own migrated SQLite database; the environment points at it for the tests and the servers."""
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    tmp = tmp_path_factory.mktemp("serving")
    shutil.copyfile(sqlite_template, tmp / "cvg.db")
    env = {"CVG_DATABASE_URL": f"sqlite:///{tmp / 'cvg.db'}", "CVG_HOME": str(tmp / "home"),
           "CVG_SERVE_KILL_POLL_S": "0.2", "CVG_SERVE_LOG_FLUSH_S": "0.2", "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(tmp / "bentoml")}
    evidence = tmp / "evidence.md"
    evidence.write_text("# validation (synthetic model for serving tests)\n")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CVG_ACTOR", raising=False)
        dispose_engines()
        get_settings.cache_clear()
        yield {"tmp": tmp, "env": env, "evidence": evidence}
        dispose_engines()
        get_settings.cache_clear()


class Server:
    """A real `cvg serve` on localhost (convergence.serving.ServerProcess) with an HTTP client."""

    def __init__(self, family: str, env: dict[str, str], *args: str) -> None:
        from convergence.serving import ServerProcess

        self.process = ServerProcess(family, *args, log=Path(env["CVG_HOME"]).parent / f"serve-{family}.log",
                                     env=env).start()
        self.url = self.process.url
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


@pytest.fixture(scope="module")
def trading_server(serving_db: dict[str, Any]) -> Iterator[Server]:
    version_id = register_trading(serving_db["tmp"], serving_db["evidence"])
    server = Server("trading", serving_db["env"], "--float")
    server.version_id = version_id  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def language_server(serving_db: dict[str, Any]) -> Iterator[Server]:
    version_id = register_language(serving_db["tmp"], serving_db["evidence"])
    server = Server("language", serving_db["env"])
    server.version_id = version_id  # type: ignore[attr-defined]
    yield server
    server.stop()
