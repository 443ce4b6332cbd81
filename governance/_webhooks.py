"""Signed, durable webhooks: subscriptions, a transactional outbox, and the deliverer.

An event's deliveries are written in the same transaction as the event (an alert), so an event
that commits is never lost and one that rolls back is never sent. A deliverer claims due
deliveries under a lease, POSTs them with an HMAC-SHA256 signature over ``timestamp.body``, and
records the outcome; a deliverer killed mid-flight leaves its lease to expire and the next one
finishes the job. Receivers deduplicate on the event id (also sent as ``Idempotency-Key``), which
is the same on every retry. Retries back off exponentially with jitter up to a maximum number of
attempts, then the delivery is dead-lettered until someone redelivers it. URLs pass the network policy
(``platform.netguard``) at subscription and again at every send; secrets are stored sealed (``_secrets``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from convergence.governance._access import require
from convergence.governance._identity import system_principal
from convergence.governance._ledger import EventIn, Subject, append, append_many
from convergence.governance._models import WEBHOOK_FORMATS, WebhookDelivery, WebhookSubscription
from convergence.governance._principal import Principal
from convergence.governance._replay import reflected_state, state_entries
from convergence.governance._secrets import resealed, seal, unseal
from convergence.platform.db import session_scope, utcnow
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound, PolicyViolation
from convergence.platform.netguard import check_url
from convergence.platform.netguard import post as guarded_post
from convergence.platform.settings import get_settings

SIGNATURE_HEADER, TIMESTAMP_HEADER, EVENT_HEADER = "Convergence-Signature", "Convergence-Timestamp", "Convergence-Event-Id"


def sign(secret: str, timestamp: int, body: str) -> str:
    return "v1=" + hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()


def verify_signature(secret: str, headers: Mapping[str, str], body: str, *, tolerance_s: int = 300,
                     now: float | None = None) -> bool:
    """What a receiver runs (README): the signature matches and the timestamp is within the replay window."""
    try:
        timestamp = int(headers[TIMESTAMP_HEADER])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False  # too old (a replay) or from the future
    return hmac.compare_digest(headers.get(SIGNATURE_HEADER, ""), sign(secret, timestamp, body))


def _check_url(url: str) -> str:
    """The network policy (``platform.netguard``): http(s), no credentials, no internal address unless allowed."""
    check_url(url)
    return url


def _check_secret(secret: str, limit: int = 100) -> None:
    """A secret signs as UTF-8; a stored one is 1 to 100 bytes of it (sealed, it fits any column it had)."""
    try:
        size = len(secret.encode())
    except UnicodeEncodeError:
        size = 0
    if not 1 <= size <= limit:
        raise InvalidInput(f"a webhook secret has 1 to {limit} bytes of UTF-8 (default: 64 random hex digits)")


def subscribe(*, session: Session, principal: Principal, url: str, events: list[str], fmt: str = "generic",
              secret: str | None = None) -> WebhookSubscription:
    """Send matching events to ``url``, signed with ``secret`` (generated when not given; shown once)."""
    require(session=session, principal=principal, permission="webhook.manage")
    _check_url(url)
    if fmt not in WEBHOOK_FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(WEBHOOK_FORMATS)}, got {fmt!r}")
    if not events:
        raise InvalidInput("subscribe to at least one event type (e.g. drift.alert, or * for all)")
    if secret is not None:
        _check_secret(secret)
    plain = secret or secrets.token_hex(32)
    sub = WebhookSubscription(url=url, secret=seal(plain), event_types=sorted(set(events)),
                              format=fmt, active=True, created_at=utcnow(), created_by=principal.name)
    session.add(sub)
    session.flush()
    append(session=session, principal=principal, action="webhook.subscribed", subject=Subject("webhook_subscription", str(sub.id)),
           payload={"url": url, "events": sub.event_types, "format": fmt,
                    "state": state_entries(session, sub)})  # the sealed secret's SHA-256, never the secret
    sub.plain_secret = plain  # shown once, to whoever subscribed; never stored as it is
    return sub


def unsubscribe(*, session: Session, principal: Principal, subscription_id: int) -> WebhookSubscription:
    """Stop sending to a receiver; its pending deliveries are dead-lettered (and can be redelivered)."""
    require(session=session, principal=principal, permission="webhook.manage")
    sub = session.get(WebhookSubscription, subscription_id)
    if sub is None:
        raise NotFound(f"no webhook subscription with id {subscription_id}")
    sub.active = False
    session.execute(update(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id,
                                                  WebhookDelivery.status == "pending")
                    .values(status="dead", last_error="subscription removed"))
    append(session=session, principal=principal, action="webhook.unsubscribed",
           subject=Subject("webhook_subscription", str(sub.id)),
           payload={"url": sub.url, "state": state_entries(session, sub)})
    return sub


def _body(sub: WebhookSubscription, event_id: str, event_type: str, created: str, data: Mapping[str, Any]) -> str:
    if sub.format == "slack":
        text = f":rotating_light: {data.get('message', event_type)}" if event_type.endswith("alert") else event_type
        return json.dumps({"text": text, "event_id": event_id}, sort_keys=True)
    return json.dumps({"id": event_id, "type": event_type, "created": created, "data": dict(data)}, sort_keys=True,
                      default=str)


def enqueue(*, session: Session, event_type: str, data: Mapping[str, Any]) -> list[WebhookDelivery]:
    """Queue one event for every active subscription that wants it, inside the caller's transaction."""
    event_id, now = str(uuid.uuid4()), utcnow()
    subs = session.execute(select(WebhookSubscription).where(WebhookSubscription.active.is_(True))).scalars()
    out = []
    for sub in subs:
        if event_type in sub.event_types or "*" in sub.event_types:
            d = WebhookDelivery(subscription_id=sub.id, event_id=event_id, event_type=event_type,
                                body=_body(sub, event_id, event_type, now.isoformat(), data), status="pending",
                                attempts=0, next_attempt_at=now, created_at=now)
            session.add(d)
            out.append(d)
    session.flush()
    return out


