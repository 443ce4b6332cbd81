"""The same scenario through the real `cvg`, once on the database directly (each persona's API key checked
against it) and once as a client of a real `cvg api`: the same exit codes, the same refusals, and the same
ledger — event for event, principal for principal — apart from times, hashes and per-request ids."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.people import api_key, person, record_seeded
from tests.platform.api.conftest import ApiServer
from tests.artifacts import synthetic_artifact

pytestmark = [pytest.mark.slow]

CVG = str(Path(sys.executable).with_name("cvg"))
MONTH = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")
CAST = {"quinn-sa": ("registrant",), "carol-sa": ("validator",), "alice-sa": ("approver",), "ops-sa": ("operator",),
        "fin-sa": ("finance",), "cfo-sa": ("finance",), "risk-sa": ("risk",), "auditor-sa": ("auditor",),
        "ada-sa": ("admin",), "sam-sa": ("admin",)}


def _scenario(model: Path, evidence: Path, data: Path, grant: int) -> list[tuple[str, list[str]]]:
    return [
        ("quinn-sa", ["models", "register", "alpha", "--artifact", str(model), "--family", "trading", "--role",
                      "student", "--dataset", str(data), "--metrics", '{"ic": 0.04}', "--json"]),
        ("quinn-sa", ["models", "validate", "1", "--evidence", str(evidence)]),          # refused: role
        ("carol-sa", ["models", "validate", "1", "--evidence", str(evidence), "--reason", "reviewed"]),
        ("quinn-sa", ["models", "approve", "1", "--reason", "mine"]),                    # refused: role
        ("carol-sa", ["models", "approve", "1", "--reason", "mine too"]),                # refused: role
        ("alice-sa", ["models", "approve", "1", "--reason", "policy met", "--safe-output", "0.0"]),
        ("quinn-sa", ["models", "promote", "1"]),                                          # refused: role
        ("ops-sa", ["models", "promote", "1", "--reason", "release"]),
        ("fin-sa", ["budgets", "set", "--metric", "kwh", "--period", MONTH, "--hard", "2", "--json"]),
        ("fin-sa", ["budgets", "set", "--metric", "kwh", "--period", MONTH, "--hard", "5", "--json"]),
        ("fin-sa", ["budgets", "approve", "1"]),                                           # refused: second person
        ("cfo-sa", ["budgets", "approve", "1", "--reason", "fine"]),
        ("ops-sa", ["serve", "kill", "alpha", "--reason", "panic"]),                       # refused: role
        ("risk-sa", ["serve", "kill", "alpha", "--reason", "runaway", "--safe-output", "--json"]),
        ("risk-sa", ["serve", "resume", "alpha", "--reason", "fixed"]),
        ("ada-sa", ["principals", "grant", "sa:quinn-sa", "operator", "--reason", "covers ops"]),
        ("ada-sa", ["principals", "approve", str(grant)]),                                 # refused: second admin
        ("sam-sa", ["principals", "approve", str(grant), "--reason", "agreed"]),
        ("quinn-sa", ["models", "promote", "1"]),  # refused now by identity: quinn registered it
        ("auditor-sa", ["audit", "checkpoint", "--json"]),
        ("auditor-sa", ["audit", "verify", "--json"]),
    ]


def _run(env: dict[str, str], key: str, args: list[str]) -> tuple[int, str]:
    proc = subprocess.run([CVG, *args], env={**env, "CVG_API_KEY": key}, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr.strip()


def _cast() -> tuple[dict[str, str], int]:
    """The same service accounts, in the same order, so principal ids match across the two databases; and the
    id the next role grant will get."""
    from sqlalchemy import func, select

    from convergence.governance._models import RoleGrant
    from convergence.platform.db import session_scope

    keys = {name: api_key(name, *roles) for name, roles in CAST.items()}
    record_seeded()  # the seeded accounts and grants in the ledger, so `audit verify` reconciles
    with session_scope(write=False) as s:
        return keys, int(s.execute(select(func.max(RoleGrant.id))).scalar_one()) + 1


def _ledger(env: dict[str, str], key: str) -> list[dict[str, Any]]:
    proc = subprocess.run([CVG, "audit", "query", "--limit", "10000", "--json"], env={**env, "CVG_API_KEY": key},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = []
    for event in json.loads(proc.stdout):
        payload = dict(event["payload"])
        who = {k: v for k, v in payload.pop("principal").items() if k not in ("request_id", "credential")}
        for field in ("head_hash", "root_hash", "note", "key", "anchors"):  # a checkpoint covers the times, which
            payload.pop(field, None)  # differ, is signed by each home's own key and published in each home
        payload.pop("key_id", None)  # API keys are random
        for entry in payload.get("state", []):
            for field in ("key_id", "secret_sha256", "artifact_uri"):  # random, or under each home
                entry.get("fields", {}).pop(field, None)
        out.append({"seq": event["seq"], "actor": event["actor"], "action": event["action"],
                    "subject": f"{event['subject_type']}:{event['subject_id']}", "principal": who, "payload": payload})
    return out


def _play(env: dict[str, str], keys: dict[str, str], steps: list[tuple[str, list[str]]]) -> list[tuple[int, str]]:
    return [_run(env, keys[who], args) for who, args in steps]


def test_the_cli_in_api_mode_and_in_local_mode_leave_the_same_ledger(
        tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, tmp_path: Path) -> None:
    import shutil

    from convergence.platform.db import dispose_engines
    from convergence.platform.settings import get_settings

    model, evidence, data = tmp_path / "model.safetensors", tmp_path / "evidence.md", tmp_path / "ticks.csv"
    synthetic_artifact(model, tag="parity")
    evidence.write_text("# validation\n")
    data.write_text("DateTime,Price,Volume\n2013-09-01 00:00:00.001,1640.25,3\n")
    results, ledgers, grants = {}, {}, set()
    for mode in ("local", "api"):
        home = tmp_path_factory.mktemp(mode)
        shutil.copyfile(sqlite_template, home / "cvg.db")
        env = {**os.environ, "CVG_DATABASE_URL": f"sqlite:///{home / 'cvg.db'}", "CVG_HOME": str(home / "home"),
               "COLUMNS": "200"}
        env.pop("CVG_API_URL", None)
        with pytest.MonkeyPatch.context() as mp:
            for k in ("CVG_DATABASE_URL", "CVG_HOME"):
                mp.setenv(k, env[k])
            dispose_engines()
            get_settings.cache_clear()
            person("ada")
            keys, grant = _cast()
            grants.add(grant)
            steps = _scenario(model, evidence, data, grant)
            server = ApiServer({k: env[k] for k in ("CVG_DATABASE_URL", "CVG_HOME")}, home / "api.log") \
                if mode == "api" else None
            try:
                run_env = {**env, "CVG_API_URL": server.url} if server else env
                results[mode] = _play(run_env, keys, steps)
                ledgers[mode] = _ledger(run_env, keys["auditor-sa"])
            finally:
                if server:
                    server.stop()
            dispose_engines()
            get_settings.cache_clear()
    assert len(grants) == 1
    codes = [code for code, _ in results["local"]]
    assert codes == [0, 4, 0, 4, 4, 0, 4, 0, 0, 0, 4, 0, 4, 0, 0, 0, 4, 0, 4, 0, 0], results["local"]
    assert results["api"] == results["local"]  # the same exit codes and the same one-line errors
    assert "rule approver-not-registrant" not in results["local"][3][1]  # quinn lacks the role: refused for that
    assert "rule promoter-not-registrant" in results["local"][18][1]     # with the role: refused as the registrant
    assert ledgers["api"] == ledgers["local"]
    assert len(ledgers["local"]) > 30
    methods = {e["principal"]["auth"] for e in ledgers["local"] if e["principal"]["kind"] == "service"}
    assert methods == {"api_key"}
