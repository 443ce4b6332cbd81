"""The demo's rollout chapter: a retrained student goes through four eyes, then serves beside production as a
shadow, as a canary whose guard rolls it back on its own, and as a canary that holds and is promoted; every
answer names the version, artifact and approval that gave it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

TRADING_MODEL = "es-trading-student"


def _wait(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    from convergence.platform.errors import Unavailable

    raise Unavailable(f"the serving replica did not follow the rollout within {timeout_s:.0f} s")


def retrain(story: Any, quick: dict[str, Any]) -> int | None:
    """quinn's retraining run (quick settings, another seed), validated by carol and approved by alice; None when
    its gates failed (nothing registered: the chapter is skipped and says so)."""
    from convergence.platform.cli._story import _follow

    story.say("quinn asked for a retraining run after the drift check (quick settings, another seed): the same "
              "pipeline, a new candidate student")
    summary = _follow(story, story["quinn"], story["quinn"].run_pipeline(family="trading",
                                                                         overrides={**quick, "seed": 8}))
    if summary["status"] != "succeeded":
        story.say(f"the retraining run's gates failed, nothing registered ({'; '.join(summary['gates']['failed'])});"
                  " the rollout chapter is skipped")
        return None
    new = summary["versions"]["student"]
    evidence = story["carol"].upload_artifact(source=Path(summary["evidence"]))["sha256"]
    story["carol"].validate_model(version_id=new, evidence_sha256=evidence, reason="retraining evidence reviewed")
    story["alice"].approve_model(version_id=new, reason="meets model risk policy; roll out under guards",
                                 safe_output=0.0)
    story.say(f"run {summary['run_id']} registered student {new}; carol validated and alice approved it (not in "
              "production yet: an approved version is rolled out, not switched on)")
    return new


def rollout(story: Any, X: Any, new: int) -> dict[str, Any]:
    """Shadow, a canary that trips its guard, a canary that holds, promotion; on one real replica."""
    import httpx

    from convergence import governance as gov
    from convergence.serving import ServerProcess

    secret, ops = "demo-rollout-secret", story["ops"]
    rows = [X[i % len(X)].tolist() for i in range(600)]  # the holdout's ticks, again from the start when they run out
    desk = {"authorization": story["desk"].http.headers["authorization"]}
    with ServerProcess("trading", log=story.work / "serve-rollout.log",
                       env={"CVG_SERVE_AUTH": "required", "CVG_SERVE_ROLLOUT_REPORT_S": "0.5"}) as server, \
            httpx.Client(base_url=server.url, timeout=30, headers=desk) as client, \
            gov.ReferenceReceiver(secret) as receiver:
        def following(mode: str | None) -> bool:
            got = client.get("/info").json()["trading"].get("rollout")
            return (got or {}).get("mode") == mode if mode else got is None

        sub = story["ada"].subscribe(url=receiver.url, events=["deployment.rolled_back"], secret=secret)
        prod = client.post("/predict", json={"rows": [rows[0]]}).json()
        shadow = ops.deploy_model(version_id=new, mode="shadow", reason="score live traffic first")
        _wait(lambda: following("shadow"))
        seen = {client.post("/predict", json={"rows": [x]}).json()["version_id"] for x in rows[:300]}
        measured = _wait(lambda: (m := ops.model_rollout(name=TRADING_MODEL)["measured"])["compared"] >= 300 and m)
        story.say(f"ops started a shadow of {new} (deployment {shadow['id']}) on a fresh `cvg serve trading`: the desk's "
                  f"300 requests were all answered by version(s) {sorted(seen)}; the shadow scored the same rows after "
                  f"each answer went out: mean |difference| {measured['abs_diff_sum'] / measured['compared']:.2e}, "
                  f"logged under its own version and flagged shadow")
        ops.rollback_model(name=TRADING_MODEL, reason="shadow seen; next a canary")
        strict = ops.deploy_model(version_id=new, mode="canary", percent=30, min_requests=100,
                                  guards={"max_mean_abs_diff": max(measured["abs_diff_sum"] / measured["compared"] / 10, 1e-12),
                                          "guard_after": 20}, reason="canary under a strict guard")
        _wait(lambda: following("canary"))
        sent = 0
        for i, x in enumerate(rows):
            client.post("/predict", json={"rows": [x]}, headers={"x-request-key": f"trip-{i}"})
            sent += 1
            if i % 20 == 19 and following(None):
                break
        _wait(lambda: following(None), 5)
        # the replica delivers the guard's webhook itself, signed (the shadow's manual rollback sent one too)
        tripped = _wait(lambda: [e for e in receiver.events.values() if e["data"].get("automatic")], 15)
        story.say(f"ops started a 30 % canary (deployment {strict['id']}) with a guard ten times stricter than the shadow's "
                  f"difference: after {sent} requests the replica's guard tripped and rolled it back itself "
                  f"(system:rollout-guard, deployment.rolled_back with the measured values, a critical alert); the "
                  f"receiver verified its signed webhook ({tripped[0]['data']['breached'][0]['guard']} "
                  f"{tripped[0]['data']['breached'][0]['measured']:.2e} > {tripped[0]['data']['breached'][0]['limit']:.2e})")
        held = ops.deploy_model(version_id=new, mode="canary", percent=30, min_requests=100,
                                guards={"max_error_rate": 0.01, "max_p99_ms": 250.0}, reason="canary under sane guards")
        _wait(lambda: following("canary"))
        routes = [client.post("/predict", json={"rows": [x]}, headers={"x-request-key": f"desk-{i}"})
                  .headers["x-route"] for i, x in enumerate(rows)]
        _wait(lambda: ops.model_rollout(name=TRADING_MODEL)["promotable"])
        ops.deploy_model(version_id=new, mode="promote", reason="the canary held")
        _wait(lambda: client.post("/predict", json={"rows": [rows[0]]}).json()["version_id"] == new)
        after = client.post("/predict", json={"rows": [rows[0]]})
        story["ada"].unsubscribe(subscription_id=sub["id"])
    story.say(f"a 30 % canary (deployment {held['id']}) answered {routes.count('canary')} of {len(routes)} requests "
              f"(one request key, one version); its guards held, ops promoted it: the replica answers with {new} now "
              f"(was {prod['version_id']}), every answer naming artifact {after.json()['artifact_sha256'][:12]}… and "
              f"approval seq {after.headers['x-approval-seq']}")
    return {"deployments": [shadow["id"], strict["id"], held["id"]], "promoted": new, "previous": prod["version_id"]}
