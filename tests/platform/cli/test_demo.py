"""The main job (`cvg demo`) on the embedded default: a fresh CVG_HOME, SQLite, local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.ray
@pytest.mark.slow
def test_demo_tells_the_whole_story(cvg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chromium: str) -> None:
    env = {"CVG_HOME": str(tmp_path / "home"), "CVG_DATABASE_URL": ""}
    monkeypatch.delenv("CVG_DATABASE_URL", raising=False)
    result = cvg("demo", "--quick", env=env)
    assert result.code == 0, result.err[-3000:]
    for fragment in ("migrated", "a sandbox", "installed the first admins", "`cvg api` is up", "sam approved each grant",
                     "energy budget", "train_teacher", "registered teacher", "validated",
                     "refused by role (role-required:model.approve) and then by identity (approver-not-registrant)",
                     "(compiled, onnxruntime)", "picked as fastest at batch 1",
                     "without a key: 401", "ops' kill was refused", "flagged killed=True",
                     "drift check", "signed webhook", "budgets:", "language pipeline", "nina's run",
                     "lineage: corpus", "the language run", "promoted both to production", "audit chain verified",
                     "auditor signed checkpoint", "published outside the database",
                     "match the signed checkpoint", "is included in the signed tree", "classified",
                     "auditor packed student", "OK: audit pack of", "revoked the", "summary",
                     "registered student", "ops started a shadow of", "were all answered by version(s)",
                     "the replica's guard tripped and rolled it back itself", "ops promoted it",
                     "showed the auditor 5 of 5 pages"):
        assert fragment in result.out, (fragment, [line for line in result.out.splitlines()  # what happened instead
                                                   if "gates" in line or "language" in line or "failed" in line])
    assert (tmp_path / "home" / "convergence.db").exists()
    import re

    served = int(re.search(r"([\d,]+) answers of the model and 1 killed one", result.out).group(1).replace(",", ""))
    checked = int(re.search(r"drift check \(report \d+, ([\d,]+) predictions of the model", result.out)
                  .group(1).replace(",", ""))
    assert served == checked  # the demo's count and the drift report's agree
    verify = cvg("audit", "verify", "--json", env=env)  # as the OS account, an auditor on the demo's sandbox
    assert verify.json["ok"] and verify.json["checked"] >= 14
    assert [p["signed"] for p in verify.json["published"]] == [True]  # the demo's checkpoint, outside the database
    production = cvg("models", "list", "--stage", "production", "--json", env=env).json
    assert sorted((m["family"], m["role"]) for m in production) == [("language", "student"), ("trading", "quantized"),
                                                                    ("trading", "student")]
    assert {m["created_by"] for m in production} == {"quinn", "nina"}
    # every persona acted through the API with its own key: the chain says so for each of them
    events = cvg("audit", "query", "--limit", "10000", "--json", env=env).json
    by_key = {e["actor"] for e in events if e["payload"]["principal"]["auth"] == "api_key"}
    assert {"ada", "sam", "quinn", "nina", "carol", "alice", "ops", "risk", "fin", "auditor", "monitor"} <= by_key
    approvals = [e for e in events if e["action"] == "api_key.approved"]
    assert approvals and {e["actor"] for e in approvals} == {"sam"}  # ada asked for each key, sam let it work
    refusals = {(e["actor"], e["payload"]["rule"]) for e in events if e["action"].endswith("_refused")}
    assert refusals == {("quinn", "role-required:model.approve"), ("quinn", "approver-not-registrant"),
                        ("ops", "role-required:serving.kill")}
    # the examiner's zip verifies offline with the public key alone, and names who validated and approved
    import subprocess
    import sys
    import zipfile

    pack = next((tmp_path / "home" / "demo").glob("audit-pack-*.zip"))
    key = cvg("audit", "pubkey", env=env).out.strip()
    auditor = Path(__file__).resolve().parents[3] / "governance" / "auditor.py"
    checked = subprocess.run([sys.executable, str(auditor), "pack", str(pack), "--pubkey", key], capture_output=True,
                             text=True)
    assert checked.returncode == 0 and checked.stdout.startswith("OK: audit pack of es-trading-student"), checked
    card = zipfile.ZipFile(pack).read("README.md").decode()
    assert "validated** by carol" in card and "approved** by alice" in card and "tier: high" in card
    page = zipfile.ZipFile(pack).read("card.html").decode()  # equity, IC per fold, drift, energy, stages
    assert page.count('<svg role="img"') == 5 and "not enough points" not in page and "nothing recorded" not in page
    keys = cvg("principals", "keys", "--json", env=env).json
    assert keys and all(k["state"] != "active" for k in keys)  # the demo revoked what it issued
    _console_on_the_demos_data(cvg, env, tmp_path, chromium)


def _console_on_the_demos_data(cvg, env: dict[str, str], tmp_path: Path, chromium: str) -> None:  # type: ignore[no-untyped-def]
    """The console on the demo's own database, in chromium: a fresh auditor key (ada asks, sam approves: --as works
    on the sandbox), the production student's approvals by principal, and the in-browser check of its approval."""
    from convergence.serving import ServerProcess
    from tests.platform.api.test_console_browser import SHOTS, browse

    issued = cvg("principals", "create-key", "auditor", "--expires", "1h", "--as", "ada", "--json", env=env).json
    assert cvg("principals", "approve-key", issued["key_id"], "--as", "sam", env=env).code == 0
    events = cvg("audit", "query", "--action", "model.approved", "--actor", "alice", "--json", env=env).json
    student, seq = int(events[0]["subject_id"]), events[0]["seq"]
    with ServerProcess("api", log=tmp_path / "console-api.log", env=env, command=("api",)) as api, \
            browse(chromium, api.url, SHOTS / "demo") as visit:
        page = visit.page
        page.goto(api.url + "/ui/")
        page.fill("#api_key", issued["key"])
        page.click("#key-signin button[type=submit]")
        page.wait_for_selector("#inventory")
        visit.shot("inventory")
        assert page.locator("tr[data-model=es-trading-student] a.production").count() == 1
        page.goto(f"{api.url}/ui/models/{student}")
        actors = page.eval_on_selector_all("#approval-trail td.actor", "ts => ts.map(t => t.textContent)")
        assert actors == ["carol", "alice"], actors
        visit.shot("model")
        page.goto(f"{api.url}/ui/ledger?before={seq + 1}")
        page.click(f"button.check[data-seq='{seq}']")
        page.wait_for_selector(f"output.verdict[data-seq='{seq}'][data-result]")
        assert page.get_attribute(f"output.verdict[data-seq='{seq}']", "data-result") == "verified"
        visit.shot("ledger")
    assert visit.errors == [] and visit.failed == [], (visit.errors, visit.failed)
