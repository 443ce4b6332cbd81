"""The CLI under attack: no secret in any error, -o never written through a link, every bad value one line
and exit 2, terminal controls in data escaped (issue 14, items 3, 5 and 6)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.platform.api.conftest import client  # noqa: F401 - the API in-process, for one test
from tests.platform.cli.conftest import assert_one_line_error


# --- secrets: database URLs and driver errors -------------------------------------------------------

@pytest.mark.parametrize(("url", "code"), [
    ("postgresql+psycopg://u:hunter2@127.0.0.1:notaport/db", 2),  # does not parse
    ("postgresql+psycopg://postgres@127.0.0.1:1/none?password=hunter2", 6),  # parses, unreachable
    ("postgresql+psycopg://postgres@127.0.0.1:1/none?sslpassword=hunter2&sslmode=disable", 6),
    ("postgresql+psycopg://u:xhun@ter2@127.0.0.1:1/db", 6),  # an unencoded '@' splits the password
    ("hunter2", 2),  # no URL at all
])
def test_database_urls_never_echo_the_password(cvg, tmp_path: Path, url: str, code: int) -> None:
    env = {"CVG_DATABASE_URL": url, "CVG_HOME": str(tmp_path)}
    for args in (("models", "list"), ("db", "current"), ("db", "upgrade"), ("doctor", "--json")):
        result = cvg(*args, env=env)
        assert "hunter2" not in result.out + result.err and "ter2" not in result.out + result.err, (args, result)
        if args[0] != "doctor":
            assert_one_line_error(result, code, "")
    assert not next(c for c in result.json if c["name"] == "database")["ok"]


def test_redact_url_masks_userinfo_and_secret_query_values() -> None:
    from convergence.platform.db import redact_url, scrub

    assert redact_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact_url("postgresql+psycopg://u@h/db?sslmode=require&PassWord=pw") == \
        "postgresql+psycopg://u@h/db?sslmode=require&PassWord=***"
    assert redact_url("postgresql+psycopg://u@h/db?options=-c%20password%3Dpw") == \
        "postgresql+psycopg://u@h/db?options=***"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url("hunter2") == "(not a database URL)"
    assert "s3cr" not in scrub("host 's3cr@h' unknown", "postgresql://u:x@s3cr@h/db")


def test_every_engine_hides_statement_parameters(db_url: str) -> None:
    from convergence.platform.db import get_engine

    assert get_engine().hide_parameters


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_an_over_long_value_on_postgres_is_one_line_exit_2_without_the_sql(db_url: str, sandbox: str, cvg) -> None:
    # casefolding doubles 'ß': a 200-character name has a 400-character key, over its varchar(200)
    long_name = "ß" * 200
    result = cvg("principals", "create-service-account", long_name, "--as", "ada")
    assert_one_line_error(result, 2, "value too long for type character varying(200)")
    assert "INSERT" not in result.err and "ssss" not in result.err and long_name not in result.err

    secret = "S3CR" * 75  # 300 characters: under the API's 4000, over the column's 200
    env = {"CVG_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}
    sub = cvg("webhooks", "subscribe", "http://127.0.0.1:9/hook", "--secret", secret, "--as", "ada", env=env)
    assert secret not in sub.err and "S3CRS3CR" not in sub.err
    if sub.code != 0:  # a store that holds the secret (encrypted) answers 0 and shows it once, on stdout
        assert_one_line_error(sub, 2, "")
        assert secret not in sub.out


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_an_over_long_value_over_the_api_is_a_422_without_the_sql(db_url: str, client) -> None:
    from tests.people import api_key
    from tests.platform.api.conftest import bearer

    r = client.post("/service-accounts", json={"name": "ß" * 200}, headers=bearer(api_key("keeper-admin", "admin")))
    assert r.status_code == 422 and r.json()["error"] == "InvalidInput", r.text
    assert "value too long" in r.json()["message"] and "INSERT" not in r.text and "ssss" not in r.text


def test_a_driver_error_at_the_edge_is_one_line_without_sql() -> None:
    from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

    from convergence.platform.db import database_error

    class Orig(Exception):
        pass

    too_long = database_error(DataError("INSERT INTO t VALUES (%(s)s)", {"s": "hunter2"},
                                        Orig("value too long for type character varying(20)\nDETAIL: x")))
    assert (too_long.exit_code, too_long.http_status) == (2, 422)
    assert too_long.message == "the database refused a value: value too long for type character varying(20)"
    syntax = database_error(DataError("SELECT 1", {}, Orig('invalid input syntax for type integer: "hunter2"')))
    assert "hunter2" not in str(syntax)
    dup = database_error(IntegrityError("INSERT …", {}, Orig('duplicate key value violates unique constraint "k"\n'
                                                            "DETAIL:  Key (name)=(hunter2) already exists.")))
    assert dup.exit_code == 5 and "hunter2" not in str(dup) and "\n" not in str(dup)
    other = database_error(ProgrammingError("SELECT secret", {}, Orig("[SQL: SELECT secret]")))
    assert other.exit_code == 6 and "SELECT" not in str(other)


# --- files: -o -----------------------------------------------------------------------------------------

def test_a_symlink_at_the_old_partial_name_is_never_written_through(db_url: str, sandbox: str, cvg,
                                                                   tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.partial").symlink_to(victim)
    for fmt in ("jsonl", "parquet"):
        assert cvg("audit", "export", "--format", fmt, "-o", str(target)).code == 0
        assert victim.read_text() == "precious"
        assert stat.S_ISREG(os.lstat(target).st_mode) and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (tmp_path / "audit.jsonl.partial").is_symlink()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_export_targets_that_are_not_regular_files_are_refused(db_url: str, sandbox: str, cvg,
                                                               tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # a device-like target (what /dev/null and /dev/full are): never replaced
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_one_line_error(cvg("audit", "export", "-o", str(link)), 2, "is a symbolic link")
    assert_one_line_error(cvg("audit", "export", "-o", str(fifo)), 2, "is a FIFO")
    assert_one_line_error(cvg("audit", "export", "-o", str(folder)), 2, "is a folder")
    assert_one_line_error(cvg("audit", "export", "-o", str(tmp_path / "no" / "x.jsonl")), 2, "does not exist")
    assert victim.read_text() == "precious" and stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()


def test_other_writers_refuse_a_folder_or_a_link(cvg, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "spec.yaml").symlink_to(victim)
    assert_one_line_error(cvg("pipelines", "compile", "trading", "-o", str(tmp_path / "spec.yaml")), 2,
                          "is a symbolic link")
    assert_one_line_error(cvg("pipelines", "compile", "trading", "-o", str(tmp_path)), 2, "is a folder")
    assert victim.read_text() == "precious"


# --- CLI input: one line, exit 2; controls escaped --------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("audit", "query", "--since", "99999999999d"),
    ("audit", "query", "--until", "9" * 400 + "d"),
    ("audit", "query", "--limit", "1e20"),
    ("audit", "query", "--limit", "-1"),
    ("audit", "query", "--limit", "0"),
    ("models", "list", "--limit", str(2**64)),
    ("models", "show", "1e20"),
    ("models", "show", str(2**63)),
    ("models", "show", str(2**31)),
    ("models", "show", "-5"),
    ("audit", "prove", str(2**64)),
    ("audit", "verify", "--from-checkpoint", str(2**63)),
    ("models", "at", "alpha", "--time", "0001-01-01T00:00+14:00"),
    ("audit", "query", "--actor", "\x1b[31mred"),
    ("audit", "query", "--since", "\u202e7d"),
])
def test_each_bad_value_exits_2_with_one_line(db_url: str, sandbox: str, cvg, args: tuple[str, ...]) -> None:
    result = cvg(*args)
    assert_one_line_error(result, 2, "")
    assert "\x1b" not in result.err and "\u202e" not in result.err


def test_a_bad_setting_is_one_line_exit_2(cvg, tmp_path: Path) -> None:
    assert_one_line_error(cvg("models", "list", env={"CVG_POOL_SIZE": "many", "CVG_HOME": str(tmp_path)}), 2,
                          "CVG_POOL_SIZE")


EVIL = "\x1b[31mmallory\u202e\u200b\x9b"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_controls_in_actors_and_reasons_are_escaped_in_tables(db_url: str, sandbox: str, cvg,
                                                              model_file: Path) -> None:
    from convergence import governance as gov
    from convergence.governance._models import ModelVersion
    from convergence.platform.db import session_scope
    from tests.people import detached

    with session_scope() as s:
        gov.append(session=s, principal=detached(EVIL), action="test.evil",
                          subject=gov.Subject("model_version", "1"), payload={"reason": EVIL + " [/] [red]x"})
    version = cvg("models", "register", "a", "--artifact", str(model_file), "--family", "trading", "--role",
                  "teacher", "--as", "bob", "--json").json["id"]
    with session_scope() as s:
        s.get(ModelVersion, version).description = EVIL + " [/]"

    table = cvg("audit", "query", "--action", "test.evil")
    shown = cvg("models", "show", str(version))
    for result in (table, shown):
        assert result.code == 0, result
        assert not any(ch in result.out for ch in "\x1b\u202e\u200b\x9b")
        assert "\\x1b[31mmallory\\u202e\\u200b\\x9b" in result.out.replace("\n", "").replace("│", "").replace(" ", "")
    as_json = cvg("audit", "query", "--action", "test.evil", "--json")
    assert json.loads(as_json.out)[0]["actor"] == EVIL  # exact data for scripts …
    assert not any(ch in as_json.out for ch in "\x1b\u202e\u200b\x9b")  # … and nothing a terminal acts on
