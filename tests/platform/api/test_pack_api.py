"""The audit pack and the model-risk fields over HTTP: an auditor's key downloads a pack the standalone auditor
verifies; a registrant's is refused (403, JSON); a classification needs the risk role and a valid tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convergence import governance as gov
from convergence.platform.db import session_scope
from tests.people import api_key, person
from tests.platform.api.conftest import bearer

def test_an_auditor_downloads_a_pack_that_verifies_offline(client: Any, model_file: Path, tmp_path: Path) -> None:
    with session_scope() as s:
        version = gov.register_model(session=s, principal=person("quant"), name="alpha", artifact=model_file,
                                     family="trading", role="student").id
    risk = bearer(api_key("risk-bot", "risk"))
    body = {"tier": "medium", "owner": "quant", "validator": "carol", "next_review": "2099-01-31", "reason": "signal"}
    assert client.put("/model-names/alpha/classification", headers=risk, json=body).json()["tier"] == "medium"
    bad = client.put("/model-names/alpha/classification", headers=risk, json={**body, "tier": "huge"})
    assert bad.status_code == 422 and bad.json()["error"] == "InvalidInput"
    refused = client.get(f"/models/{version}/pack", headers=bearer(api_key("dev-bot", "registrant")))
    assert refused.status_code == 403 and "model.pack" in refused.json()["message"]
    answer = client.get(f"/models/{version}/pack", headers=bearer(api_key("exam-bot", "auditor")))
    assert answer.status_code == 200 and answer.content[:2] == b"PK"
    pack = tmp_path / "alpha.zip"
    pack.write_bytes(answer.content)
    from convergence.governance import auditor

    assert auditor.main(["auditor.py", "pack", str(pack), "--pubkey", gov.ledger.verifier_key()]) == 0
