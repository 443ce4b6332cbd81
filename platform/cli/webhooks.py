"""``cvg webhooks``: subscriptions, the delivery outbox, redelivery and a signed test."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from convergence.platform.cli._common import ActorOpt, JsonOpt, console, operations, print_json, print_table

app = typer.Typer(help="Signed, durable webhooks for alerts: subscribe (the admin role), list subscriptions and "
                       "deliveries, deliver, redeliver, test.", no_args_is_help=True)


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
    data = operations(actor).subscribe(url=url, events=[e.strip() for e in events.split(",") if e.strip()],
                                       format=fmt, secret=secret)
    if json_out:
        print_json(data)
    else:
        console().print(f"subscription {data['id']} → {url} for {', '.join(data['events'])}\n"
                        f"signing secret (store it now; it is not shown again): {data['secret']}")


@app.command()
def unsubscribe(subscription_id: int, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Stop delivering to a receiver; its pending deliveries are dead-lettered."""
    data = operations(actor).unsubscribe(subscription_id=subscription_id)
    print_json(data) if json_out else console().print(f"subscription {subscription_id} ({data['url']}) removed")


@app.command()
def subscriptions(all_: Annotated[bool, typer.Option("--all", help="Include removed subscriptions.")] = False,
                  actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Subscriptions (ids for `unsubscribe`); secrets are never shown again."""
    rows = operations(actor).list_subscriptions(include_inactive=all_)
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} webhook subscriptions", ("id", "url", "events", "format", "active", "by", "since"),
                ((r["id"], r["url"], ", ".join(r["events"]), r["format"], r["active"], r["created_by"],
                  r["created_at"][:19]) for r in rows))


@app.command()
def reseal(actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Seal every secret still stored plain, or with a key file CVG_SECRET_KEY replaced, with the current key."""
    data = operations(actor).reseal_secrets()
    if json_out:
        print_json(data)
        return
    console().print(f"{len(data['resealed'])} webhook secrets sealed with the current key"
                    + (f"; {len(data['unopenable'])} no key here opens (subscriptions "
                       f"{', '.join(map(str, data['unopenable']))})" if data["unopenable"] else ""))


@app.command("list")
def list_(failed: Annotated[bool, typer.Option("--failed", help="Only dead-lettered or erroring deliveries.")] = False,
          limit: Annotated[int, typer.Option()] = 100, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Recent deliveries with status, attempts and the last error."""
    rows = operations(actor).list_deliveries(failed=failed, limit=limit)
    if json_out:
        print_json(rows)
        return
    print_table(f"{len(rows)} webhook deliveries", ("id", "sub", "event", "type", "status", "attempts", "next attempt",
                                                    "last error"),
                ((r["id"], r["subscription_id"], r["event_id"][:8], r["event_type"], r["status"], r["attempts"],
                  (r["next_attempt_at"] or "—")[:19], r["last_error"] or "") for r in rows))


@app.command()
def deliver(loop: Annotated[bool, typer.Option("--loop", help="Keep delivering (a long-running worker).")] = False,
            interval: Annotated[float, typer.Option("--interval", help="Seconds between passes with --loop.")] = 1.0,
            actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Deliver what is due now (or keep doing so with --loop, as the Helm chart's worker does)."""
    ops = operations(actor)
    while True:
        counts = ops.deliver_webhooks()
        if json_out:
            print_json(counts)
        elif any(counts.values()) or not loop:
            console().print(", ".join(f"{k} {v}" for k, v in counts.items()))
        if not loop:
            return
        time.sleep(interval)


@app.command()
def redeliver(delivery_id: int, actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Queue a dead-lettered (or delivered) delivery again, with the same event id."""
    data = operations(actor).redeliver(delivery_id=delivery_id)
    print_json(data) if json_out else console().print(
        f"delivery {delivery_id} queued again; " + ", ".join(f"{k} {v}" for k, v in data.items() if k != "delivery_id"))


@app.command()
def test(url: Annotated[str, typer.Argument(help="Receiver URL.")],
         secret: Annotated[str, typer.Option("--secret", help="The secret the receiver verifies with.")],
         actor: ActorOpt = None, json_out: JsonOpt = False) -> None:
    """Send one signed test event now; exit 6 if the receiver does not answer 2xx."""
    from convergence.platform.errors import Unavailable

    result = operations(actor).test_webhook(url=url, secret=secret)
    if json_out:
        print_json(result)
    else:
        console().print(f"{url}: {result['status'] or result['error']}")
    if not result["ok"]:
        raise Unavailable(f"the receiver at {url} did not accept the test event: {result['error'] or result['status']}")
