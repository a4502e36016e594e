"""Reminder calls: each customer with an appointment on a day is called by the reminders agent.

The call goes through Twilio's REST API; its TwiML connects to the ``reminders`` agent, which
confirms or moves the booking. Only numbers on an allow-list are called unless ``live``, and
each booking is called at most once per start time (the side-effect ledger). ``relay remind``
is the command line of this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import Select, select
from starlette.datastructures import URL, Headers

from relay.agents import AgentProfile
from relay.domain.scheduling import spoken_date, spoken_time
from relay.errors import ConfigError
from relay.protocol import twiml
from relay.protocol.signatures import SignatureChecker
from relay.services import messaging
from relay.services.customers import normalise_phone, service_label
from relay.storage import business as store
from relay.storage import repository
from relay.storage.db import Database
from relay.storage.models import Booking

#: What a reminder reports when another run is calling the same booking right now.
IN_PROGRESS = "That is already being done; wait for it rather than asking again."

__all__ = ["Reminder", "send_reminders"]


@dataclass
class Reminder:
    """One appointment of the day and what happened to its reminder call."""

    booking: str
    phone: str
    name: str
    when: str
    what: str
    outcome: str  # called | would call | not allowed | already called | failed | no number
    detail: str = ""


async def send_reminders(
    db: Database,
    http: httpx.AsyncClient,
    *,
    agent: AgentProfile,
    owner: AgentProfile,
    services: Mapping[str, Any],
    day: date,
    now: datetime,
    allow: Iterable[str],
    live: bool,
    dry_run: bool,
    creds: messaging.TwilioCredentials | None,
    public_url: str | None,
    caller_id: str | None,
) -> list[Reminder]:
    """Call the customers with an appointment with ``owner`` on ``day`` (in its time zone).

    Each call's TwiML connects to ``agent`` with the booking and a greeting that names the
    customer, the service and the time. Numbers outside ``allow`` are refused unless ``live``;
    ``dry_run`` calls nobody. A booking already called (for the same start) is not called
    again. Needs ``creds``, ``public_url`` and a caller ID unless ``dry_run``.
    """
    zone = ZoneInfo(owner.timezone)
    allowed = {n for n in (normalise_phone(a) for a in allow) if n}
    sender = caller_id or (owner.numbers[0] if owner.numbers else None)
    if not dry_run:
        if creds is None:
            raise ConfigError(
                "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set to place calls (or use --dry-run)"
            )
        if not public_url:
            raise ConfigError(
                "RELAY_PUBLIC_URL must be set: Twilio connects the reminder calls to it (or use --dry-run)"
            )
        if sender is None:
            raise ConfigError(
                f"RELAY_CALLER_ID is not set and agent {owner.name!r} has no number to call from"
            )
    start = datetime.combine(day, time(0), tzinfo=zone)
    async with db.session() as session:
        bookings = (
            await session.scalars(
                _day_query(
                    owner.name,
                    store.utc(start),
                    store.utc(datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)),
                )
            )
        ).all()
    today = now.astimezone(zone).date()
    results: list[Reminder] = []
    for booking in bookings:
        starts = store.aware(booking.starts_at).astimezone(zone)
        what = service_label(services, booking.service)
        item = Reminder(
            booking=booking.id, phone=booking.phone or "", name=booking.name or "",
            when=f"{spoken_date(starts.date())} at {spoken_time(starts.time())}", what=what, outcome="",
        )  # fmt: skip
        results.append(item)
        number = normalise_phone(booking.phone)
        if number is None:
            item.outcome = "no number"
            continue
        if not live and number not in allowed:
            item.outcome, item.detail = "not allowed", "not on the allow-list; --live calls it"
            continue
        if dry_run:
            item.outcome = "would call"
            continue
        assert creds is not None and public_url is not None and sender is not None
        greeting = _greeting(booking, owner, what, starts, today)
        ws_url, action_url = _twiml_urls(public_url)
        document = twiml.connect(
            ws_url=ws_url,
            action_url=action_url,
            **agent.twiml_options(
                parameters={"booking": booking.id, "greeting": greeting},
                welcome_greeting=greeting,
            ),
        )

        key = f"remind:{booking.id}:{starts.isoformat()}"
        claim = await repository.claim_side_effect(db, key, "remind", None)
        if claim.state == "done":
            item.outcome, item.detail = "already called", claim.result or ""
            continue
        if claim.state == "running":
            item.outcome, item.detail = "failed", IN_PROGRESS
            continue
        if claim.state == "unknown":  # an earlier attempt may have called: not blindly again
            item.outcome, item.detail = "already called", "outcome unknown: not called again"
            continue
        status, said = "failed", None
        try:
            sent = await messaging.place_call(creds, http, to=number, from_=sender, twiml=document)
        except messaging.TwilioTimeout as exc:  # the call may have been placed: not again
            status, said = "unknown", str(exc)
            item.outcome, item.detail = "failed", f"outcome unknown, not retried: {exc}"
        except messaging.TwilioError as exc:
            said = str(exc)
            item.outcome, item.detail = "failed", said
        else:
            status, said = "done", f"called: {sent.sid}"
            item.outcome, item.detail = "called", sent.sid
        finally:
            await repository.settle_side_effect(db, key, status=status, result=said)
    return results


def _day_query(agent: str, start: datetime, end: datetime) -> Select[Booking]:
    return (
        select(Booking)
        .where(
            Booking.agent == agent,
            Booking.kind == "appointment",
            Booking.status == "booked",
            Booking.starts_at >= start,
            Booking.starts_at < end,
        )
        .order_by(Booking.starts_at, Booking.id)
    )


def _greeting(
    booking: Booking, owner: AgentProfile, what: str, starts: datetime, today: date
) -> str:
    first = (booking.name or "").split(" ")[0]
    hello = f"Hi {first}," if first else "Hi,"
    day = (
        "tomorrow"
        if starts.date() == today + timedelta(days=1)
        else f"on {spoken_date(starts.date())}"
    )
    return (
        f"{hello} it's {owner.business_name} calling to remind you about your {what} {day} at "
        f"{spoken_time(starts.time())}. Does that time still suit you?"
    )


def _twiml_urls(public_url: str) -> tuple[str, str]:
    """The ConversationRelay URL and the Connect action URL, written exactly as the inbound
    TwiML writes them (``relay.web.app``): the upgrade is signed over the URL as written, and
    ConversationRelay accepts only ``wss://``."""
    checker = SignatureChecker(None, public_url=public_url.rstrip("/"))
    no_headers = Headers()
    return (
        checker.public_ws_url("/ws", no_headers),
        checker.public_http_url(URL("/handoff"), no_headers),
    )
