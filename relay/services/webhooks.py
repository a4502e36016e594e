"""The post-call webhook: a signed JSON document, delivered from a durable outbox.

Each document is stored in the ``webhook_outbox`` table before anything is sent, so a restart
loses nothing: whatever is still ``pending`` is sent by the next process that runs the outbox.
Delivery is retried with exponential backoff (``base``, doubling, at most ``ceiling``) and the
row is ``parked`` after ``max_attempts`` failures, where an operator can see it with its last
error. A 2xx answer marks it ``delivered``; it is never sent again after that.

Every request carries ``X-Relay-Signature: t=<unix seconds>,v1=<hex>``, the hex HMAC-SHA256
of ``"<t>.<raw body>"`` under ``RELAY_WEBHOOK_SECRET``. A receiver recomputes it over the raw
body it received (see :func:`verify`) and refuses old timestamps to stop replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from relay.storage.db import Database
from relay.storage.outcomes import WebhookDelivery
from relay.waits import event_set

log = structlog.get_logger("relay.services.webhooks")

HEADER: Final = "X-Relay-Signature"
PENDING, DELIVERED, PARKED = "pending", "delivered", "parked"


def signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The ``X-Relay-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` and is at most ``tolerance`` s old."""
    parts: dict[str, str] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, value)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp=timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookOutbox:
    """Stores post-call documents and delivers them, retrying with backoff."""

    def __init__(
        self,
        db: Database,
        http: httpx.AsyncClient,
        *,
        secret: str | None,
        max_attempts: int = 8,
        base: float = 5.0,
        ceiling: float = 3600.0,
        timeout: float = 10.0,
        poll: float = 5.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.http = http
        self.secret = secret
        self.max_attempts = max_attempts
        self.base = base
        self.ceiling = ceiling
        self.timeout = timeout
        self.poll = poll
        self.now = now
        self.delivered = 0
        self.failures = 0
        self._wake = asyncio.Event()

    async def enqueue(
        self, *, call_sid: str, agent: str, url: str, document: Mapping[str, Any]
    ) -> bool:
        """Store a call's document for ``url``. A call already delivered to ``url`` is not sent
        again (False); one still pending gets the newer document."""
        body = orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
        now = self.now()
        try:
            async with self.db.session() as session, session.begin():
                existing = await session.scalar(
                    select(WebhookDelivery).where(
                        WebhookDelivery.call_sid == call_sid, WebhookDelivery.url == url
                    )
                )
                if existing is not None:
                    if existing.status != PENDING:
                        return False
                    existing.body = body
                else:
                    session.add(
                        WebhookDelivery(
                            call_sid=call_sid, agent=agent, url=url, body=body, status=PENDING,
                            attempts=0, next_attempt_at=now, created_at=now,
                        )
                    )  # fmt: skip
        except IntegrityError:
            return False  # another process stored it first
        self._wake.set()
        return True

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failures."""
        return float(min(self.ceiling, self.base * 2 ** max(0, attempts - 1)))

    async def deliver_due(self) -> int:
        """One pass: try every pending document that is due. Returns how many were delivered."""
        now = self.now()
        async with self.db.session() as session:
            rows = (
                await session.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now
                    )
                    .order_by(WebhookDelivery.id)
                    .limit(100)
                )
            ).all()
        delivered = 0
        for row in rows:
            if not await self._claim(row, now):
                continue  # another process is sending it
            delivered += await self._attempt(row)
        return delivered

    async def _claim(self, row: WebhookDelivery, now: datetime) -> bool:
        """Lease the row for this attempt, so two processes never send it at once."""
        lease = now + timedelta(seconds=self.timeout + 30)
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.attempts == row.attempts,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(next_attempt_at=lease)
            )
        return bool(getattr(result, "rowcount", 0))

    async def _attempt(self, row: WebhookDelivery) -> int:
        body = row.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": "relay-webhook/1"}
        if self.secret:
            headers[HEADER] = signature(self.secret, body, timestamp=int(time.time()))
        error: str | None = None
        try:
            response = await self.http.post(
                row.url, content=body, headers=headers, timeout=self.timeout
            )
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempts = row.attempts + 1
        now = self.now()
        values: dict[str, Any] = {"attempts": attempts, "last_error": error}
        if error is None:
            values.update(status=DELIVERED, delivered_at=now)
        elif attempts >= self.max_attempts:
            values.update(status=PARKED)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=self.backoff(attempts)))
        async with self.db.session() as session, session.begin():
            await session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(**values)
            )
        if error is None:
            self.delivered += 1
            log.info("webhook_delivered", call_sid=row.call_sid, attempts=attempts)
            return 1
        self.failures += 1
        log.warning(
            "webhook_parked" if values.get("status") == PARKED else "webhook_failed",
            call_sid=row.call_sid, attempts=attempts, error=error,
        )  # fmt: skip
        return 0

    async def run(self) -> None:
        """Deliver forever: whenever a document is stored, and every ``poll`` seconds."""
        while True:
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a moment: try again later
                log.error("webhook_outbox_failed", error=repr(exc)[:300])
            # Not asyncio.wait_for, which can swallow the app's cancellation (relay.waits).
            await event_set(self._wake, self.poll)
            self._wake.clear()

    async def rows(self, call_sid: str | None = None) -> list[WebhookDelivery]:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if call_sid is not None:
            query = query.where(WebhookDelivery.call_sid == call_sid)
        async with self.db.session() as session:
            return list((await session.scalars(query)).all())
