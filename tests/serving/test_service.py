"""The BentoML services on localhost, started by `cvg serve`: correct numbers, precise 4xx for bad input
(the server keeps answering), the kill switch within a second on a running server, the prediction log,
metrics, concurrency without shedding, and batched generation."""

from __future__ import annotations

import concurrent.futures
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import person
from tests.serving.conftest import N_FEATURES

pytestmark = [pytest.mark.serving, pytest.mark.slow]


def _rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)  # SYNTHETIC features


def _in_process(version_id: int, X: np.ndarray) -> np.ndarray:
    from convergence.pipelines import _nets as nets

    with session_scope(write=False) as s:
        net, blob = nets.load_artifact(gov.load_artifact(session=s, version_id=version_id))
    return nets.predict(net, ((X - blob["mean"]) / blob["std"]).astype(np.float32)) * blob["y_scale"]


def test_served_predictions_equal_in_process_and_are_logged(trading_server) -> None:
    X = _rows(5)
    r = trading_server.client.post("/predict", json={"rows": X.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version_id"] == trading_server.version_id and r.headers["x-model-version"] == str(body["version_id"])
    assert len(set(body["prediction_ids"])) == 5
    np.testing.assert_allclose(body["predictions"], _in_process(trading_server.version_id, X), rtol=1e-5, atol=1e-9)
    binary = struct.pack("<II", 5, N_FEATURES) + X.astype("<f4").tobytes()
    rb = trading_server.client.post("/predict", content=binary, headers={"content-type": "application/octet-stream"})
    assert rb.status_code == 200 and rb.json()["predictions"] == body["predictions"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with session_scope(write=False) as s:
            rows = {p.prediction_id: p for p in s.query(gov.PredictionLog).all()}
        if set(body["prediction_ids"]) <= set(rows):
            break
        time.sleep(0.2)
    logged = [rows[pid] for pid in body["prediction_ids"]]
    assert {p.model_version_id for p in logged} == {trading_server.version_id}
    np.testing.assert_array_equal([p.vector for p in logged], X)  # the exact float32 inputs
    np.testing.assert_allclose([p.output for p in logged], body["predictions"], rtol=1e-6)


@pytest.mark.parametrize("body,content_type,status,fragment", [
    ({"rows": [[1.0, 2.0]]}, "json", 422, f"rows have 2 features; this model takes {N_FEATURES}"),
    ({"rows": [[1.0] * N_FEATURES, [1.0] * 3]}, "json", 422, "different lengths"),
    ({"rows": []}, "json", 422, "empty batch"),
    ({"rows": [["a"] * N_FEATURES]}, "json", 422, "row 0, feature 0 is str 'a'"),
    ({"rows": [[True] * N_FEATURES]}, "json", 422, "is bool True"),
    ({"rows": [[1.0] * N_FEATURES], "extra": 1}, "json", 422, "unknown field(s) extra"),
    ({"features": [[1.0] * N_FEATURES]}, "json", 422, "unknown field(s) features"),
    ("[1, 2]", "raw", 422, "must be a JSON object"),
    ('{"rows": [[1.0, NaN' + ", 1.0" * (N_FEATURES - 2) + "]]}", "raw", 422, "feature 1 is nan"),
    ('{"rows": [[Infinity' + ", 1.0" * (N_FEATURES - 1) + "]]}", "raw", 422, "feature 0 is inf"),
    ('{"rows": [[1.0,', "raw", 400, "not valid JSON"),
    (struct.pack("<II", 2, N_FEATURES) + b"\0" * 8, "binary", 422, "carries 8 bytes"),
    (b"\x01", "binary", 422, "8-byte header"),
    ({"rows": [[0.0] * N_FEATURES] * 1025}, "json", 413, "over the limit of 1024 per request"),
    ("x" * (1 << 20 + 1), "raw", 413, "over the limit"),
])
def test_bad_input_gets_a_precise_4xx_and_the_server_keeps_answering(trading_server, body, content_type, status,
                                                                    fragment) -> None:
    client = trading_server.client
    if content_type == "json":
        r = client.post("/predict", json=body)
    elif content_type == "binary":
        r = client.post("/predict", content=body, headers={"content-type": "application/octet-stream"})
    else:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]
    assert client.post("/predict", json={"rows": _rows(1).tolist()}).status_code == 200


def test_kill_switch_stops_a_running_server_within_a_second_and_resume_restores_it(trading_server) -> None:
    client, name = trading_server.client, "es-trading-student"
    risk = person("risk")
    assert client.post("/predict", json={"rows": _rows(1).tolist()}).status_code == 200
    with session_scope() as s:
        gov.kill(session=s, name=name, reason="runaway orders", principal=risk)
    t0 = time.monotonic()
    while client.post("/predict", json={"rows": _rows(1).tolist()}).status_code == 200:
        assert time.monotonic() - t0 < 1.0, "still serving a second after the kill"
    r = client.post("/predict", json={"rows": _rows(1).tolist()})
    assert r.status_code == 503 and "runaway orders" in r.json()["message"]
    with session_scope() as s:
        gov.resume(session=s, name=name, principal=risk, reason="fixed")
        gov.kill(session=s, name=name, reason="flatten", principal=risk, safe_output=True)
    time.sleep(0.6)
    flat = client.post("/predict", json={"rows": _rows(3).tolist()}).json()
    assert flat["killed"] and flat["predictions"] == [0.0, 0.0, 0.0] and flat["reason"] == "flatten"
    # answers given while killed are logged, flagged, and kept out of drift checks
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _logged_killed(flat["prediction_ids"]):
        time.sleep(0.1)
    assert _logged_killed(flat["prediction_ids"]) == [True, True, True]
    with session_scope() as s:
        gov.resume(session=s, name=name, principal=risk, reason="fixed")
    t0 = time.monotonic()
    while "killed" in client.post("/predict", json={"rows": _rows(1).tolist()}).json():
        assert time.monotonic() - t0 < 1.0, "still killed a second after the resume"
    with session_scope(write=False) as s:
        actions = [e.action for e in gov.query_events(session=s, subject=gov.Subject("model", name))]
        assert actions == ["serving.killed", "serving.resumed", "serving.killed", "serving.resumed"]
        assert gov.verify(session=s).ok


def _logged_killed(prediction_ids: list[str]) -> list[bool]:
    from sqlalchemy import select

    with session_scope(write=False) as s:
        rows = s.execute(select(gov.PredictionLog.prediction_id, gov.PredictionLog.killed)
                         .where(gov.PredictionLog.prediction_id.in_(prediction_ids))).all()
    return [killed for _, killed in sorted(rows, key=lambda r: prediction_ids.index(r[0]))]


def test_64_concurrent_clients_are_all_answered_and_batched(trading_server) -> None:
    import httpx

    client = httpx.Client(base_url=trading_server.url, timeout=30, limits=httpx.Limits(max_connections=64))
    X = _rows(64, seed=9)
    expected = _in_process(trading_server.version_id, X)

    def one(i: int) -> tuple[int, float]:
        r = client.post("/predict", json={"rows": [X[i].tolist()]})
        return r.status_code, r.json()["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, [i % 64 for i in range(640)]))
    assert {code for code, _ in results} == {200}  # nothing shed
    np.testing.assert_allclose([v for _, v in results], np.tile(expected, 10), rtol=1e-5, atol=1e-9)
    metrics = client.get("/metrics").text
    assert "cvg_serving_shed_total 0" in metrics and "cvg_serving_batch_size_bucket" in metrics
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if " " in line}
    assert counts['cvg_serving_batch_size_count'] < counts['cvg_serving_predictions_total{version_id="%d"}'
                                                           % trading_server.version_id]  # some batches > 1 row
    assert "cvg_serving_queue_depth 0" in client.get("/metrics").text
    client.close()


def test_health_readiness_and_error_counts(trading_server) -> None:
    assert trading_server.client.post("/predict", json={"rows": []}).status_code == 422
    assert 'cvg_serving_errors_total{status="422"}' in trading_server.client.get("/metrics").text
    assert trading_server.client.get("/livez").status_code == 200
    assert trading_server.client.get("/readyz").status_code == 200
    assert trading_server.client.post("/generate", json={"prompt": "x"}).status_code == 503  # not this server


def test_generate_equals_in_process_and_batches_concurrent_requests(language_server) -> None:
    from convergence.pipelines import _lm as lm

    client = language_server.client
    with session_scope(write=False) as s:
        model, tok, _ = lm.load_artifact(gov.load_artifact(session=s, version_id=language_server.version_id))
    prompts = ["We must", "The state of the Union is strong", "Congress", "Fellow citizens of the Senate"]
    expected = [lm.decode(tok, lm.generate(model, [lm.encode(tok, p)], max_new_tokens=6,
                                           temperature=0.7, seed=i)[0]) for i, p in enumerate(prompts)]

    def one(i: int) -> dict:
        r = client.post("/generate", json={"prompt": prompts[i], "max_tokens": 6, "temperature": 0.7, "seed": i})
        assert r.status_code == 200, r.text
        return r.json()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(one, range(4)))
    eos = lm.EOS
    assert [o["text"] for o in outs] == [e.replace(eos, "") for e in expected]
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in client.get("/metrics").text.splitlines()
              if line.startswith(("cvg_serving_batch_size_count", "cvg_serving_predictions_total"))}
    served = sum(v for k, v in counts.items() if k.startswith("cvg_serving_predictions_total"))
    assert counts["cvg_serving_batch_size_count"] < served  # concurrent prompts shared forward passes
    assert all(o["version_id"] == language_server.version_id and o["prediction_id"] for o in outs)


