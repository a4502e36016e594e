"""A caller ID that is not a phone number (a Twilio Client identity, a SIP address) is treated
like a withheld number: no customer record, no bookings to change, no texts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import respx

from relay.agents import AgentRegistry
from relay.services import messaging
from relay.services.customers import CustomerDirectory, normalise_phone
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Message

NOW = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)
TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
NOT_NUMBERS = [
    "client:0412000111",
    "client:+61412000111",
    "client:61412000111",
    "sip:0412000111@pbx.example.com",
    "sip:+61412000111@pbx.example.com",
    "0412000111@pbx.example.com",
    "tel:+61412000111",
    "client:alice",
]


@pytest.mark.parametrize("caller_id", NOT_NUMBERS)
def test_a_caller_id_with_a_scheme_or_letters_is_not_a_phone_number(caller_id: str) -> None:
    assert normalise_phone(caller_id) is None


async def _chloe(db: Database) -> None:
    async with db.session() as session, session.begin():
        chloe = Customer(phone="+61412000111", name="Chloe Smith", created_at=NOW)
        session.add(chloe)
        await session.flush()
        start = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)
        session.add(
            Booking(id="900000", agent="car-service", kind="appointment", service="logbook-minor",
                    customer_id=chloe.id, phone=chloe.phone, name=chloe.name, starts_at=start,
                    ends_at=start.replace(hour=23, minute=59), status="booked", created_at=NOW,
                    updated_at=NOW)
        )  # fmt: skip


@pytest.mark.parametrize("caller_id", ["client:0412000111", "sip:+61412000111@pbx.example.com"])
async def test_a_client_caller_is_a_new_caller_who_cannot_touch_the_customers_booking(
    phone: Callable[..., Any],
    agents: AgentRegistry,
    services: dict[str, Any],
    caller_id: str,
) -> None:
    call = phone("car-service", caller=caller_id)
    await _chloe(call.db)
    directory = CustomerDirectory(call.db, services=services, now=lambda: NOW)
    assert await directory.lookup(agents.get("car-service"), caller_id) is None

    cancelled = await call("cancel_appointment", booking_ref="900000", confirmed=True)

    assert cancelled.content.startswith("Error: That booking was made from a different phone")
    async with call.db.session() as session:
        booking = await session.get(Booking, "900000")
    assert booking is not None and booking.status == "booked"


async def test_a_client_caller_is_never_texted(phone: Callable[..., Any]) -> None:
    call = phone(caller="client:0412000111")
    call.services = {**call.services, "twilio": messaging.TwilioCredentials(TWILIO_SID, "t")}
    quoted = await call(
        "quote_piano_move", piano_type="upright", pickup="Brunswick", dropoff="Coburg",
        move_date="2026-11-24",
    )  # fmt: skip
    assert quoted.data is not None

    with respx.mock(assert_all_called=False) as twilio:
        route = twilio.post(MESSAGES_URL)
        texted = await call("send_quote_sms", quote_id=quoted.data["quote_id"])

    assert texted.data == {"error": "no caller number"} and not route.called
    async with call.db.session() as session:
        assert await session.get(Message, 1) is None
