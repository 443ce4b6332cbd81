"""Webhooks over HTTP: the network policy's refusals as documented statuses, the secret shown once and sealed."""

from __future__ import annotations

import pytest

from tests.people import api_key
from tests.platform.api.conftest import bearer


@pytest.fixture
def admin(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return bearer(api_key("hooks-admin", "admin"))


def test_refusals_are_403_and_422_without_the_credentials(client, admin: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", "")
    get_settings.cache_clear()
    metadata = client.post("/webhooks/subscriptions", headers=admin, json={"url": "http://169.254.169.254/"})
    assert metadata.status_code == 403 and metadata.json()["error"] == "PolicyViolation"
    assert metadata.json()["message"] == "refused by policy: 169.254.169.254 is link-local"
    tested = client.post("/webhooks/test", headers=admin, json={"url": "http://127.0.0.1:5432/", "secret": "s"})
    assert tested.status_code == 403 and "127.0.0.1 is loopback" in tested.json()["message"]
    creds = client.post("/webhooks/subscriptions", headers=admin, json={"url": "https://u:hunter2@hooks.example/"})
    assert creds.status_code == 422 and "hunter2" not in creds.text
    get_settings.cache_clear()


def test_the_secret_is_answered_once_and_resealing_is_for_admins(client, admin: dict[str, str]) -> None:
    made = client.post("/webhooks/subscriptions", headers=admin,
                       json={"url": "http://127.0.0.1:9/hook", "secret": "the-receivers-secret"})
    assert made.status_code == 201 and made.json()["secret"] == "the-receivers-secret"
    listed = client.get("/webhooks/subscriptions", headers=admin)
    assert listed.status_code == 200 and "the-receivers-secret" not in listed.text
    resealed = client.post("/webhooks/reseal", headers=admin)
    assert resealed.status_code == 200 and resealed.json() == {"resealed": [], "unopenable": []}
    refused = client.post("/webhooks/reseal", headers=bearer(api_key("hooks-ops", "operator")))
    assert refused.status_code == 403 and "admin" in refused.json()["message"]
