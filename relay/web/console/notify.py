"""Owner notifications of new callback requests and bookings: SMS (Twilio) and/or e-mail (SMTP).

Set per agent on ``/console/notifications`` (stored in ``console_settings`` as
``notify:<agent>``). Each worker looks for new ``tickets`` and ``bookings`` every few seconds;
every notification is claimed in the side-effect ledger first (key
``console_notify:<kind>:<id>``), so with several workers each goes out once. Rows that existed
before notifications were first checked are not announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import structlog
from sqlalchemy import func, select

from relay.services import messaging
from relay.services.email import EmailError, SmtpSettings, send_email
from relay.storage import repository
from relay.storage.console import ConsoleSetting
from relay.storage.db import Database
from relay.storage.models import Booking, Message, Ticket

log = structlog.get_logger("relay.web.console.notify")

INTERVAL = 3.0
_TICKETS = "notify_seen:tickets"  # the highest ticket id looked at
_BOOKINGS = "notify_seen:bookings"  # the newest booking created_at looked at (ISO)
#: Bookings created this long before the watermark are looked at again (two workers' clocks
#: and transactions committing out of order); the ledger keeps them from going out twice.
_OVERLAP = timedelta(seconds=30)


@dataclass(frozen=True)
class Target:
    sms: str = ""
    email: str = ""
    messages: bool = True
    bookings: bool = True

    @property
    def any(self) -> bool:
        return bool(self.sms or self.email)


async def _get(db: Database, key: str) -> str | None:
    async with db.session() as session:
        value: str | None = await session.scalar(
            select(ConsoleSetting.value).where(ConsoleSetting.key == key)
        )
        return value


async def _put(db: Database, key: str, value: str) -> None:
    async with db.session() as session, session.begin():
        row = await session.get(ConsoleSetting, key)
        if row is None:
            session.add(ConsoleSetting(key=key, value=value))
        else:
            row.value = value


async def targets(db: Database, agents: list[str]) -> dict[str, Target]:
    async with db.session() as session:
        rows = (
            await session.execute(
                select(ConsoleSetting.key, ConsoleSetting.value).where(
                    ConsoleSetting.key.in_([f"notify:{a}" for a in agents])
                )
            )
        ).all()
    out = {a: Target() for a in agents}
    for key, value in rows:
        data = orjson.loads(value)
        out[key.split(":", 1)[1]] = Target(
            sms=str(data.get("sms") or ""),
            email=str(data.get("email") or ""),
            messages=bool(data.get("messages", True)),
            bookings=bool(data.get("bookings", True)),
        )
    return out


async def save_target(db: Database, agent: str, target: Target) -> None:
    await _put(db, f"notify:{agent}", orjson.dumps(dataclasses.asdict(target)).decode())


@dataclass
class Channels:
    """How to reach the owner: the app's Twilio credentials per agent and SMTP settings."""

    http: httpx.AsyncClient
    twilio: Mapping[str, messaging.TwilioCredentials]
    smtp: SmtpSettings | None


