"""Hostile bodies for /predict and /generate, through the whole serving app in-process with real replicas:
each attack that once answered 500 is now a 4xx with ``{"error", "message"}``, counted by status in the
Prometheus error metric, and a bounded Hypothesis campaign per route finds no answer ≥ 500."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.serving.conftest import N_FEATURES, register_language, register_trading

pytestmark = [pytest.mark.serving]

ROW = [0.5] * N_FEATURES
JSON = {"content-type": "application/json"}
BINARY = {"content-type": "application/octet-stream"}


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


def errors_counted(client: Any, status: int) -> float:
    """``cvg_serving_errors_total{status=…}`` as /metrics renders it (summed over this process's replicas)."""
    key = f'cvg_serving_errors_total{{status="{status}"}}'
    return sum(float(line.split(" ")[1]) for line in client.get("/metrics").text.splitlines()
               if line.split(" ")[0] == key)


def refused(client: Any, route: str, content: Any, status: int, headers: dict[str, str] = JSON) -> dict[str, Any]:
    """Send one body; check the status, the JSON error shape and that the error metric counted it once."""
    before = errors_counted(client, status)
    response = client.post(route, content=content, headers=headers)
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str) and "Traceback" not in response.text
    assert errors_counted(client, status) == before + 1
    return body


@pytest.mark.parametrize("label,body,status,fragment", [
    ("10**400", '{"rows": [[%s%s]]}' % (10**400, ", 0" * (N_FEATURES - 1)), 422, "integer of 401 digits"),
    ("5,000 digits", '{"rows": [[%s]]}' % ("9" * 5000), 400, "too many digits"),
    ("200,000 [", "[" * 200_000, 400, "nested too deeply"),
    ("200,000 [ inside rows", '{"rows": ' + "[" * 200_000, 400, "nested too deeply"),
    ("1e999", '{"rows": [[1e999%s]]}' % (", 0" * (N_FEATURES - 1)), 422, "must be finite"),
    ("invalid UTF-8", b'{"rows": [[\xff\xfe]]}', 400, "not valid JSON"),
    ("NaN", '{"rows": [[NaN%s]]}' % (", 0" * (N_FEATURES - 1)), 422, "must be finite"),
    ("-Infinity", '{"rows": [[-Infinity%s]]}' % (", 0" * (N_FEATURES - 1)), 422, "must be finite"),
    ("empty body", b"", 400, "not valid JSON"),
    ("not JSON", b"rows=1,2,3", 400, "not valid JSON"),
    ("wrong type", '{"rows": "1,2,3"}', 422, "must be a list of feature rows"),
    ("wrong shape", '{"rows": [[[0.5]]]}', 422, "not a number"),
])
def test_predict_attacks_are_4xx_and_counted(client: Any, label: str, body: Any, status: int, fragment: str) -> None:
    answer = refused(client, "/predict", body, status)
    assert fragment in answer["message"], answer


@pytest.mark.parametrize("route", ["/predict", "/generate"])
def test_a_lone_surrogate_in_a_field_name_is_an_escaped_4xx(client: Any, route: str) -> None:
    """It used to crash while the 422 naming it was encoded (after counting it as a 422): a plain-text 500."""
    answer = refused(client, route, '{"\\ud800": 1, "\\u0007bell": 2}', 422)
    assert answer["message"].startswith("unknown field(s) \\x07bell, \\ud800;"), answer


def test_a_body_of_many_unknown_fields_gets_a_short_message(client: Any) -> None:
    answer = refused(client, "/predict", json.dumps({f"f{i}" * 30: i for i in range(5000)}), 422)
    assert answer["message"].endswith("and 4,995 more; allowed: rows") and len(answer["message"]) < 400


class SpyTokenizer:
    """The replica's tokenizer, recording what it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.encoded = inner, []

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.encoded.append(text)
        return self.inner.encode(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("prompt,fragment", [
    ("\ud800 lone surrogate", "not valid Unicode"), ("\udfff", "not valid Unicode"),
    ("bell \x07", "control character U+0007"), ("nul \x00", "control character U+0000"),
    ("c1 \x85", "control character U+0085"), ("x" * 32_769, "32,769 characters; at most 32,768"),
    ("", "non-empty string"), (7, "non-empty string"), (["We"], "non-empty string"),
])
def test_generate_validates_text_before_tokenizing(client: Any, prompt: Any, fragment: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.serving._app import REPLICAS

    spy = SpyTokenizer(REPLICAS["language"].loaded.extra["tokenizer"])
    monkeypatch.setitem(REPLICAS["language"].loaded.extra, "tokenizer", spy)
    body = json.dumps({"prompt": prompt, "max_tokens": 2})  # json.dumps writes a lone surrogate as \ud800
    answer = refused(client, "/generate", body, 422)
    assert fragment in answer["message"] and spy.encoded == [], answer
    ok = client.post("/generate", json={"prompt": "We the people\t\n", "max_tokens": 2})
    assert ok.status_code == 200 and spy.encoded == ["We the people\t\n"]


@pytest.mark.parametrize("label,body,status,fragment", [
    ("5,000-digit seed", '{"prompt": "We", "seed": %s}' % ("9" * 5000), 400, "too many digits"),
    ("10**400 max_tokens", '{"prompt": "We", "max_tokens": %s}' % 10**400, 422, '"max_tokens" must be an integer'),
    ("Infinity temperature", '{"prompt": "We", "temperature": Infinity}', 422, "finite number"),
    ("200,000 [", '{"prompt": ' + "[" * 200_000, 400, "nested too deeply"),
    ("invalid UTF-8", b'{"prompt": "\xc3\x28"}', 400, "not valid JSON"),
])
def test_generate_attacks_are_4xx_and_counted(client: Any, label: str, body: Any, status: int, fragment: str) -> None:
    answer = refused(client, "/generate", body, status)
    assert fragment in answer["message"], answer


def test_a_declared_length_of_5000_digits_is_413(client: Any) -> None:
    """``int()`` of the header would raise on Python's conversion limit; h11 refuses it earlier on a real server."""
    answer = refused(client, "/predict", b"{}", 413, {**JSON, "content-length": "9" * 5000})
    assert "10**18 or more bytes" in answer["message"]


