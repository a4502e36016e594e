"""Owner notifications: a new callback request and a new booking reach the owner by SMS (the
Twilio Messages API, mocked at the wire with respx) and e-mail (a real SMTP server, aiosmtpd),
once each, even with two workers checking at the same time."""

from __future__ import annotations

import asyncio
import email
import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from sqlalchemy import select

from relay.services.email import SmtpSettings
from relay.services.messaging import TwilioCredentials
from relay.storage.db import Database
from relay.storage.models import Booking, Message, Ticket
from relay.web.console import notify

pytestmark = pytest.mark.asyncio

SID = "AC" + "1" * 32
ZONES = {"piano-removals": "Australia/Melbourne", "car-service": "Australia/Melbourne"}
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
OWNER = "+61412999000"


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_new_messages_and_bookings_reach_the_owner_once(db: Database) -> None:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    agents = ["piano-removals", "car-service"]
    now = datetime.now(UTC)
    async with httpx.AsyncClient() as http:
        channels = notify.Channels(
            http=http,
            twilio={"piano-removals": TwilioCredentials(SID, "secret", "+61400000999")},
            smtp=SmtpSettings("127.0.0.1", controller.port, "office@keystone.example"),
        )
        try:
            # Nothing configured: nothing is looked at.
            assert await notify.check(db, channels, agents, ZONES) == 0
            await notify.save_target(
                db, "piano-removals", notify.Target(sms=OWNER, email="owner@example.com")
            )
            async with db.session() as session, session.begin():  # before: never announced
                session.add(Ticket(agent="piano-removals", name="Old", phone="+61412000000",
                                   reason="old", status="open", created_at=now))  # fmt: skip
            assert (
                await notify.check(db, channels, agents, ZONES) == 0
            )  # the first check starts here
            async with db.session() as session, session.begin():
                session.add(Ticket(agent="piano-removals", name="Ann Lee", phone="+61412000111",
                                   reason="Wants a quote for a grand.", status="open",
                                   created_at=now))  # fmt: skip
                session.add(Ticket(agent="car-service", name="Bo", phone="+61412000222",
                                   reason="No owner contact set.", status="open",
                                   created_at=now))  # fmt: skip
                session.add(Booking(id="135791", agent="piano-removals", kind="move",
                                    phone="+61412000333", name="Cy",
                                    starts_at=now + timedelta(days=2),
                                    ends_at=now + timedelta(days=2, hours=4), status="booked",
                                    created_at=now + timedelta(seconds=1),
                                    updated_at=now))  # fmt: skip
            with respx.mock(assert_all_called=True) as twilio:
                route = twilio.post(MESSAGES_URL).mock(
                    return_value=httpx.Response(
                        201, json={"sid": "SM" + "2" * 32, "status": "queued"}
                    )
                )
                # Two workers at once: each notification still goes out once.
                sent = await asyncio.gather(
                    notify.check(db, channels, agents, ZONES),
                    notify.check(db, channels, agents, ZONES),
                )
                assert sum(sent) == 2
                assert await notify.check(db, channels, agents, ZONES) == 0  # nothing new
            bodies = [parse_qs(call.request.content.decode()) for call in route.calls]
            assert len(bodies) == 2
            assert all(b["To"] == [OWNER] and b["From"] == ["+61400000999"] for b in bodies)
            texts = sorted(b["Body"][0] for b in bodies)
            local = (now + timedelta(days=2)).astimezone(ZoneInfo("Australia/Melbourne"))
            assert texts[0] == (  # in the agent's time zone, as the console shows bookings
                "New booking 135791 for piano-removals: Cy (+61412000333), move, "
                f"{local:%a %d %b %Y %H:%M} {'AEDT' if local.dst() else 'AEST'}."
            )
            assert texts[1] == (
                "New message for piano-removals: Ann Lee (+61412000111) asks to be called back: "
                "Wants a quote for a grand."
            )
            async with db.session() as session:
                stored = (await session.scalars(select(Message))).all()
            assert sorted(m.status for m in stored) == ["queued", "queued"]
            subjects = sorted(str(m["Subject"]) for _, m in inbox.messages)
            assert subjects == [
                "New booking: piano-removals",
                "New callback request: piano-removals",
            ]
            assert all(to == ["owner@example.com"] for to, _ in inbox.messages)
        finally:
            controller.stop()
