"""Control-plane API benchmark: what authentication adds to a request, and audit queries at volume.

    .venv/bin/python bench/api_bench.py [--events 1000000] [--no-postgres]

1. Authentication per request, in one run on this machine: the authenticator alone (an API key checked
   against its cache; an OIDC access token verified with a cached JWKS, RS256 2048; the same token again,
   from the token cache); the app in-process, the same route (/whoami) with its authentication dependency
   and with it replaced by a fixed principal (FastAPI's dependency override), so the difference is what
   authentication adds to a request; and for context, end to end over HTTP to a real `cvg api` (uvicorn),
   the unauthenticated /livez against /whoami. Tokens are minted here against a local JWKS (the verification
   work is the same as for a provider's).
2. `cvg audit query --actor` through the API over a PostgreSQL ledger of --events events (50 actors):
   latency of GET /audit/events?actor=… (the CLI's default limit of 1,000 events, and 100), p50 and p99.

Prints a table and writes bench/results/api.json. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _people import principal

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("CVG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
sys.path.insert(0, str(ROOT))  # tests/platform/test_oidc.py's loopback JWKS issuer


def _use(url: str, home: str) -> None:
    from convergence.platform import migrate
    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    os.environ.update(CVG_DATABASE_URL=url, CVG_HOME=home)
    get_settings.cache_clear()
    dispose_engines()
    migrate.upgrade(url=url)


def _per_call_us(fn: Any, n: int) -> float:
    for _ in range(min(200, n)):
        fn()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def _service_key(name: str) -> str:
    from convergence.governance import identity
    from convergence.platform.db import session_scope

    admin, second = principal("bench-admin", "admin"), principal("bench-second-admin", "admin")
    with session_scope() as s:
        identity.create_service_account(session=s, principal=admin, name=name)
        row, key = identity.create_api_key(session=s, principal=admin, account=name)
    with session_scope() as s:  # a key works once a second admin approves it
        identity.approve_api_key(session=s, principal=second, key_id=row.key_id)
    return key


def auth_costs(home: str) -> dict[str, Any]:
    import httpx
    import jwt

    from convergence.governance.identity import Authenticator
    from convergence.platform.settings import get_settings
    from convergence.serving import ServerProcess
    from tests.platform.test_oidc import AUD, Issuer, rsa_key

    _use(f"sqlite:///{home}/auth.db", home)
    issuer = Issuer()
    key, jwk = rsa_key("bench-key")
    issuer.keys = [jwk]
    os.environ.update(CVG_OIDC_ISSUER=issuer.url, CVG_OIDC_AUDIENCE=AUD, CVG_OIDC_ROLES_CLAIM="groups")
    get_settings.cache_clear()
    api_key = _service_key("bench-caller")
    now = int(time.time())

    def token(i: int) -> str:
        return jwt.encode({"iss": issuer.url, "aud": AUD, "sub": "bench-person", "exp": now + 3600, "iat": now,
                           "jti": f"t{i}", "groups": ["auditor"]}, key, algorithm="RS256", headers={"kid": "bench-key"})

    auth = Authenticator()
    header_key, repeat = f"Bearer {api_key}", token(0)
    auth.from_header(f"Bearer {repeat}")  # the principal exists; the JWKS is cached
    fresh = iter([f"Bearer {token(i)}" for i in range(1, 2001)])
    out: dict[str, Any] = {
        "authenticator_us": {
            "api_key_cached": _per_call_us(lambda: auth.from_header(header_key), 20_000),
            "token_first_use_cached_jwks": _per_call_us(lambda: auth.from_header(next(fresh)), 300),
            "token_repeat": _per_call_us(lambda: auth.from_header(f"Bearer {repeat}"), 20_000),
        }}
    out["in_process_us"] = _in_process(auth, header_key, f"Bearer {repeat}")
    with ServerProcess("api", log=Path(home) / "api.log", command=("api",), env={"CVG_API_MAX_RUNS": "0"}) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            def get(path: str, header: str | None) -> None:
                r = client.get(path, headers={"authorization": header} if header else {})
                assert r.status_code == 200, r.text

            out["http_us"] = {
                "livez_unauthenticated": _per_call_us(lambda: get("/livez", None), 1000),
                "whoami_api_key": _per_call_us(lambda: get("/whoami", header_key), 1000),
                "whoami_token": _per_call_us(lambda: get("/whoami", f"Bearer {repeat}"), 1000),
            }
    issuer.server.shutdown()
    inproc = out["in_process_us"]
    out["added_us"] = {"api_key": inproc["whoami_api_key"] - inproc["whoami_no_auth"],
                       "token": inproc["whoami_token"] - inproc["whoami_no_auth"]}
    return out


def _in_process(auth: Any, key_header: str, token_header: str, n: int = 3000) -> dict[str, float]:
    """/whoami through the whole ASGI app, with authentication and with it overridden by a fixed principal."""
    import asyncio

    from fastapi import Request

    from convergence.platform.api import create_app

    app, bare = create_app(authenticator=auth), create_app(authenticator=auth)
    fixed = auth.from_header(key_header)

    async def no_auth(request):  # type: ignore[no-untyped-def]
        request.state.principal = fixed

    no_auth.__annotations__ = {"request": Request}  # resolved here, not from the module's (string) annotations
    bare.dependency_overrides[bare.state.authenticated] = no_auth

    async def call(target: Any, header: str | None) -> None:
        headers = [(b"authorization", header.encode())] if header else []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/whoami", "raw_path": b"/whoami", "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await target(scope, receive, send)
        assert status == [200], status

    cases = {"whoami_no_auth": (bare, None), "whoami_api_key": (app, key_header), "whoami_token": (app, token_header)}

    async def run() -> dict[str, float]:
        for target, header in cases.values():
            for _ in range(300):
                await call(target, header)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(7):  # interleaved rounds, so drift in the machine's speed hits every case alike
            for name, (target, header) in cases.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    await call(target, header)
                samples[name].append((time.perf_counter() - t0) / n * 1e6)
        return {name: statistics.median(values) for name, values in samples.items()}

    return asyncio.run(run())


def audit_queries(url: str, home: str, events: int, actors: int = 50) -> dict[str, Any]:
    import httpx

    from convergence.governance import EventIn, Subject, append_many
    from convergence.platform.db import session_scope
    from convergence.serving import ServerProcess

    _use(url, home)
    people = [principal(f"trader-{i:02d}") for i in range(actors)]
    t0 = time.perf_counter()
    chunk = 100_000
    for start in range(0, events, chunk):
        batch = [EventIn(people[i % actors], "prediction.logged", Subject("prediction", str(i)),
                         {"model_version": 12, "output": 0.001 * i}) for i in range(start, min(events, start + chunk))]
        with session_scope() as s:
            append_many(session=s, events=batch)
    loaded = time.perf_counter() - t0
    reader = _service_key("bench-examiner")
    from convergence.governance import identity

    with session_scope() as s:
        admin = principal("bench-admin", "admin")
        grant = identity.request_grant(session=s, principal=admin, grantee="sa:bench-examiner", role="auditor")
    with session_scope() as s:
        identity.decide_grant(session=s, principal=principal("bench-admin-2", "admin"), grant_id=grant.id, approve=True)
    out: dict[str, Any] = {"events": events, "actors": actors, "load_s": round(loaded, 1)}
    with ServerProcess("api", log=Path(home) / "api-pg.log", command=("api",), env={"CVG_API_MAX_RUNS": "0"}) as server:
        with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": f"Bearer {reader}"}) as client:
            for limit in (1000, 100):
                times = []
                for i in range(220):
                    t = time.perf_counter()
                    r = client.get("/audit/events", params={"actor": f"trader-{i % actors:02d}", "limit": limit})
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200 and len(r.json()) == limit, r.text[:200]
                times = sorted(times[20:])  # the first requests warm the pool and the caches
                out[f"limit_{limit}_ms"] = {"p50": round(statistics.median(times), 2),
                                            "p99": round(times[int(len(times) * 0.99) - 1], 2),
                                            "max": round(times[-1], 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="cvg-api-bench-")
    results: dict[str, Any] = {"auth": auth_costs(home)}
    if not args.no_postgres:
        import psycopg
        from sqlalchemy.engine import make_url

        server = make_url(PG_SERVER)
        name = f"cvg_api_bench_{os.getpid()}"
        admin = dict(host=server.host, port=server.port or 5432, user=server.username, dbname=server.database or "postgres",
                     autocommit=True)
        with psycopg.connect(**admin) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        try:
            url = server.set(database=name).render_as_string(hide_password=False)
            results["audit_query_postgres"] = audit_queries(url, home, args.events)
        finally:
            from convergence.platform.db import dispose_engines

            dispose_engines()
            with psycopg.connect(**admin) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    a = results["auth"]
    print("authenticator, per call (µs): " + ", ".join(f"{k} {v:.1f}" for k, v in a["authenticator_us"].items()))
    print("in-process /whoami (µs):      " + ", ".join(f"{k} {v:.0f}" for k, v in a["in_process_us"].items()))
    print("over HTTP, per request (µs):  " + ", ".join(f"{k} {v:.0f}" for k, v in a["http_us"].items()))
    print("added by authentication (µs): " + ", ".join(f"{k} {v:.0f}" for k, v in a["added_us"].items()))
    if "audit_query_postgres" in results:
        q = results["audit_query_postgres"]
        print(f"audit query --actor over {q['events']:,} events on PostgreSQL ({q['actors']} actors, loaded in "
              f"{q['load_s']} s): " + "; ".join(f"{k}: p50 {v['p50']} ms, p99 {v['p99']} ms"
                                                 for k, v in q.items() if k.startswith("limit")))
    out = ROOT / "bench" / "results" / "api.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