@pytest.mark.parametrize("body,status,fragment", [
    ({"prompt": ""}, 422, "non-empty string"),
    ({"prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
    ({"prompt": "a", "max_tokens": 48}, 422, "from 1 to 47"),
    ({"prompt": "a", "temperature": -1}, 422, "temperature"),
    ({"prompt": "a", "seed": "x"}, 422, "seed"),
    ({"prompt": "a", "top_p": 0.9}, 422, "unknown field(s) top_p"),
    ({"prompt": 5}, 422, "non-empty string"),
])
def test_generate_bad_input(language_server, body, status, fragment) -> None:
    r = language_server.client.post("/generate", json=body)
    assert r.status_code == status and fragment in r.json()["message"], r.text
    assert language_server.client.post("/generate", json={"prompt": "We", "max_tokens": 2}).status_code == 200


def test_serve_status_finds_the_running_server_and_forgets_a_dead_one(trading_server, serving_db) -> None:
    """`cvg serve status` checks what it knows about, not what the database says: the real server answers its
    /info; a record whose process is gone reads 'stopped' once and is removed."""
    import json
    import subprocess

    from convergence.serving import known_servers

    found = {s["port"]: s for s in known_servers()}
    ours = found[int(trading_server.url.rsplit(":", 1)[1])]
    assert ours["state"] == "serving" and f"(version {trading_server.version_id})" in ours["detail"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = Path(serving_db["env"]["CVG_HOME"]) / "serving" / "1.json"
    record.write_text(json.dumps({**ours, "port": 1, "pid": dead.pid}))
    gone = {s["port"]: s for s in known_servers()}[1]
    assert gone["state"] == "stopped" and not record.exists()
    assert 1 not in {s["port"] for s in known_servers()}
    for planted in ({**ours, "host": "evil.example/x?"}, {**ours, "family": ["trading"]}, {**ours, "host": 7}):
        record.write_text(json.dumps({**planted, "port": 1}))  # never a URL to call, never a crash
        assert 1 not in {s["port"] for s in known_servers()} and not record.exists()
