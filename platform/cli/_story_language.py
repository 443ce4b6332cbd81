"""The demo's language monitoring chapter: the promoted language student serves, held-out addresses come in and
then newswire, and a drift check after each reads what serving logged through the model contract (lengths,
EOS, the text's log-likelihood under the model, token-id bands) against the profile stored at registration.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

LANGUAGE_MODEL = "sotu-lm-student"
CALM, NEWS = 1000, 300  # a window of unshifted traffic large enough for the 0.1 threshold (see the README)


def _send(story: Any, server: Any, prompts: list[str]) -> tuple[str, str]:
    """The prompts as clients' requests (24 new tokens, every fifth one sampled at 0.8); the
    window (since, until) that holds their log rows."""
    import httpx

    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)

    def one(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": 24, **({"temperature": 0.8, "seed": i} if i % 5 == 0 else {})}
        client.post("/generate", json=body).raise_for_status()

    with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(len(prompts))))  # four clients at a time: the replica batches them
    time.sleep(1.5)  # the replica's log flushes every second
    return since.isoformat(), (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).isoformat()


def _verdict(report: dict[str, Any]) -> str:
    drifted = [c for c, r in report["columns"].items() if r["drifted"]]
    return (f"report {report['id']}, {report['rows']} generations: {len(drifted)} of {len(report['columns'])} columns "
            f"drifted" + (f" ({', '.join(drifted[:5])}{'…' if len(drifted) > 5 else ''})" if drifted else "")
            + f", {len(report['new_alerts'])} new alert(s)")


def monitor(story: Any, student: int) -> dict[str, Any]:
    """Serve the language student; SOTU prompts, a check; Reuters prompts, a check. Returns both reports."""
    from convergence.pipelines import traffic_prompts
    from convergence.serving import ServerProcess

    calm_prompts = traffic_prompts(version_id=student, source="holdout", n=CALM, seed=21)
    news_prompts = traffic_prompts(version_id=student, source="reuters", n=NEWS, seed=22)
    with ServerProcess("language", log=story.work / "serve-language.log") as server:
        story.say(f"ops started `cvg serve language` ({server.url}); it logs each generation as the model contract's "
                  "signature says: the prompt's length, log-likelihood under the model and token-id bands, and for "
                  "greedy requests the first 16 tokens' length, EOS and likelihood — the columns the profile stored "
                  "at registration watches (sampled requests count for the prompt columns only)")
        since, until = _send(story, server, calm_prompts)
        calm = story["monitor"].check_drift(name=LANGUAGE_MODEL, since=since, until=until, evidently=False)
        story.say(f"{CALM} prompts cut from held-out addresses (the profile's kind of traffic) → monitor's check: "
                  f"{_verdict(calm)}")
        since, until = _send(story, server, news_prompts)
        news = story["monitor"].check_drift(name=LANGUAGE_MODEL, since=since, until=until, evidently=False)
        story.say(f"{NEWS} prompts from Reuters newswire (another corpus) → monitor's check: {_verdict(news)}; "
                  f"`cvg drift check {LANGUAGE_MODEL} --retrain` would run the language pipeline (the version's own "
                  "family)")
    return {"calm": calm, "news": news}