def test_routes_and_methods_that_do_not_exist_are_json_and_counted(client: Any) -> None:
    assert refused(client, "/nowhere", b"{}", 404)["error"] == "NotFound"
    before = errors_counted(client, 405)
    answer = client.get("/predict")
    assert answer.status_code == 405 and answer.json()["error"] == "MethodNotAllowed"
    assert answer.headers["allow"] == "POST" and errors_counted(client, 405) == before + 1


def test_a_route_this_process_does_not_serve_is_counted(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.serving._app import REPLICAS

    monkeypatch.delitem(REPLICAS, "language")  # a trading-only process, as `cvg serve trading` runs
    assert "does not serve a language model" in refused(client, "/generate", '{"prompt": "We"}', 503)["message"]


def test_an_unforeseen_failure_is_a_logged_counted_json_500(client: Any, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from convergence.serving import _app
    from convergence.serving._app import REPLICAS

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("not ours")

    monkeypatch.setattr(REPLICAS["trading"].batcher, "routed", broken)
    answer = refused(client, "/predict", json.dumps({"rows": [ROW]}), 500)
    assert answer == {"error": "ConvergenceError", "message": "the server failed to answer; the failure is in its log"}
    monkeypatch.setattr(_app, "render_metrics", lambda: 1 / 0)  # outside the routes' own net: Starlette's
    response = client.get("/metrics")
    assert response.status_code == 500 and response.json()["error"] == "ConvergenceError"
    monkeypatch.undo()
    assert errors_counted(client, 500) >= 2 and "ZeroDivisionError" in caplog.text and "not ours" in caplog.text


def test_predict_skips_starlettes_router_and_answers_the_same_json(client: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /predict goes straight to its handler (the router and exception layers were a fifth of the event
    loop at 64 connections); its hand-written JSON is byte for byte what json.dumps writes, and everything
    else (a GET of /predict included) still goes through the router."""
    from starlette.routing import Router

    routed: list[str] = []
    real = Router.__call__

    async def counting(self: Any, scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await real(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", counting)
    answer = client.post("/predict", json={"rows": [ROW, [-x for x in ROW]]})
    assert answer.status_code == 200 and routed == []
    body = answer.json()
    assert answer.text == json.dumps(body) and answer.headers["x-model-version"] == str(body["version_id"])
    assert list(body) == ["model", "version", "version_id", "artifact_sha256", "approval_seq", "route",
                          "prediction_ids", "predictions"]
    with session_scope(write=False) as s:  # every answer names its bytes and the approval that let them serve
        mv = gov.get_model(session=s, version_id=body["version_id"])
        approval = gov.rollout.approval_seq(session=s, version_id=mv.id)
    assert body["artifact_sha256"] == mv.artifact_sha256 == answer.headers["x-model-artifact-sha256"]
    assert body["approval_seq"] == approval and answer.headers["x-approval-seq"] == str(approval)
    assert isinstance(approval, int) and body["route"] == "production" == answer.headers["x-route"]
    assert len(body["predictions"]) == len(body["prediction_ids"]) == 2
    assert client.get("/predict").status_code == 405 and routed == ["/predict"]


def test_well_formed_requests_still_answer(client: Any) -> None:
    assert client.post("/predict", json={"rows": [ROW]}).status_code == 200
    text = client.post("/generate", json={"prompt": "We the people\n", "max_tokens": 3})
    assert text.status_code == 200 and text.json()["tokens"] <= 3


# The campaign: JSON with odd Unicode (lone surrogates, controls, unassigned), numbers of every size, deep
# nesting, valid bodies with bytes spliced in, and raw bytes under any content type.
_text = st.text(st.characters(exclude_categories=()), max_size=24)
_number = st.one_of(st.floats(), st.integers(), st.integers(-(10**400), 10**400),
                    st.sampled_from([0.5, -1.0, 1e38, 1e39, 5e-324, 2**63, -(2**63)]))
_json = st.recursive(st.none() | st.booleans() | _number | _text,
                     lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_text, inner, max_size=5),
                     max_leaves=30)
_nested = st.builds(lambda n, pair, closed: (pair[0] * n + (pair[1] * n if closed else "")).encode(),
                    st.integers(1, 250_000), st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"rows":[', "]}")]),
                    st.booleans())
_digits = st.builds(lambda key, n, tail: ('{"%s": [[%s%s]]}' % (key, "9" * n, tail)).encode(),
                    st.sampled_from(["rows", "prompt", "seed"]), st.integers(1, 6000),
                    st.sampled_from(["", ".5", "e999", "e-999", ", 0", "]" * 3]))


def _spliced(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.builds(lambda at, junk: valid[:at] + junk + valid[at:], st.integers(0, len(valid)),
                     st.binary(min_size=1, max_size=6))


def _dumped(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda v: json.dumps(v, allow_nan=True).encode())


_predict_bodies = st.one_of(
    _dumped(st.builds(lambda rows: {"rows": rows}, st.lists(st.lists(st.floats(-1e6, 1e6), min_size=N_FEATURES,
                                                                     max_size=N_FEATURES), min_size=1, max_size=3))),
    _dumped(st.builds(lambda rows: {"rows": rows}, st.lists(st.lists(st.one_of(_number, st.just(0.5)),
                                                                     min_size=N_FEATURES - 1,
                                                                     max_size=N_FEATURES + 1), max_size=3))),
    _dumped(_json), _nested, _digits, _spliced(json.dumps({"rows": [ROW, ROW]}).encode()))
_generate_bodies = st.one_of(
    _dumped(st.fixed_dictionaries(
        {"prompt": st.one_of(_text, st.text(min_size=1, max_size=16)),
         "max_tokens": st.one_of(st.integers(1, 3), st.integers(), _number, _text)},
        optional={"temperature": st.one_of(st.floats(min_value=0, max_value=3), _number, _json),
                  "seed": st.one_of(st.integers(0, 2**64), _number), "top_p": _number})),
    _dumped(_json), _nested, _digits, _spliced(json.dumps({"prompt": "We the people", "max_tokens": 2}).encode()))
_content_types = st.sampled_from(["application/json", "application/octet-stream", "text/plain", "", "application/json; "
                                  "charset=utf-16", "application/octet-stream; x=1"])


def _send(client: Any, campaign: Counter[str], route: str, content: bytes, content_type: str) -> None:
    response = client.post(route, content=content, headers={"content-type": content_type})
    campaign[f"{response.status_code // 100}xx"] += 1
    campaign["inputs"] += 1
    assert response.status_code < 500, (route, content[:200], response.text[:300])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str), body


_binary = st.one_of(  # the row format: a header that may lie about the size, or float32 bits of every kind
    st.builds(lambda shape, raw: struct.pack("<II", *shape) + raw,
              st.tuples(st.integers(0, 3), st.integers(0, N_FEATURES + 1)), st.binary(max_size=64)),
    st.integers(1, 3).flatmap(lambda n: st.binary(min_size=4 * n * N_FEATURES, max_size=4 * n * N_FEATURES)
                              .map(lambda raw: struct.pack("<II", n, N_FEATURES) + raw)))


def _campaign(client: Any, route: str, bodies: st.SearchStrategy[bytes], examples: int) -> Counter[str]:
    """Three inputs per example: a JSON(-ish) body, the binary row format with a header that may lie about its
    size, and raw bytes under any content type."""
    campaign: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, binary=_binary, raw=st.binary(max_size=64), content_type=_content_types)
    def run(body: bytes, binary: bytes, raw: bytes, content_type: str) -> None:
        _send(client, campaign, route, body, "application/json")
        _send(client, campaign, route, binary, "application/octet-stream")
        _send(client, campaign, route, raw, content_type)

    run()
    return campaign


@pytest.mark.parametrize("route,bodies,examples", [("/predict", _predict_bodies, 500),
                                                   ("/generate", _generate_bodies, 400)])
def test_a_fuzz_campaign_of_json_and_binary_bodies_finds_no_5xx(client: Any, route: str, bodies: Any,
                                                                examples: int) -> None:
    before = {status: errors_counted(client, status) for status in (400, 413, 422, 500, 503)}
    t0 = time.perf_counter()
    campaign = _campaign(client, route, bodies, examples)
    print(f"serving campaign {route}: {campaign['inputs']} inputs in {time.perf_counter() - t0:.1f} s,",
          dict(sorted(campaign.items())))
    assert campaign["inputs"] >= 3 * examples and campaign["5xx"] == 0 and campaign["2xx"] > 0
    counted = sum(errors_counted(client, status) - n for status, n in before.items())
    assert counted == campaign["4xx"]  # every refusal of the campaign is in the error metric
