"""schemathesis (4.x, in-process against the ASGI app) over the whole OpenAPI document, authenticated as a
principal holding every role: valid and invalid inputs for every operation. It counts what it sends and
asserts that nothing answered 5xx, that every error is ``{"error", "message"}`` with a status the document
declares, and that answers match their declared content type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance

from tests.people import api_key
from tests.pipelines.test_kubernetes import fake_cluster

pytestmark = [pytest.mark.slow]


@pytest.fixture
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite database per operation: the campaign is about the HTTP surface, which is the same on
    both backends (PostgreSQL runs the same requests through tests/platform/api/test_app.py)."""
    from tests.conftest import _database

    yield from _database("sqlite", request, tmp_path, monkeypatch, migrated=True)

CAMPAIGN: dict[str, Any] = {"requests": 0, "by_status": {}, "operations": set()}


def _kube() -> dict[str, Any]:
    fakes = fake_cluster(kuberay=False)
    return {"apis": fakes["apis"], "batch": fakes["batch"], "custom": fakes["custom"]}


def _app() -> Any:
    """The app, with Kubernetes behind a recording fake (no API server runs here) and no pipeline runs. It reads
    the database from the settings per request, so each operation's tests get the fresh database of
    ``fuzz_key``'s ``db_url``."""
    from convergence.platform.api import BackgroundJobs, create_app

    return create_app(jobs=BackgroundJobs(0, kube=_kube()))


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture
def fuzz_key(sqlite_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_WEBHOOK_TIMEOUT_S", "0.5")
    monkeypatch.setenv("CVG_WEBHOOK_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    APP.state.auth.invalidate()
    yield api_key("fuzzer", "registrant", "validator", "approver", "operator", "risk", "finance", "auditor", "admin")
    get_settings.cache_clear()


def _error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every error answer is one JSON object naming the error and saying what is wrong."""
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str), \
            (case.method, case.path, response.status_code, response.text[:300])
        assert "Traceback" not in body["message"]


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_and_every_error_is_documented(case: Any, fuzz_key: str) -> None:
    response = case.call(headers={"authorization": f"Bearer {fuzz_key}"})
    CAMPAIGN["requests"] += 1
    CAMPAIGN["operations"].add(f"{case.method} {case.path}")
    CAMPAIGN["by_status"][response.status_code] = CAMPAIGN["by_status"].get(response.status_code, 0) + 1
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance])
    _error_shape(None, response, case)


def test_the_campaign_covered_every_operation_without_a_5xx() -> None:
    """Runs after the parametrized campaign above (pytest keeps file order), which fills the counters."""
    from convergence.platform.api import Operations

    assert CAMPAIGN["requests"], "run this file whole: the campaign above fills the counters"
    assert not [s for s in CAMPAIGN["by_status"] if s >= 500], CAMPAIGN["by_status"]
    covered = {op.split(" ", 1)[1] for op in CAMPAIGN["operations"]}
    assert {spec.path for spec in Operations.specs()} <= covered
    assert CAMPAIGN["requests"] >= 2 * len(Operations.specs())
    print(f"fuzz campaign: {CAMPAIGN['requests']} requests over {len(CAMPAIGN['operations'])} operations, "
          f"answers by status {dict(sorted(CAMPAIGN['by_status'].items()))}")
