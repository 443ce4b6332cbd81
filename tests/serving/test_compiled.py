"""Compiled students in serving: the default follows the registry's own batch-1 measurements, a compiled graph
answers as its eager network does (within its gate), and the eager network's kill switch stops its copies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.people import person
from tests.serving.conftest import N_FEATURES, _approve

pytestmark = [pytest.mark.serving]

NAME = "compiled-trading"


def _register(path: Path, *, name: str, role: str, parent_id: int | None, batch1_s: float,
              gate_passed: bool = True) -> int:
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    params = {"compile_gate": {"passed": gate_passed}, "compiled_from": parent_id} if parent_id else {}
    with session_scope() as s:
        return gov.register_model(session=s, principal=person("quant"), name=name, artifact=path, family="trading",
                                  role=role, parent_id=parent_id, metrics={"latency_batch1_s": batch1_s},
                                  params=params).id


def _set_params(version_id: int, params: dict[str, Any]) -> None:
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope() as s:
        gov.get_model(session=s, version_id=version_id).params = params


@pytest.fixture(scope="module")
def family(serving_db: dict[str, Any]) -> dict[str, Any]:
    """A SYNTHETIC eager student in production and its copies: an onnxruntime graph and a static INT8 graph
    (approved), a graph whose gate failed and one nobody approved (both claiming to be the fastest)."""
    import torch

    from convergence.pipelines import _compile as compiled
    from convergence.pipelines import _nets as nets

    tmp, evidence = serving_db["tmp"], serving_db["evidence"]
    torch.manual_seed(1)
    arch = {"n_in": N_FEATURES, "hidden": [16], "dropout": 0.0}
    net = nets.from_arch(arch).eval()
    rng = np.random.default_rng(1)
    common = {"arch": arch, "mean": rng.normal(size=N_FEATURES), "std": rng.uniform(0.5, 2, N_FEATURES),
              "y_scale": 0.01, "meta": {"synthetic": True}}
    eager = _register(nets.save_artifact(tmp / "eager.safetensors", net=net, role="student", quantized=False, **common),
                      name=NAME, role="student", parent_id=None, batch1_s=40e-6)
    _approve(eager, evidence, safe_output=0.0)
    graph = compiled.compile_net(net, n_params=nets.n_params(net))
    calibration = (rng.normal(0, 2, size=(512, N_FEATURES)) - common["mean"]) / common["std"]  # as served, standardized
    int8 = compiled.quantize_net(net, calibration.astype(np.float32), n_params=1)
    ids = {"eager": eager}
    for key, model, role, batch1_s, gate, approve in (
            ("onnx", graph, "compiled", 13e-6, True, True), ("int8", int8, "quantized", 22e-6, True, True),
            ("failed_gate", graph, "compiled", 1e-6, False, True), ("unapproved", graph, "compiled", 1e-6, True, False),
            ("by_hand", graph, "compiled", 1e-9, None, True)):  # registered by hand: no compile step vouches
        path = compiled.save_artifact(tmp / f"{key}.safetensors", model=model, role=role, **common)
        ids[key] = _register(path, name=f"{NAME}-{key}", role=role, parent_id=eager, batch1_s=batch1_s,
                             gate_passed=gate)
        if gate is None:  # what a hand registration carries: a figure, but no gate and no compiled_from
            _set_params(ids[key], {})
        if approve:
            _approve(ids[key], evidence, promote=False, safe_output=0.25)  # not the network's 0.0: see the kill
    return ids


def test_the_default_is_the_fastest_approved_copy_whose_gate_passed(family: dict[str, int]) -> None:
    from convergence.platform.db import session_scope
    from convergence.serving._models import choose

    with session_scope(write=False) as s:
        picked, why = choose(session=s, family="trading", name=NAME)
        assert picked.id == family["onnx"] and picked.role == "compiled"
        assert why.startswith("fastest at batch 1") and "13.0 µs" in why and "40.0 µs" in why
        assert not any(f"{NAME}-{k}" in why for k in ("failed_gate", "unapproved", "by_hand"))
        assert choose(session=s, family="trading", name=NAME, prefer_int8=False)[0].id == family["eager"]
        assert choose(session=s, family="trading", name=NAME, prefer_int8=True)[0].id == family["int8"]


def test_cvg_serve_dry_run_says_what_it_picked_and_why(family: dict[str, int]) -> None:
    from convergence.serving import check_servable

    info = check_servable(family="trading", name=NAME)
    assert info["version_id"] == family["onnx"] and info["role"] == "compiled" and "fastest" in info["why"]


@pytest.fixture
def app_for(serving_db: dict[str, Any]) -> Iterator[Any]:
    """Start a trading replica of a version in this process behind the real app; a client for it."""
    from starlette.testclient import TestClient

    from convergence.serving._app import REPLICAS, build_app, start_replica

    clients = []

    def start(version_id: int) -> Any:
        if (old := REPLICAS.pop("trading", None)) is not None:
            old.close()
        start_replica("trading", version_id=version_id)
        client = TestClient(build_app(), raise_server_exceptions=False).__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)
    if (replica := REPLICAS.pop("trading", None)) is not None:
        replica.close()


def test_the_compiled_graph_answers_as_the_eager_network(family: dict[str, int], app_for: Any) -> None:
    rows = np.random.default_rng(2).normal(0, 2, size=(64, N_FEATURES)).round(4).tolist()
    answers = {}
    for key in ("eager", "onnx", "int8"):
        client = app_for(family[key])
        response = client.post("/predict", json={"rows": rows})
        assert response.status_code == 200 and response.json()["version_id"] == family[key]
        answers[key] = np.array(response.json()["predictions"])
        info = client.get("/info", headers={}).json()["trading"]
        assert info["version_id"] == family[key]
    eager, onnx, int8 = answers["eager"], answers["onnx"], answers["int8"]
    assert np.max(np.abs(onnx - eager)) <= 1e-5 * np.std(eager)  # the float graph's gate
    assert np.corrcoef(int8, eager)[0, 1] >= 0.99  # the INT8 graph's gate
    assert not np.array_equal(onnx, int8)  # two different graphs really served


def test_the_eager_networks_kill_switch_stops_its_compiled_copy(family: dict[str, int], app_for: Any) -> None:
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.serving._app import REPLICAS

    client = app_for(family["onnx"])
    with session_scope() as s:
        gov.kill(session=s, principal=person("risk"), name=NAME, reason="risk stops the algorithm", safe_output=True)
    try:
        REPLICAS["trading"].watcher.poll()
        answer = client.post("/predict", json={"rows": [[0.5] * N_FEATURES]}).json()
        assert answer["killed"] is True and answer["predictions"] == [0.0]  # what the kill recorded, not 0.25
    finally:
        with session_scope() as s:
            gov.resume(session=s, principal=person("risk"), name=NAME, reason="checks done")
    REPLICAS["trading"].watcher.poll()
    time.sleep(0)
    assert "killed" not in client.post("/predict", json={"rows": [[0.5] * N_FEATURES]}).json()


def test_whoever_registered_the_network_cannot_approve_its_compiled_copy(family: dict[str, int],
                                                                          serving_db: dict[str, Any]) -> None:
    """quant registered the eager student; a copy someone else compiled is still quant's network."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.platform.errors import Forbidden

    with session_scope(write=False) as s:
        source = gov.load_artifact(session=s, version_id=family["onnx"])
    with session_scope() as s:
        copy = gov.register_model(session=s, principal=person("bob"), name=f"{NAME}-bobs-copy", artifact=source,
                                  family="trading", role="compiled", parent_id=family["eager"]).id
        gov.validate(session=s, principal=person("val"), version_id=copy, evidence=serving_db["evidence"])
    solo_like = person("quant", "registrant", "approver")
    with pytest.raises(Forbidden, match=f"registered model version {family['eager']}, which version {copy} is a copy"):
        with session_scope() as s:
            gov.approve(session=s, principal=solo_like, version_id=copy, reason="my network, compiled by bob")
