"""Hostile bodies for /predict and /generate, through the whole serving app in-process with real replicas:
each attack that once answered 500 is now a 4xx with ``{"error", "message"}``, counted by status, and a
Hypothesis campaign of JSON and binary bodies finds no answer ≥ 500."""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import N_FEATURES, register_language, register_trading


@pytest.fixture(scope="module")
def client(serving_db: dict[str, Any]) -> Iterator[Any]:
    """Both families' replicas started in this process (as a BentoML worker starts them) behind the real app."""
    from starlette.testclient import TestClient

    from convergence.serving._app import REPLICAS, build_app, start_replica

    register_trading(serving_db["tmp"], serving_db["evidence"], name="hostile-trading")
    language_id = register_language(serving_db["tmp"], serving_db["evidence"])
    start_replica("trading", name="hostile-trading")
    start_replica("language", version_id=language_id)
    try:
        with TestClient(build_app(), raise_server_exceptions=False) as c:
            yield c
    finally:
        for family in ("trading", "language"):
            if (replica := REPLICAS.pop(family, None)) is not None:
                replica.close()


def _errors(status: int) -> float:
    from convergence.serving._app import REPLICAS

    return sum(r.metrics.counters.get(("errors_total", (("status", str(status)),)), 0.0) for r in REPLICAS.values())


def _refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= {"error", "message"} and "Traceback" not in response.text
    return body


ROW = [0.5] * N_FEATURES


@pytest.mark.serving
@pytest.mark.parametrize("label,body,status,fragment", [
    ("10**400", '{"rows": [[%s%s]]}' % (10**400, ", 0" * (N_FEATURES - 1)), 422, "integer of 401 digits"),
    ("5,000 digits", '{"rows": [[%s]]}' % ("9" * 5000), 400, "too many digits"),
    ("200,000 [", "[" * 200_000, 400, "nested too deeply"),
    ("1e999", '{"rows": [[1e999%s]]}' % (", 0" * (N_FEATURES - 1)), 422, "must be finite"),
    ("invalid UTF-8", b'{"rows": [[\xff\xfe]]}', 400, "not valid JSON"),
    ("NaN", '{"rows": [[NaN%s]]}' % (", 0" * (N_FEATURES - 1)), 422, "must be finite"),
])
def test_predict_attacks_are_4xx_and_counted(client: Any, label: str, body: Any, status: int, fragment: str) -> None:
    before = _errors(status)
    answer = _refused(client.post("/predict", content=body, headers={"content-type": "application/json"}), status)
    assert fragment in answer["message"], answer
    assert _errors(status) == before + 1  # the error metric counts it by status


@pytest.mark.serving
@pytest.mark.parametrize("prompt,fragment", [
    ("\ud800 lone surrogate", "not valid Unicode"), ("bell \x07", "control character U+0007"),
    ("", "non-empty string"), (7, "non-empty string"),
])
def test_generate_validates_text_before_tokenizing(client: Any, prompt: Any, fragment: str) -> None:
    body = json.dumps({"prompt": prompt, "max_tokens": 2})  # json.dumps writes a lone surrogate as \ud800
    before = _errors(422)
    answer = _refused(client.post("/generate", content=body, headers={"content-type": "application/json"}), 422)
    assert fragment in answer["message"] and _errors(422) == before + 1


@pytest.mark.serving
def test_well_formed_requests_still_answer(client: Any) -> None:
    assert client.post("/predict", json={"rows": [ROW]}).status_code == 200
    text = client.post("/generate", json={"prompt": "We the people\n", "max_tokens": 3})
    assert text.status_code == 200 and text.json()["tokens"] <= 3


CAMPAIGN: Counter[str] = Counter()
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
                     max_leaves=40)
_bodies = st.one_of(
    st.builds(lambda rows: {"rows": rows}, st.lists(st.lists(st.one_of(st.floats(), st.integers(), st.just(0.5)),
                                                             min_size=N_FEATURES - 1, max_size=N_FEATURES + 1),
                                                    max_size=3)),
    st.builds(lambda p, m, t, s: {"prompt": p, "max_tokens": m, "temperature": t, "seed": s},
              st.text(max_size=40), st.one_of(st.integers(), st.floats(), st.text(max_size=3)),
              st.one_of(st.floats(), st.integers()), st.one_of(st.integers(), st.none())),
    _json)


def _send(client: Any, route: str, content: bytes, content_type: str) -> None:
    response = client.post(route, content=content, headers={"content-type": content_type})
    CAMPAIGN[f"{route} {response.status_code // 100}xx"] += 1
    CAMPAIGN["inputs"] += 1
    assert response.status_code < 500, (route, content[:200], response.text[:300])
    if response.status_code >= 400:
        assert set(response.json()) >= {"error", "message"}


def _campaign(client: Any) -> None:
    @settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=_bodies, route=st.sampled_from(["/predict", "/generate"]), raw=st.binary(max_size=64),
           as_binary=st.booleans())
    def run(body: Any, route: str, raw: bytes, as_binary: bool) -> None:
        from convergence.serving._app import BINARY

        _send(client, route, json.dumps(body, allow_nan=True).encode(), "application/json")
        if as_binary:  # raw bytes, and the binary row format with a header that may lie about its size
            rows, cols = struct.unpack("<II", (raw + bytes(8))[:8])
            _send(client, route, struct.pack("<II", rows % 4, cols % (N_FEATURES + 2)) + raw, BINARY)
        else:
            _send(client, route, raw, "application/json")

    run()


@pytest.mark.serving
def test_a_fuzz_campaign_of_json_and_binary_bodies_finds_no_5xx(client: Any) -> None:
    CAMPAIGN.clear()
    _campaign(client)
    print("serving campaign:", dict(sorted(CAMPAIGN.items())))
    assert CAMPAIGN["inputs"] >= 1400 and not any(k.endswith("5xx") for k in CAMPAIGN)
