"""The calendar feed's data: each agent's bookings as calendar events, and the feed's secret.

The feed URL's token is its only protection, so it is a secret: ``HMAC-SHA256(secret, agent)``,
where the secret is ``RELAY_FEED_SECRET``, else the admin token, else a random secret created
once in the data directory (``runtime/feed-secret``). :mod:`relay.web.feeds` serves the feed;
``relay business feed-url AGENT`` prints the URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from relay.agents import AgentProfile
from relay.domain.calendar_feed import CalendarEvent, event_uid
from relay.domain.pricing import format_money
from relay.services.customers import service_label
from relay.storage import business as store
from relay.storage.db import Database
from relay.storage.models import Booking, Quote

__all__ = [
    "KEEP_PAST",
    "SECRET_FILE",
    "booking_events",
    "feed_secret",
    "feed_token",
    "feed_url",
    "settings_secret",
]

#: Bookings that ended longer ago than this drop out of the feed.
KEEP_PAST = timedelta(days=60)
#: Where the per-install secret is kept, under the data directory (``runtime/`` is gitignored).
SECRET_FILE = Path("runtime") / "feed-secret"


def feed_secret(*, explicit: str | None, admin_token: str | None, data_dir: Path) -> bytes:
    """The key feed tokens are made with (see the module docstring for the order)."""
    if explicit:
        return explicit.encode()
    if admin_token:
        return admin_token.encode()
    path = data_dir / SECRET_FILE
    try:
        return path.read_text(encoding="ascii").strip().encode()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="ascii").strip().encode()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
    return value.encode()


def feed_token(secret: bytes, agent: str) -> str:
    """The URL token for ``agent``'s feed."""
    return hmac.new(secret, f"calendar-feed:{agent}".encode(), hashlib.sha256).hexdigest()[:40]


def feed_url(agent: str, *, base_url: str, secret: bytes) -> str:
    """The URL to subscribe to, e.g. ``https://voice.example.com/calendar/car-service/….ics``."""
    return f"{base_url.rstrip('/')}/calendar/{agent}/{feed_token(secret, agent)}.ics"


def settings_secret(settings: Any) -> bytes:
    """:func:`feed_secret` from relay's settings (``RELAY_FEED_SECRET`` is optional there)."""
    return feed_secret(
        explicit=getattr(settings, "feed_secret", None),
        admin_token=getattr(settings, "admin_token", None),
        data_dir=Path(settings.data_dir),
    )


async def booking_events(
    db: Database, agent: AgentProfile, *, services: Mapping[str, Any], since: datetime
) -> list[CalendarEvent]:
    """``agent``'s bookings that end after ``since``, cancelled ones included (marked so)."""
    async with db.session() as session:
        rows = (
            await session.execute(
                select(Booking, Quote)
                .outerjoin(Quote, Quote.id == Booking.quote_id)
                .where(Booking.agent == agent.name, Booking.ends_at > store.utc(since))
                .order_by(Booking.starts_at)
            )
        ).all()
    domain = f"{agent.name}.relay"
    events = []
    for booking, quote in rows:
        if booking.kind == "move":
            what = "Piano move"
            if quote is not None:
                what += f": {quote.inputs.get('pickup_place', '?')} to {quote.inputs.get('dropoff_place', '?')}"
        else:
            what = service_label(services, booking.service).capitalize()
        details = [
            f"Booking {booking.id}",
            f"Name: {booking.name or '-'}",
            f"Phone: {booking.phone or '-'}",
        ]
        if quote is not None:
            details.append(f"Quote {quote.id}: {format_money(quote.total_cents)}")
        if booking.notes:
            details.append(booking.notes)
        events.append(
            CalendarEvent(
                uid=event_uid(f"booking-{booking.id}", domain=domain),
                start=store.aware(booking.starts_at),
                end=store.aware(booking.ends_at),
                summary=f"{what} ({booking.name})" if booking.name else what,
                updated=store.aware(booking.updated_at),
                description="\n".join(details),
                status="cancelled" if booking.status == "cancelled" else "confirmed",
            )
        )
    return events