def post(url: str, body: str, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """(status, error) under the network policy, checked again at send time; a transport failure is (None, why)."""
    return guarded_post(url, body.encode(), {"Content-Type": "application/json",
                                             "User-Agent": "convergence-webhooks", **headers}, timeout)


def _claim(limit: int) -> list[tuple[int, str, str, str, str, str]]:
    settings, now = get_settings(), utcnow()
    with session_scope() as session:
        due = session.execute(
            select(WebhookDelivery.id).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)
            .with_for_update(skip_locked=True)).scalars().all()
        if not due:
            return []
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(due))
                        .values(locked_until=now + dt.timedelta(seconds=settings.webhook_lease_s)))
        rows = session.execute(select(WebhookDelivery.id, WebhookSubscription.url, WebhookSubscription.secret,
                                      WebhookDelivery.event_id, WebhookDelivery.body, WebhookDelivery.event_type)
                               .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
                               .where(WebhookDelivery.id.in_(due))).all()
        return [tuple(r) for r in rows]


def _backoff(attempts: int) -> float:
    base = get_settings().webhook_backoff_s
    return min(base * 2 ** (attempts - 1), 3600.0) * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto


def deliver_due(*, limit: int = 100) -> dict[str, int]:
    """One pass of the deliverer: claim due deliveries, send them, record each outcome."""
    settings = get_settings()
    counts = {"delivered": 0, "retry": 0, "dead": 0}
    for delivery_id, url, sealed, event_id, body, event_type in _claim(limit):
        ts = int(time.time())
        try:
            secret = unseal(sealed)
        except IntegrityError as exc:  # this process lacks the key: leave it, leased, to one that has it
            _unopenable(delivery_id, exc.message)
            counts["retry"] += 1
            continue
        status, error = post(url, body, {SIGNATURE_HEADER: sign(secret, ts, body), TIMESTAMP_HEADER: str(ts),
                                         EVENT_HEADER: event_id, "Idempotency-Key": event_id,
                                         "Convergence-Event-Type": event_type}, settings.webhook_timeout_s)
        outcome = _record(delivery_id, event_id, status, error)
        if outcome:
            counts[outcome] += 1
    return counts


def _unopenable(delivery_id: int, why: str) -> None:
    """Say why a delivery was not sent, without spending an attempt: the receiver is not at fault."""
    with session_scope() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                      WebhookDelivery.status == "pending").values(last_error=why))


def _record(delivery_id: int, event_id: str, status: int | None, error: str | None) -> str | None:
    """Record one attempt's outcome: delivered, retry (backed off) or dead (after the last attempt)."""
    settings = get_settings()
    with session_scope() as session:
        d = session.get(WebhookDelivery, delivery_id)
        if d is None or d.status != "pending":
            return None
        d.attempts += 1
        d.last_status, d.locked_until = status, None
        if status is not None and 200 <= status < 300:
            d.status, d.delivered_at, d.last_error = "delivered", utcnow(), None
            return "delivered"
        if d.attempts >= settings.webhook_max_attempts:
            d.status, d.last_error = "dead", error
            append(session=session, principal=system_principal(session=session, name="webhook-deliverer"),
                   action="webhook.dead_lettered", subject=Subject("webhook_delivery", str(d.id)),
                   payload={"event_id": event_id, "attempts": d.attempts, "error": error})
            return "dead"
        d.last_error = error
        d.next_attempt_at = utcnow() + dt.timedelta(seconds=_backoff(d.attempts))
        return "retry"


def deliver_until_idle(*, deadline_s: float = 30.0) -> dict[str, int]:
    """Deliver passes until nothing is due now (retries scheduled later are left for later runs)."""
    total = {"delivered": 0, "retry": 0, "dead": 0}
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        counts = deliver_due()
        for k, v in counts.items():
            total[k] += v
        if not any(counts.values()):
            break
    return total