async def check(
    db: Database, channels: Channels, agents: list[str], zones: Mapping[str, str] | None = None
) -> int:
    """Announce what is new since the last check; how many notifications went out. A booking's
    time is given in its agent's time zone (``zones``: agent -> IANA name; else UTC)."""
    wanted = await targets(db, agents)
    if not any(t.any for t in wanted.values()):
        return 0
    sent = 0
    seen_tickets = await _get(db, _TICKETS)
    seen_bookings = await _get(db, _BOOKINGS)
    if seen_tickets is None or seen_bookings is None:  # the first check: start from now
        async with db.session() as session:
            top = await session.scalar(select(func.max(Ticket.id)))
        await _put(db, _TICKETS, str(top or 0))
        await _put(db, _BOOKINGS, datetime.now(UTC).isoformat())
        return 0
    async with db.session() as session:
        tickets = (
            await session.scalars(
                select(Ticket).where(Ticket.id > int(seen_tickets)).order_by(Ticket.id).limit(200)
            )
        ).all()
        since = datetime.fromisoformat(seen_bookings)
        bookings = (
            await session.scalars(
                select(Booking)
                .where(Booking.created_at > since - _OVERLAP)
                .order_by(Booking.created_at)
                .limit(200)
            )
        ).all()
    for ticket in tickets:
        target = wanted.get(ticket.agent, Target())
        if target.any and target.messages:
            text = (
                f"New message for {ticket.agent}: {ticket.name} ({ticket.phone}) asks to be "
                f"called back: {ticket.reason}"
            )
            sent += await _announce(db, channels, ticket.agent, target, f"ticket:{ticket.id}",
                                    "New callback request", text, ticket.call_sid)  # fmt: skip
        await _put(db, _TICKETS, str(ticket.id))
    newest = since
    for booking in bookings:
        target = wanted.get(booking.agent, Target())
        if target.any and target.bookings:
            starts = (
                booking.starts_at.replace(tzinfo=UTC)
                if booking.starts_at.tzinfo is None
                else booking.starts_at
            )
            local = starts.astimezone(ZoneInfo((zones or {}).get(booking.agent, "UTC")))
            text = (
                f"New booking {booking.id} for {booking.agent}: {booking.name or 'a caller'} "
                f"({booking.phone or 'no number'}), {booking.service or booking.kind}, "
                f"{local:%a %d %b %Y %H:%M %Z}."
            )
            sent += await _announce(db, channels, booking.agent, target, f"booking:{booking.id}",
                                    "New booking", text, booking.call_sid)  # fmt: skip
        created = booking.created_at
        created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
        newest = max(newest, created)
    if newest > since:
        await _put(db, _BOOKINGS, newest.isoformat())
    return sent


async def _announce(
    db: Database,
    channels: Channels,
    agent: str,
    target: Target,
    what: str,
    subject: str,
    text: str,
    call_sid: str | None,
) -> int:
    key = f"console_notify:{what}"
    claim = await repository.claim_side_effect(db, key, "console_notify", call_sid)
    if claim.state != "claimed":
        return 0
    results: list[str] = []
    ok = True
    creds = channels.twilio.get(agent)
    if target.sms and creds is not None and creds.from_number:
        status, sid, error = "failed", None, None
        try:
            sent = await messaging.send_sms(
                creds, channels.http, to=target.sms, from_=creds.from_number, body=text
            )
            status, sid = sent.status, sent.sid
        except messaging.TwilioError as exc:
            ok, error = False, str(exc)
            log.warning("owner_sms_failed", agent=agent, error=str(exc)[:300])
        async with db.session() as session, session.begin():
            session.add(Message(agent=agent, call_sid=call_sid, to_number=target.sms,
                                from_number=creds.from_number, body=text, twilio_sid=sid,
                                status=status, error=error, created_at=datetime.now(UTC)))  # fmt: skip
        results.append(f"sms {status}")
    elif target.sms:
        results.append("sms not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, RELAY_SMS_FROM)")
    if target.email and channels.smtp is not None:
        try:
            await send_email(
                channels.smtp, to=target.email, subject=f"{subject}: {agent}", body=text
            )
            results.append("e-mail sent")
        except EmailError as exc:
            ok = False
            results.append(f"e-mail failed: {exc}")
            log.warning("owner_email_failed", agent=agent, error=str(exc)[:300])
    elif target.email:
        results.append("e-mail not configured (RELAY_SMTP_URL, RELAY_EMAIL_FROM)")
    await repository.settle_side_effect(
        db, key, status="done" if ok else "failed", result="; ".join(results)
    )
    return 1 if ok and results else 0


async def run(
    db: Database, channels: Channels, agents: list[str], zones: Mapping[str, str] | None = None
) -> None:
    while True:
        try:
            await check(db, channels, agents, zones)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # notifications wait for the database, calls do not
            log.warning("owner_notifications_failed", error=repr(exc)[:300])
        await asyncio.sleep(INTERVAL)


def channels_for(runtime: Any) -> Channels:
    from relay.services.email import smtp_settings

    settings = runtime.settings
    twilio = {
        name: services["twilio"]
        for name, services in runtime.deps.services.items()
        if isinstance(services.get("twilio"), messaging.TwilioCredentials)
    }
    try:
        smtp = smtp_settings(settings.smtp_url, settings.email_from)
    except Exception:  # a bad SMTP URL is reported where e-mail is used; no e-mail here
        smtp = None
    return Channels(http=runtime.deps.http, twilio=twilio, smtp=smtp)
