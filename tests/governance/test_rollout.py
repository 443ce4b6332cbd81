"""Governed rollout on SQLite and PostgreSQL: who may start a shadow or canary of what, one per name, the guards'
judgement, promotion only after the guards held, automatic rollback audited with an alert and its webhook, and
the split at an instant. (Real serving replicas following it: tests/serving/test_rollout.py.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select, text

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import Forbidden, IntegrityError, InvalidInput, PolicyViolation
from tests.artifacts import synthetic_artifact
from tests.people import person

SECRET = "rollout-webhook-secret-0123456789"


def _version(tmp: Path, *, stage: str) -> int:
    """A version of "m" taken to ``stage`` by three different people (registrant quant)."""
    quant, val, boss, ops = person("quant"), person("val"), person("boss"), person("ops")
    with session_scope() as s:
        vid = gov.register_model(session=s, principal=quant, name="m", family="trading", role="student",
                                 artifact=synthetic_artifact(tmp / f"m-{stage}-{id(object())}.safetensors")).id
        if stage in ("approved", "production"):
            gov.validate(session=s, version_id=vid, principal=val, evidence=tmp / "evidence.md")
            gov.approve(session=s, version_id=vid, principal=boss, reason="ok")
        if stage == "production":
            gov.promote(session=s, version_id=vid, principal=ops)
    return vid


@pytest.fixture
def versions(db_url: str, tmp_path: Path) -> dict[str, int]:
    (tmp_path / "evidence.md").write_text("# validation\n")
    return {"prod": _version(tmp_path, stage="production"), "new": _version(tmp_path, stage="approved"),
            "candidate": _version(tmp_path, stage="candidate")}


def _deploy(version_id: int, mode: str = "canary", **kw) -> gov.Deployment:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        d = gov.rollout.deploy(session=s, principal=person("ops"), version_id=version_id, mode=mode,
                               percent=kw.pop("percent", 10 if mode == "canary" else None), **kw)
        s.expunge(d)
    return d


def _events(action: str) -> list[gov.Event]:
    with session_scope(write=False) as s:
        return [e for e in gov.query_events(session=s, action=action)]


def test_a_canary_is_recorded_with_its_guards_and_replicas_see_it(versions: dict[str, int]) -> None:
    d = _deploy(versions["new"], guards={"max_disagreement": 0.05, "disagreement_bound": 1e-4}, min_requests=300)
    assert (d.status, d.mode, d.percent, d.production_id) == ("active", "canary", 10.0, versions["prod"])
    assert d.guards == {**gov.rollout.DEFAULT_GUARDS, "max_disagreement": 0.05, "disagreement_bound": 1e-4}
    [event] = _events("deployment.started")
    body = event.payload_obj
    assert (event.subject_type, event.subject_id, event.actor) == ("model_version", str(versions["new"]), "ops")
    assert body["mode"] == "canary" and body["percent"] == 10.0 and body["min_requests"] == 300
    with session_scope(write=False) as s:
        mv = gov.get_model(session=s, version_id=versions["new"])
        assert body["artifact_sha256"] == mv.artifact_sha256
        assert gov.rollout.states(session=s)["m"] == {"id": d.id, "version_id": versions["new"], "mode": "canary",
                                                       "production_id": versions["prod"], "percent": 10.0,
                                                       "guards": d.guards, "status": "active"}
        assert gov.verify(session=s).ok


@pytest.mark.parametrize("who,error,rule", [
    ("quant", Forbidden, "role-required:model.promote"),  # a registrant, not an operator
    ("auditor", Forbidden, "role-required:model.promote"),
])
def test_only_an_operator_may_start_one(versions: dict[str, int], who: str, error: type, rule: str) -> None:
    with pytest.raises(error) as refused, session_scope() as s:
        gov.rollout.deploy(session=s, principal=person(who), version_id=versions["new"], mode="shadow")
    assert refused.value.rule == rule
    assert _events("deployment.started") == [] and len(_events("model.promote_refused")) == 1


def test_the_registrant_may_not_roll_out_their_own_version(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "evidence.md").write_text("# validation\n")
    _version(tmp_path, stage="production")
    solo, val, boss = person("solo"), person("val"), person("boss")
    with session_scope() as s:
        vid = gov.register_model(session=s, principal=solo, name="m", family="trading", role="student",
                                 artifact=synthetic_artifact(tmp_path / "solo.safetensors")).id
        gov.validate(session=s, version_id=vid, principal=val, evidence=tmp_path / "evidence.md")
        gov.approve(session=s, version_id=vid, principal=boss, reason="ok")
    with pytest.raises(Forbidden) as refused, session_scope() as s:
        gov.rollout.deploy(session=s, principal=solo, version_id=vid, mode="canary", percent=5)
    assert refused.value.rule == "promoter-not-registrant"


def test_unapproved_and_tampered_versions_are_refused(versions: dict[str, int], unprotect) -> None:
    with pytest.raises(PolicyViolation, match="is candidate; only an approved version can be deployed"):
        _deploy(versions["candidate"])
    with session_scope() as s:  # someone rewrites the table's hash (the ledger still says the old one)
        s.execute(text("UPDATE model_versions SET artifact_sha256 = :h WHERE id = :i"),
                  {"h": "0" * 64, "i": versions["new"]})
    with pytest.raises(IntegrityError):
        _deploy(versions["new"])
    assert _events("deployment.started") == []


def test_bad_requests_get_one_clear_line(versions: dict[str, int]) -> None:
    for kw, fragment in [({"mode": "canary", "percent": None}, "a canary needs a share"),
                         ({"mode": "canary", "percent": 0}, "a canary needs a share"),
                         ({"mode": "canary", "percent": 100.5}, "a canary needs a share"),
                         ({"mode": "canary", "percent": float("nan")}, "a canary needs a share"),
                         ({"mode": "shadow", "percent": 10}, "a shadow scores every request"),
                         ({"mode": "blue", "percent": 10}, "mode must be shadow or canary"),
                         ({"mode": "canary", "percent": 5, "guards": {"max_error_rate": 2}}, "max_error_rate must"),
                         ({"mode": "canary", "percent": 5, "guards": {"max_p99_ms": 0}}, "max_p99_ms must be"),
                         ({"mode": "canary", "percent": 5, "guards": {"speed": 1}}, "unknown guard 'speed'"),
                         ({"mode": "canary", "percent": 5, "guards": {"max_output_drift": True}}, "must be a number"),
                         ({"mode": "canary", "percent": 5, "min_requests": 0}, "min_requests must be")]:
        with pytest.raises(InvalidInput, match=fragment), session_scope() as s:
            mode, percent = kw.pop("mode"), kw.pop("percent")
            gov.rollout.deploy(session=s, principal=person("ops"), version_id=versions["new"], mode=mode,
                               percent=percent, **kw)


def test_one_rollout_per_name_and_only_beside_production(versions: dict[str, int], tmp_path: Path) -> None:
    _deploy(versions["new"], "shadow")
    other = _version(tmp_path, stage="approved")
    with pytest.raises(PolicyViolation, match="already has an active shadow"):
        _deploy(other)
    with session_scope() as s:
        ended = gov.rollout.rollback(session=s, principal=person("ops"), name="m", reason="enough")
        assert ended is not None and ended.status == "rolled_back"
        assert gov.rollout.rollback(session=s, principal=person("ops"), name="m") is None  # nothing runs now
    assert _deploy(other).status == "active"
    [event] = _events("deployment.rolled_back")
    assert event.payload_obj["automatic"] is False and event.payload_obj["reason"] == "enough"


def test_breaches_wait_for_enough_answers_and_name_what_broke() -> None:
    guards = gov.rollout.check_guards({"max_disagreement": 0.1, "max_p99_ms": 20, "max_output_drift": 0.3,
                                       "max_mean_abs_diff": 0.5, "guard_after": 10})
    few = {"requests": 9, "errors": 9, "compared": 9, "disagreements": 9, "abs_diff_sum": 90.0, "p99_ms": 99.0,
           "output_drift": 1.0}
    assert gov.rollout.breaches(guards, few) == []  # nothing trips on nine answers
    many = {**few, "requests": 100, "errors": 1, "compared": 100, "disagreements": 11, "abs_diff_sum": 10.0,
            "p99_ms": 5.0, "output_drift": 0.2}
    assert gov.rollout.breaches(guards, many) == [{"guard": "max_disagreement", "limit": 0.1, "measured": 0.11}]
    worst = {**many, "errors": 3, "p99_ms": 25.0, "abs_diff_sum": 60.0, "output_drift": 0.4}
    assert [b["guard"] for b in gov.rollout.breaches(guards, worst)] == [
        "max_error_rate", "max_p99_ms", "max_disagreement", "max_mean_abs_diff", "max_output_drift"]


def test_promotion_waits_for_the_guards_to_hold_over_min_requests(versions: dict[str, int]) -> None:
    d = _deploy(versions["new"], guards={"max_disagreement": 0.2}, min_requests=300)
    ops = person("ops")
    for replica, n in (("a", 100), ("b", 150)):
        with session_scope() as s:
            gov.rollout.report(session=s, deployment_id=d.id, replica=replica,
                               counts={"requests": n, "errors": 0, "compared": n, "disagreements": 0,
                                       "abs_diff_sum": 0.0, "p99_ms": 3.0, "output_drift": 0.01})
    with pytest.raises(PolicyViolation, match="held for 250 of the 300 answers"), session_scope() as s:
        gov.rollout.promote(session=s, principal=ops, version_id=versions["new"])
    with session_scope() as s:  # replica a reports again: its tally is replaced, not added
        gov.rollout.report(session=s, deployment_id=d.id, replica="a",
                           counts={"requests": 200, "errors": 0, "compared": 200, "disagreements": 90,
                                   "abs_diff_sum": 0.0, "p99_ms": 4.0, "output_drift": 0.02})
        assert gov.rollout.totals(session=s, deployment_id=d.id)["requests"] == 350
    with pytest.raises(PolicyViolation, match="guard max_disagreement is broken"), session_scope() as s:
        gov.rollout.promote(session=s, principal=ops, version_id=versions["new"])
    with session_scope() as s:
        gov.rollout.report(session=s, deployment_id=d.id, replica="a",
                           counts={"requests": 200, "errors": 0, "compared": 200, "disagreements": 10,
                                   "abs_diff_sum": 0.0, "p99_ms": 4.0, "output_drift": 0.02})
    with session_scope() as s:
        done = gov.rollout.promote(session=s, principal=ops, version_id=versions["new"], reason="canary held")
        assert done.status == "promoted" and done.measured["requests"] == 350
    with session_scope(write=False) as s:
        assert gov.get_model(session=s, version_id=versions["new"]).stage == "production"
        assert gov.get_model(session=s, version_id=versions["prod"]).stage == "retired"
        events = [e.action for e in gov.query_events(session=s, subject=gov.Subject("model_version",
                                                                                     str(versions["new"])))]
        assert events[-2:] == ["model.promoted", "deployment.promoted"] and gov.verify(session=s).ok
    with pytest.raises(PolicyViolation, match="is not being rolled out"), session_scope() as s:
        gov.rollout.promote(session=s, principal=ops, version_id=versions["new"])


def test_a_tripped_guard_rolls_back_once_with_an_alert_and_a_webhook(versions: dict[str, int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from convergence.platform.settings import get_settings

    monkeypatch.setenv("CVG_WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8")
    get_settings.cache_clear()
    with session_scope() as s:
        gov.subscribe(session=s, principal=person("ada"), url="http://127.0.0.1:9/cvg",
                      events=["deployment.rolled_back"], secret=SECRET)
    d = _deploy(versions["new"], guards={"max_disagreement": 0.1})
    broken = [{"guard": "max_disagreement", "limit": 0.1, "measured": 0.9}]
    measured = {"requests": 60, "compared": 60, "disagreements": 54}
    with session_scope() as s:
        tripped = gov.rollout.trip(session=s, deployment_id=d.id, replica="r1", broken=broken, measured=measured)
        assert tripped is not None and tripped.status == "rolled_back"
    with session_scope() as s:  # a second replica tripping the same guard finds it ended
        assert gov.rollout.trip(session=s, deployment_id=d.id, replica="r2", broken=broken, measured=measured) is None
        gov.rollout.report(session=s, deployment_id=d.id, replica="r2", counts={"requests": 1})  # ignored: ended
    [event] = _events("deployment.rolled_back")
    body = event.payload_obj
    assert event.actor == "system:rollout-guard" and body["automatic"] is True and body["breached"] == broken
    assert body["measured"] == measured and body["replica"] == "r1"
    with session_scope(write=False) as s:
        [alert] = gov.list_alerts(session=s, kind="rollback")
        assert alert.severity == "critical" and "max_disagreement 0.9 > 0.1" in alert.message
        [delivery] = s.execute(select(gov.WebhookDelivery)).scalars().all()
        assert delivery.event_type == "deployment.rolled_back" and '"automatic": true' in delivery.body
        assert gov.rollout.totals(session=s, deployment_id=d.id)["replicas"] == 0
        assert gov.rollout.states(session=s)["m"]["status"] == "rolled_back" and gov.verify(session=s).ok


def test_production_changes_only_through_the_running_rollout(versions: dict[str, int]) -> None:
    ops, alice = person("ops"), person("boss")
    d = _deploy(versions["new"])
    with pytest.raises(PolicyViolation, match="has an active canary of version"), session_scope() as s:
        gov.promote(session=s, principal=ops, version_id=versions["new"])  # no evidence yet: not by the side door
    with pytest.raises(PolicyViolation, match="has an active canary"), session_scope() as s:
        gov.rollback(session=s, principal=ops, name="m")
    with pytest.raises(PolicyViolation, match="has an active canary"), session_scope() as s:
        gov.rollout.rollback(session=s, principal=ops, name="m", target="production")
    with session_scope() as s:  # rejecting the version ends its canary in the same transaction
        gov.reject(session=s, principal=alice, version_id=versions["new"], reason="found a leak")
    with session_scope(write=False) as s:
        assert s.get(gov.Deployment, d.id).status == "rolled_back"
        assert gov.rollout.states(session=s)["m"]["status"] == "rolled_back"
    [event] = _events("deployment.rolled_back")
    assert event.actor == "boss" and "version rejected: found a leak" in event.payload_obj["reason"]
    # a bare rollback right after a rollout ended asks which one was meant; --production says so
    with pytest.raises(PolicyViolation, match="nothing is being rolled out now"), session_scope() as s:
        gov.rollout.rollback(session=s, principal=ops, name="m", target="auto")
    with pytest.raises(PolicyViolation, match="is the first production version"), session_scope() as s:
        gov.rollout.rollback(session=s, principal=ops, name="m", target="production")


def test_a_stale_canary_of_a_version_no_longer_approved_serves_nothing(versions: dict[str, int], unprotect) -> None:
    d = _deploy(versions["new"])
    with session_scope() as s:  # an administrator edits the share and the stage behind the ledger's back
        s.execute(text("UPDATE deployments SET percent = 100 WHERE id = :i"), {"i": d.id})
    with pytest.raises(IntegrityError, match="percent is 100.0 in the table but 10.0 in the audit ledger"), \
            session_scope(write=False) as s:
        gov.rollout.check_deployment(session=s, deployment_id=d.id)
    with session_scope(write=False) as s:  # the ledger rebuilds what was decided
        assert gov.replay(session=s)["deployments", d.id].fields["percent"] == 10.0
    with session_scope() as s:
        s.execute(text("UPDATE model_versions SET stage = 'rejected' WHERE id = :i"), {"i": versions["new"]})
    with session_scope(write=False) as s:
        assert gov.rollout.states(session=s)["m"]["status"] == "stale"


def test_poisoned_measurements_never_block_a_rollback_and_huge_guards_are_one_line(versions: dict[str, int]) -> None:
    d = _deploy(versions["new"])
    inf = float("inf")
    with session_scope() as s:
        gov.rollout.report(session=s, deployment_id=d.id, replica="r",
                           counts={"requests": 60, "compared": 60, "abs_diff_sum": inf, "output_drift": float("nan")})
        summed = gov.rollout.totals(session=s, deployment_id=d.id)  # stored without inf or NaN, summed without them
        assert summed["abs_diff_sum"] == 0.0 and summed["output_drift"] is None and summed["requests"] == 60
        gov.rollout.trip(session=s, deployment_id=d.id, replica="r",
                         broken=[{"guard": "max_mean_abs_diff", "limit": 1.0, "measured": inf}],
                         measured={"abs_diff_sum": inf})
    with session_scope(write=False) as s:
        assert s.get(gov.Deployment, d.id).status == "rolled_back" and gov.verify(session=s).ok
    for value in (10**400, -10**400, float("inf")):
        with pytest.raises(InvalidInput, match="guard max_p99_ms must be a number"), session_scope() as s:
            gov.rollout.deploy(session=s, principal=person("ops"), version_id=versions["new"], mode="shadow",
                               guards={"max_p99_ms": value})


def test_a_trip_never_overwrites_a_promotion_committed_in_between(versions: dict[str, int], backend: str) -> None:
    """The replica's session reads the row (its report), a promotion commits, then the trip: on PostgreSQL the
    two interleave (SQLite's write sessions lock at BEGIN, so there the trip simply comes after). It checks the
    outcome; the stale read the trip's re-read under the lock guards against did not reproduce here (the test
    also passes without it), so it is a defence, not a demonstrated failure."""
    d = _deploy(versions["new"], min_requests=1)
    with session_scope() as s:
        gov.rollout.report(session=s, deployment_id=d.id, replica="a", counts={"requests": 5})
    with session_scope() as replica:
        gov.rollout.report(session=replica, deployment_id=d.id, replica="b", counts={"requests": 5})
        if backend == "postgres":
            with session_scope() as operator:
                gov.rollout.promote(session=operator, principal=person("ops"), version_id=versions["new"])
        tripped = gov.rollout.trip(session=replica, deployment_id=d.id, replica="b",
                                   broken=[{"guard": "max_error_rate", "limit": 0.02, "measured": 0.5}],
                                   measured={"requests": 5})
    if backend == "postgres":
        assert tripped is None  # it read the row again under the lock
        with session_scope(write=False) as s:
            assert s.get(gov.Deployment, d.id).status == "promoted" and _events("deployment.rolled_back") == []
    else:
        assert tripped is not None and tripped.status == "rolled_back"


def test_a_dropped_deployments_table_still_disagrees_with_the_ledger(adopted: str, versions: dict[str, int]) -> None:
    _deploy(versions["new"])
    with session_scope(write=False) as s:
        assert gov.reconcile(session=s) is None
    with session_scope() as s:  # an older revision has no such table; at head, its absence is evidence
        s.execute(text("DROP TABLE deployment_tallies"))
        s.execute(text("DROP TABLE deployments"))
    with session_scope(write=False) as s:
        found = gov.reconcile(session=s)
    assert (found.table, found.problem) == ("deployments", "missing")


def test_the_split_at_an_instant(versions: dict[str, int]) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    d = _deploy(versions["new"], percent=25)
    during = dt.datetime.now(dt.timezone.utc)
    with session_scope() as s:
        gov.rollout.rollback(session=s, principal=person("ops"), name="m")
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    with session_scope(write=False) as s:
        assert gov.rollout.active_at(session=s, name="m", at=before) is None
        assert gov.rollout.active_at(session=s, name="m", at=during).id == d.id
        assert gov.rollout.active_at(session=s, name="m", at=after) is None
