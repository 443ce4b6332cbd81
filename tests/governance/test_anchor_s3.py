"""Checkpoints published to an S3 bucket with Object Lock in compliance mode.

The server is moto's server mode on loopback: an S3 *emulator*, spoken to through the ordinary boto3
client over HTTP. It enforces a compliance-mode lock against deleting or overwriting a locked version; it
does not refuse shortening a retention period (real S3 does), so no test here claims that.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import moto.server as moto_server
import pytest

from convergence.governance import ledger
from convergence.platform.db import session_scope
from convergence.platform.errors import IntegrityError
from convergence.platform.settings import get_settings
from tests.people import person



@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def locked_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name, value in (("AWS_ACCESS_KEY_ID", "emulator"), ("AWS_SECRET_ACCESS_KEY", "emulator"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    bucket = f"ledger-{uuid.uuid4().hex}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("CVG_LEDGER_ANCHOR_S3", f"s3://{bucket}/prod")
    monkeypatch.setenv("CVG_LEDGER_ANCHOR_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("CVG_LEDGER_ANCHOR_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    return client, bucket



@pytest.fixture(autouse=True)
def _seed_recorded(adopted: str) -> None:
    """Every test here ends in a full verification, which reconciles the tables with the ledger."""


def test_a_checkpoint_goes_to_the_bucket_locked_in_compliance_mode(chain: int, locked_bucket) -> None:
    client, bucket = locked_bucket
    auditor = person("auditor")
    with session_scope() as s:
        cp = ledger.to_dict(ledger.checkpoint(session=s, principal=auditor))
    key = f"prod/checkpoint-{cp['seq']:012d}.note"
    assert f"s3://{bucket}/{key}" in cp["anchors"]
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read().decode() == cp["note"]

    version = head["VersionId"]
    with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=key, VersionId=version)
    client.put_object(Bucket=bucket, Key=key, Body=b"forged")  # a new version; the locked one stays
    assert client.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read().decode() == cp["note"]

    anchor = ledger.S3Anchor(f"s3://{bucket}/prod", endpoint=get_settings().ledger_anchor_s3_endpoint, retention_days=1)
    assert anchor.latest() == (f"s3://{bucket}/{key}", cp["note"])  # the locked first version, not the forgery
    assert anchor.publish(cp["seq"], cp["note"]) == f"s3://{bucket}/{key}"
    with pytest.raises(IntegrityError, match="forked"):  # we never publish over what is there
        anchor.publish(cp["seq"], cp["note"].replace(cp["note"].split("\n")[2], "A" * 43 + "="))


def test_verify_reads_the_newest_checkpoint_from_the_bucket(chain: int, locked_bucket, unprotect, raw_sql) -> None:
    _client, bucket = locked_bucket
    auditor = person("auditor")
    with session_scope() as s:
        cp = ledger.to_dict(ledger.checkpoint(session=s, principal=auditor))
    with session_scope(write=False) as s:
        result = ledger.verify_ledger(session=s)
    assert result.ok and any(p["where"].startswith(f"s3://{bucket}/") for p in result.published)
    unprotect("audit_events", "audit_checkpoints")
    raw_sql(f"DELETE FROM audit_events WHERE seq > {cp['seq'] - 2}", "DELETE FROM audit_checkpoints")
    with session_scope(write=False) as s:
        assert (ledger.verify_ledger(session=s).problem) == "truncated"
    assert ledger.fetch(cp["anchors"][1], get_settings()) == cp["note"]