def redeliver(*, session: Session, principal: Principal, delivery_id: int) -> WebhookDelivery:
    require(session=session, principal=principal, permission="webhook.deliver")
    d = session.get(WebhookDelivery, delivery_id)
    if d is None:
        raise NotFound(f"no webhook delivery with id {delivery_id}")
    if d.status == "pending":
        raise PolicyViolation(f"delivery {delivery_id} is still pending; the deliverer will retry it")
    d.status, d.attempts, d.next_attempt_at, d.locked_until, d.last_error = "pending", 0, utcnow(), None, None
    append(session=session, principal=principal, action="webhook.redelivery_requested",
           subject=Subject("webhook_delivery", str(d.id)), payload={"event_id": d.event_id})
    return d


def list_deliveries(*, session: Session, failed: bool = False, limit: int = 100) -> list[WebhookDelivery]:
    q = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if failed:
        q = q.where(or_(WebhookDelivery.status == "dead", WebhookDelivery.last_error.is_not(None)))
    return list(session.execute(q).scalars())


def delivery_to_dict(d: WebhookDelivery) -> dict[str, Any]:
    return {"id": d.id, "subscription_id": d.subscription_id, "event_id": d.event_id, "event_type": d.event_type,
            "status": d.status, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at.isoformat() if d.status == "pending" else None,
            "last_status": d.last_status, "last_error": d.last_error,
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}


def list_subscriptions(*, session: Session, include_inactive: bool = False) -> list[dict[str, Any]]:
    """Subscriptions without their secrets (a secret is shown once, when it is made)."""
    q = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if not include_inactive:
        q = q.where(WebhookSubscription.active.is_(True))
    return [{"id": sub.id, "url": sub.url, "events": sub.event_types, "format": sub.format, "active": sub.active,
             "created_at": sub.created_at.isoformat(), "created_by": sub.created_by}
            for sub in session.execute(q).scalars()]


RESEALED = "webhook.secret_resealed"


def rewrite_secrets(*, session: Session, principal: Principal, reason: str,
                    rewrite: Callable[[str], str | None] = resealed) -> dict[str, Any]:
    """Rewrite every stored secret ``rewrite`` changes (default: seal plain ones and those a replaced key
    sealed), one event each with the row's state so replay still rebuilds the table; through reflection,
    so migration 0010 runs it at its revision. Rows no key opens are named, not changed."""
    table = sa.Table("webhook_subscriptions", sa.MetaData(), autoload_with=session.connection())
    events, changed, unopenable = [], [], []
    for row in session.execute(sa.select(table).order_by(table.c.id)).all():
        try:
            stored = rewrite(row.secret)
        except IntegrityError:
            unopenable.append(row.id)
            continue
        if stored is None:
            continue
        session.execute(table.update().where(table.c.id == row.id).values(secret=stored))
        state = reflected_state(table.name, table.c, SimpleNamespace(**{**row._mapping, "secret": stored}))
        events.append(EventIn(principal, RESEALED, Subject("webhook_subscription", str(row.id)),
                              {"reason": reason, "state": [state]}))
        changed.append(row.id)
    if events:
        append_many(session=session, events=events)
    return {"resealed": changed, "unopenable": unopenable}


def reseal_secrets(*, session: Session, principal: Principal) -> dict[str, Any]:
    """Seal with the current key every secret still plain or sealed with a key file CVG_SECRET_KEY replaced."""
    require(session=session, principal=principal, permission="webhook.manage")
    return rewrite_secrets(session=session, principal=principal, reason="sealed with the current key")


def send_test(url: str, secret: str) -> dict[str, Any]:
    """Send one signed test event now (nothing stored) and report what the receiver answered."""
    _check_url(url)
    _check_secret(secret, limit=4000)
    event_id, ts = str(uuid.uuid4()), int(time.time())
    body = json.dumps({"id": event_id, "type": "test", "created": utcnow().isoformat(), "data": {}}, sort_keys=True)
    status, error = post(url, body, {SIGNATURE_HEADER: sign(secret, ts, body), TIMESTAMP_HEADER: str(ts),
                                     EVENT_HEADER: event_id, "Idempotency-Key": event_id,
                                     "Convergence-Event-Type": "test"}, get_settings().webhook_timeout_s)
    return {"url": url, "event_id": event_id, "status": status, "error": error,
            "ok": status is not None and 200 <= status < 300}


class ReferenceReceiver:
    """A minimal receiver that does what the README asks of one: verify, reject replays, dedupe by event id.

    Runs on localhost in a thread (the demo's "Slack"); ``events`` holds each accepted event once."""

    def __init__(self, secret: str, port: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.secret, self.events, self.rejected = secret, {}, 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if not verify_signature(receiver.secret, dict(self.headers), body):
                    receiver.rejected += 1
                    self.send_response(401)
                else:
                    receiver.events.setdefault(self.headers.get("Idempotency-Key", ""), json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/convergence"

    def __enter__(self) -> ReferenceReceiver:
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
