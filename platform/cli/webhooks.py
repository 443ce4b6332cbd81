"""``cvg webhooks``: subscriptions, the delivery outbox, redelivery and a signed test."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, actor_or_fail, console, print_json, print_table

app = typer.Typer(help="Signed, durable webhooks for alerts: subscribe, list deliveries, deliver, redeliver, test.",
                  no_args_is_help=True)


@app.command()
def subscribe(
    url: Annotated[str, typer.Argument(help="Receiver URL (http or https).")],
    events: Annotated[str, typer.Option("--events", help="Comma-separated event types, or *.")] = "drift.alert",
    fmt: Annotated[str, typer.Option("--format", help="generic (JSON event) or slack (incoming-webhook text).")] = "generic",
    secret: Annotated[str | None, typer.Option("--secret", help="Signing secret (default: generated, shown once).")] = None,
    actor: ActorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Subscribe a receiver; deliveries are signed with the secret (HMAC-SHA256 over timestamp.body)."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        sub = gov.subscribe(session=session, actor=who, url=url, events=[e.strip() for e in events.split(",") if e.strip()],
                            fmt=fmt, secret=secret)
        data = {"id": sub.id, "url": sub.url, "events": sub.event_types, "format": sub.format, "secret": sub.secret}
    if json_out:
        print_json(data)
    else:
        console().print(f"subscription {data['id']} → {url} for {', '.join(data['events'])}\n"
                        f"signing secret (store it now; it is not shown again): {data['secret']}")


@app.command()
def unsubscribe(subscription_id: int, actor: ActorOpt = None) -> None:
    """Stop delivering to a receiver; its pending deliveries are dead-lettered."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        sub = gov.unsubscribe(session=session, subscription_id=subscription_id, actor=who)
        url = sub.url
    console().print(f"subscription {subscription_id} ({url}) removed")


@app.command("list")
def list_(failed: Annotated[bool, typer.Option("--failed", help="Only dead-lettered or erroring deliveries.")] = False,
          limit: Annotated[int, typer.Option()] = 100, json_out: JsonOpt = False) -> None:
    """Recent deliveries with status, attempts and the last error."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    with session_scope(write=False) as session:
        rows = [{"id": d.id, "subscription_id": d.subscription_id, "event_id": d.event_id, "event_type": d.event_type,
                 "status": d.status, "attempts": d.attempts, "next_attempt_at": d.next_attempt_at.isoformat(),
                 "last_status": d.last_status, "last_error": d.last_error,
                 "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
                for d in gov.list_deliveries(session=session, failed=failed, limit=limit)]
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} webhook deliveries", ("id", "sub", "event", "type", "status", "attempts", "next attempt",
                                                    "last error"),
                ((r["id"], r["subscription_id"], r["event_id"][:8], r["event_type"], r["status"], r["attempts"],
                  r["next_attempt_at"][:19], r["last_error"] or "") for r in rows))


@app.command()
def deliver(loop: Annotated[bool, typer.Option("--loop", help="Keep delivering (a long-running worker).")] = False,
            interval: Annotated[float, typer.Option("--interval", help="Seconds between passes with --loop.")] = 1.0,
            json_out: JsonOpt = False) -> None:
    """Deliver what is due now (or keep doing so with --loop, as the Helm chart's worker does)."""
    from convergence import governance as gov

    while True:
        counts = gov.deliver_until_idle()
        if json_out:
            print_json(counts)
        elif any(counts.values()) or not loop:
            console().print(", ".join(f"{k} {v}" for k, v in counts.items()))
        if not loop:
            return
        time.sleep(interval)


@app.command()
def redeliver(delivery_id: int, actor: ActorOpt = None) -> None:
    """Queue a dead-lettered (or delivered) delivery again, with the same event id."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope

    who = actor_or_fail(actor)
    with session_scope() as session:
        gov.redeliver(session=session, delivery_id=delivery_id, actor=who)
    counts = gov.deliver_until_idle(deadline_s=10)
    console().print(f"delivery {delivery_id} queued again; " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command()
def test(url: Annotated[str, typer.Argument(help="Receiver URL.")],
         secret: Annotated[str, typer.Option("--secret", help="The secret the receiver verifies with.")],
         json_out: JsonOpt = False) -> None:
    """Send one signed test event now; exit 6 if the receiver does not answer 2xx."""
    from convergence import governance as gov
    from convergence.platform.errors import Unavailable

    result = gov.send_test(url, secret)
    if json_out:
        print_json(result)
    else:
        console().print(f"{url}: {result['status'] or result['error']}")
    if not result["ok"]:
        raise Unavailable(f"the receiver at {url} did not accept the test event: {result['error'] or result['status']}")
