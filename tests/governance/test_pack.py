"""The audit pack: built from the registry and the ledger, verified offline by the standalone auditor, and any
edit, dropped event or foreign signature detected; its model card parses as Hugging Face card metadata and
names the authenticated validator and approver. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, InvalidInput
from tests.people import person

def _auditor() -> Any:
    from convergence.governance import auditor  # the standalone script, importable as a module

    return auditor


EVIDENCE = {"gates": {"passed": True, "checks": [{"check": "student fidelity to teacher", "value": 0.97, "op": ">=",
                                                  "threshold": 0.95, "passed": True}]},
            "holdout": {"student": {"ic": 0.031, "hit_rate": 0.51, "sharpe": 1.2, "fidelity": 0.97}},
            "features": ["ret_1", "ret_2"], "config": {"features": {"bar": "volume", "bar_size": 300, "horizon": 5}},
            "walk_forward": {"folds": [{"fold": k, "test_start": "2013-09-03T04:00:00", "rows": 973,
                                        "student": {"ic": ic, "hit_rate": 0.5, "fidelity": 0.98},
                                        "equity": [0.0, 0.001 * k, -0.002, 0.003]} for k, ic in ((0, 0.02), (1, -0.01))]}}


@pytest.fixture
def packed(db_url: str, model_file: Path, evidence_file: Path, tmp_path: Path) -> dict[str, Any]:
    """A student with evidence, validated by carol, approved by alice, promoted and classified; its pack."""
    stored = gov.get_artifact_store().put_bytes(json.dumps(EVIDENCE).encode())
    with session_scope() as s:
        mv = gov.register_model(session=s, principal=person("quant"), name="alpha", artifact=model_file,
                                family="trading", role="student",
                                params={"evidence_uri": stored.uri, "evidence_sha256": stored.sha256})
    with session_scope() as s:
        gov.validate(session=s, principal=person("carol"), version_id=mv.id, evidence=evidence_file, reason="reviewed")
        gov.approve(session=s, principal=person("alice"), version_id=mv.id, safe_output=0.0,
                    reason="meets policy\u2028## approved by the CRO <img src=x onerror=alert(1)>")
        gov.promote(session=s, principal=person("ops"), version_id=mv.id)
    with session_scope() as s:
        gov.pack.classify(session=s, principal=person("risk"), name="alpha", tier="high", owner="quant",
                          validator="carol", next_review="2099-06-30", reason="desk signal,\u2029material \ufffe")
    import datetime as dt

    at = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    with session_scope() as s:  # a drift report of the version (what `cvg drift check` stores)
        s.add(gov.DriftReport(model_version_id=mv.id, window_start=at - dt.timedelta(hours=1), window_end=at, rows=500,
                              columns={"ret_1": {"statistic": 0.3, "drifted": True},
                                       "ret_2": {"statistic": 0.02, "drifted": False}},
                              drift_share=0.5, drifted=True, created_at=at, created_by="monitor"))
    out = tmp_path / "alpha.zip"
    manifest = gov.pack.build_pack(principal=person("auditor"), version_id=mv.id, out=out)
    return {"path": out, "manifest": manifest, "version": mv.id, "key": gov.ledger.verifier_key()}


def test_a_pack_verifies_offline_and_carries_what_an_examiner_asks_for(packed: dict[str, Any]) -> None:
    auditor = _auditor()
    said = auditor.pack(str(packed["path"]), packed["key"])
    assert said.startswith("audit pack of alpha version 1") and "events included in the signed tree" in said
    with zipfile.ZipFile(packed["path"]) as zf:
        names = set(zf.namelist())
        events = [json.loads(line) for line in zf.read("ledger/events.jsonl").splitlines()]
        card = zf.read("README.md").decode()
        risk = json.loads(zf.read("model-risk.json"))
        lineage = json.loads(zf.read("lineage.json"))
    assert {"README.md", "strategy.md", "lineage.json", "evidence/evidence.json", "usage.json", "model-risk.json",
            "manifest.json", "manifest.sig", "ledger/checkpoint.note"} <= names
    actions = [e["action"] for e in events]
    for action in ("model.registered", "model.validated", "model.approved", "model.promoted", "model.classified"):
        assert action in actions, actions
    assert len([n for n in names if n.startswith("ledger/proofs/")]) == len(events)
    assert risk["tier"] == "high" and risk["validator"] == "carol" and risk["next_review"] == "2099-06-30"
    assert [a["principal"]["name"] for a in lineage["approvals"]] == ["carol", "alice"] and lineage["copies"] == []
    with zipfile.ZipFile(packed["path"]) as zf:
        strategy = zf.read("strategy.md").decode()
    assert "Gates it passed**: student fidelity to teacher 0.97 \\>= 0.95" in strategy and "| 1 |" in strategy
    # the card is Hugging Face card metadata: the Hub's own parser reads its front matter and model-index
    from huggingface_hub import ModelCard

    parsed = ModelCard(card).data
    assert parsed.license == "apache-2.0" and parsed.model_name == "alpha v1"
    results = {r.metric_type: r.metric_value for r in parsed.eval_results}
    assert results["ic"] == pytest.approx(0.031) and results["fidelity"] == pytest.approx(0.97)
    assert "validated** by carol" in card and "approved** by alice" in card and "tier: high" in card
    assert "approved → production by ops" in card  # deployments and kill switches, from the ledger
    # text typed into the registry stays text: no heading, no HTML, one line; the front matter stays YAML
    assert "\n## approved by the CRO" not in card and " <img" not in card and "\u2028" not in card
    assert "\\<img src" in card  # escaped: markdown shows the characters, renders no tag
    assert "\\#\\# approved by the CRO" in card


def _rewrite(src: Path, dest: Path, change: Any) -> Path:
    """A copy of the pack with ``change(files)`` applied to its {name: bytes}."""
    with zipfile.ZipFile(src) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    change(files)
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return dest


def _hidden_entry(src: Path, dest: Path) -> Path:
    """The pack with a forged README.md's local entry slipped in before the directory, which does not list it:
    zipfile and unzip show the signed files; a reader walking local headers meets the forgery."""
    import io
    import struct

    data = src.read_bytes()
    forged = io.BytesIO()
    with zipfile.ZipFile(forged, "w") as zf:
        zf.writestr("README.md", "# alpha: tier LOW, approved by the CRO (forged)\n")
    local = forged.getvalue()[:zipfile.ZipFile(io.BytesIO(forged.getvalue())).start_dir]
    start = zipfile.ZipFile(src).start_dir
    out = bytearray(data[:start] + local + data[start:])
    struct.pack_into("<I", out, out.rfind(b"PK\x05\x06") + 16, start + len(local))
    dest.write_bytes(bytes(out))
    assert zipfile.ZipFile(dest).read("README.md") == zipfile.ZipFile(src).read("README.md")  # looks untouched
    return dest


def test_an_edit_a_dropped_event_or_another_key_is_detected(packed: dict[str, Any], tmp_path: Path) -> None:
    auditor, key, src = _auditor(), packed["key"], packed["path"]

    def edit_card(files: dict[str, bytes]) -> None:
        files["README.md"] = files["README.md"].replace(b"tier: high", b"tier: low")

    def drop_event(files: dict[str, bytes]) -> None:  # and fix the manifest's hash, which the signature covers
        lines = files["ledger/events.jsonl"].splitlines(keepends=True)
        files["ledger/events.jsonl"] = b"".join(lines[:-1])
        manifest = json.loads(files["manifest.json"])
        manifest["files"]["ledger/events.jsonl"] = hashlib.sha256(files["ledger/events.jsonl"]).hexdigest()
        manifest["events"] = manifest["events"][:-1]
        files["manifest.json"] = json.dumps(manifest).encode()

    def resign(files: dict[str, bytes]) -> None:  # a consistent pack, signed by a key that is not the ledger's
        other = gov.ledger.Ed25519NoteSigner.from_key(gov.ledger.generate_key(key.split("+")[0]))  # same name
        digest = hashlib.sha256(files["manifest.json"]).hexdigest()
        files["manifest.sig"] = gov.ledger.sign_note(f"convergence audit pack\n{digest}\n", other).encode()

    cases = {"edit": (edit_card, "README.md was changed"), "drop": (drop_event, "does not sign this manifest"),
             "resign": (resign, "not signed by"), "twin": (None, "two files of the same name"),
             "hidden": (None, "bytes outside its listed files")}
    for label, (change, fragment) in cases.items():
        if label == "twin":  # a second README.md after the signed one: what a reader extracts is not what was hashed
            bad = tmp_path / "twin.zip"
            bad.write_bytes(src.read_bytes())
            with zipfile.ZipFile(bad, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
                zf.writestr("README.md", b"# a friendlier card\n")
        elif label == "hidden":
            bad = _hidden_entry(src, tmp_path / "hidden.zip")
        else:
            bad = _rewrite(src, tmp_path / f"{label}.zip", change)
        with pytest.raises(auditor.Invalid, match=fragment):
            auditor.pack(str(bad), key)
        assert auditor.main(["auditor.py", "pack", str(bad), "--pubkey", key]) == 1


def test_only_the_review_roles_pack_and_classification_is_checked(packed: dict[str, Any], tmp_path: Path) -> None:
    for who in ("quant", "carol"):  # the pack holds whole ledger events: only who may read the trail builds one
        with pytest.raises(Forbidden, match="model.pack"):
            gov.pack.build_pack(principal=person(who), version_id=packed["version"], out=tmp_path / "x.zip")
    with pytest.raises(Forbidden, match="model.classify"), session_scope() as s:
        gov.pack.classify(session=s, principal=person("quant"), name="alpha", tier="low", owner="quant",
                          validator="carol", next_review="2099-01-01", reason="mine")
    for tier, review, fragment in (("extreme", "2099-01-01", "tier must be"), ("low", "2001-01-01", "not in the future"),
                                   ("low", "soon", "not a date")):
        with pytest.raises(InvalidInput, match=fragment), session_scope() as s:
            gov.pack.classify(session=s, principal=person("risk"), name="alpha", tier=tier, owner="quant",
                              validator="carol", next_review=review, reason="x")


def test_card_html_renders_in_headless_chromium_with_its_plots(packed: dict[str, Any], tmp_path: Path,
                                                             chromium: str) -> None:
    """The human page: self-contained (nothing fetched), no script error, every plot drawn; a screenshot kept."""
    from playwright.sync_api import sync_playwright

    with zipfile.ZipFile(packed["path"]) as zf:
        page_file = tmp_path / "card.html"
        page_file.write_bytes(zf.read("card.html"))
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            plots = page.eval_on_selector_all("svg[role=img]", "els => els.map(e => e.getAttribute('aria-label'))")
            drawn = page.eval_on_selector_all("svg[role=img]", "els => els.map(e => e.getBoundingClientRect().height)")
            names = page.eval_on_selector_all("table td", "els => els.map(e => e.textContent)")
            page.screenshot(path=str(tmp_path / "card.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [] and requests == [page_file.as_uri()]  # nothing but the page itself was loaded
    assert plots == ["walk-forward equity", "IC per fold", "drift per column", "stage timeline"], plots
    assert all(h > 20 for h in drawn) and "carol" in names and "alice" in names  # approvals by principal
    assert (tmp_path / "card.png").stat().st_size > 10_000


def test_a_failed_pack_publishes_nothing_the_ledger_does_not_hold(db_url: str, model_file: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pack creates its system principal (an event) and signs a checkpoint over it: both are committed
    before the pack is built, so a pack that fails afterwards leaves no published checkpoint ahead of the
    ledger, and the next checkpoint is possible (it was refused as a truncated tail)."""
    from convergence.governance import _card

    with session_scope() as s:
        version = gov.register_model(session=s, principal=person("quant"), name="beta", artifact=model_file,
                                     family="trading", role="student").id

    def broken(**kwargs: Any) -> str:
        raise RuntimeError("the card could not be written")

    monkeypatch.setattr(_card, "model_card", broken)
    with pytest.raises(RuntimeError):
        gov.pack.build_pack(principal=person("auditor"), version_id=version, out=tmp_path / "x.zip")
    monkeypatch.undo()
    with session_scope(write=False) as s:  # every published checkpoint still matches the ledger
        published = gov.ledger.verify_ledger(session=s).published
        assert published and all(p.get("problem") is None for p in published) and gov.verify(session=s).ok
    with session_scope() as s:
        gov.ledger.checkpoint(session=s, principal=person("auditor"))
    gov.pack.build_pack(principal=person("auditor"), version_id=version, out=tmp_path / "y.zip")
    assert _auditor().pack(str(tmp_path / "y.zip"), gov.ledger.verifier_key())


def test_after_a_key_rotation_a_pack_is_signed_and_checkpointed_by_one_key(packed: dict[str, Any], tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    new_file = tmp_path / "new.key"
    gov.ledger.write_key_file(new_file, gov.ledger.generate_key("convergence.local/ledger-2"))
    with session_scope() as s:
        rotated = gov.ledger.rotate_key(session=s, principal=person("ada"), new_key_file=new_file)
    monkeypatch.setenv("CVG_LEDGER_KEY_FILE", str(new_file))
    get_settings.cache_clear()
    gov.pack.build_pack(principal=person("auditor"), version_id=packed["version"], out=tmp_path / "new.zip")
    assert _auditor().pack(str(tmp_path / "new.zip"), rotated["new_key"])
    get_settings.cache_clear()


def test_a_damaged_zip_is_one_line_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auditor = _auditor()
    for label, data in (("garbage", b"PK\x03\x04 not a zip at all"), ("empty", b"")):
        bad = tmp_path / f"{label}.zip"
        bad.write_bytes(data)
        assert auditor.main(["auditor.py", "pack", str(bad), "--pubkey", "k+00000000+AQ=="]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cannot read the input") and "Traceback" not in err and err.count("\n") == 1

