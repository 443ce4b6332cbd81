"""API fixtures: the app in-process (Starlette's test client) for most tests, a real `cvg api` (uvicorn) on
loopback where a client or the CLI must reach it over HTTP, and a real OpenID Provider (node)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.platform.api.oidc_provider import AUDIENCE, OpenIDProvider, node_available


@pytest.fixture(scope="session")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIDProvider]:
    """npm oidc-provider on loopback (installed under tests/oidc by .ci/bootstrap)."""
    from convergence.serving import free_port

    if not node_available():
        message = "node and tests/oidc/node_modules are needed for the OpenID Provider (run .ci/bootstrap)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    provider = OpenIDProvider(free_port(), tmp_path_factory.mktemp("oidc")).start()
    yield provider
    provider.stop()


def oidc_env(provider: OpenIDProvider) -> dict[str, str]:
    return {"CVG_OIDC_ISSUER": provider.url, "CVG_OIDC_AUDIENCE": AUDIENCE, "CVG_OIDC_ROLES_CLAIM": "groups",
            "CVG_OIDC_LEEWAY_S": "0", "CVG_OIDC_JWKS_REFRESH_S": "0"}


@pytest.fixture
def client(db_url: str) -> Iterator[Any]:
    """The control-plane app in-process, on the test's database (no pipeline runs: CVG_API_MAX_RUNS=0)."""
    from starlette.testclient import TestClient

    from convergence.platform.api import create_app
    from convergence.platform.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CVG_API_MAX_RUNS", "0")
        mp.setenv("CVG_API_MAX_BODY_BYTES", "65536")
        get_settings.cache_clear()
        with TestClient(create_app(), raise_server_exceptions=False) as test_client:
            yield test_client
    get_settings.cache_clear()


class ApiServer:
    """A real `cvg api` process on loopback."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        from convergence.serving import ServerProcess

        self.process = ServerProcess("api", log=log, env=env, command=("api",)).start()
        self.url = self.process.url

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def api_server(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    """`cvg api` on the test's database; with the `oidc` fixture in use, it trusts that provider."""
    env = {"CVG_API_MAX_RUNS": "0"}
    if "oidc" in request.fixturenames:
        env.update(oidc_env(request.getfixturevalue("oidc")))
    server = ApiServer(env, tmp_path / "api.log")
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
