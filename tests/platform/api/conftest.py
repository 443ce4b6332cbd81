"""API fixtures: the app in-process (Starlette's test client) for most tests, a real `cvg api` (uvicorn) on
loopback where a client or the CLI must reach it over HTTP (the OpenID Provider is tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest



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
        env.update(request.getfixturevalue("oidc").env())
    server = ApiServer(env, tmp_path / "api.log")
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
