"""Who is calling: the customer directory the session asks at setup, and lookup_vehicle."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from relay.agents import AgentRegistry
from relay.services.customers import CustomerDirectory, normalise_phone, normalise_rego
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Vehicle

NOW = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)


async def _sarah(db: Database) -> None:
    async with db.session() as session, session.begin():
        sarah = Customer(
            phone="+61412000111", name="Sarah Kelly", notes="Prefers texts", created_at=NOW
        )
        other = Customer(phone="+61412000999", name="Ken Wu", created_at=NOW)
        session.add_all([sarah, other])
        await session.flush()
        session.add_all(
            [
                Vehicle(customer_id=sarah.id, make="Toyota", model="Corolla", year=2019, rego="1AB2CD",
                        odometer_km=48210, last_service=date(2026, 5, 2)),
                Vehicle(customer_id=sarah.id, make="Mazda", model="CX-5", year=2016, rego="XYZ123"),
                Vehicle(customer_id=other.id, make="Ford", model="Ranger", year=2021, rego="2CD3EF"),
            ]
        )  # fmt: skip
        for ref, day, status in (
            ("500001", 24, "booked"),
            ("500002", 25, "cancelled"),
            ("500003", 10, "booked"),
        ):
            start = datetime(2026, 11, day, 22, 30, tzinfo=UTC)  # 9:30 am the next day in Melbourne
            session.add(
                Booking(id=ref, agent="car-service", kind="appointment", service="logbook-minor",
                        customer_id=sarah.id, phone=sarah.phone, name=sarah.name, starts_at=start,
                        ends_at=start.replace(hour=23, minute=59), status=status, created_at=NOW,
                        updated_at=NOW)
            )  # fmt: skip


async def test_lookup_returns_the_customer_their_cars_and_upcoming_bookings(
    db: Database, agents: AgentRegistry, services: dict[str, Any]
) -> None:
    await _sarah(db)
    directory = CustomerDirectory(db, services=services, now=lambda: NOW)

    found = await directory.lookup(agents.get("car-service"), "0412 000 111")

    assert found == {
        "name": "Sarah Kelly",
        "phone": "+61412000111",
        "notes": "Prefers texts",
        "vehicles": [
            {
                "vehicle": "2019 Toyota Corolla",
                "rego": "1AB2CD",
                "odometer_km": 48210,
                "last_service": "2026-05-02",
            },
            {"vehicle": "2016 Mazda CX-5", "rego": "XYZ123"},
        ],
        "upcoming_bookings": [
            {
                "booking_ref": "500001",
                "what": "minor logbook service",
                "when": "Wednesday the 25th of November at 9:30 am",
            }
        ],
    }
    # The reminder agent works on the workshop's bookings.
    reminders = await directory.lookup(agents.get("reminders"), "+61412000111")
    assert reminders is not None and reminders["upcoming_bookings"][0]["booking_ref"] == "500001"
    # Other businesses' bookings are not shown; an unknown or withheld number is a new caller.
    piano = await directory.lookup(agents.get("piano-removals"), "+61412000111")
    assert piano is not None and "upcoming_bookings" not in piano
    assert await directory.lookup(agents.get("car-service"), "+61499999999") is None
    assert await directory.lookup(agents.get("car-service"), "anonymous") is None


async def test_lookup_vehicle(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    await _sarah(call.db)

    mine = await call("lookup_vehicle", rego="1ab 2cd")
    assert mine.content == (
        "On file: 2019 Toyota Corolla, rego 1AB2CD; 48,210 km at the last visit; last serviced on "
        "2 May 2026. It belongs to Sarah Kelly, the caller."
    )
    theirs = await call("lookup_vehicle", rego="2CD-3EF")
    assert theirs.content.startswith("On file: 2021 Ford Ranger, rego 2CD3EF.")
    assert "Ken" not in theirs.content and "another customer's" in theirs.content
    unknown = await call("lookup_vehicle", rego="NEW 001")
    assert unknown.data == {"found": False, "rego": "NEW001"}


@pytest.mark.parametrize(
    ("said", "stored"),
    [
        ("0412 345 678", "+61412345678"),
        ("(03) 9000 1234", "+61390001234"),
        ("+61 412 345 678", "+61412345678"),
        ("0061412345678", "+61412345678"),
        ("61412345678", "+61412345678"),
        ("+1 415 555 0100", "+14155550100"),
        ("12345", None),
        ("anonymous", None),
        ("", None),
    ],
)
def test_normalise_phone(said: str, stored: str | None) -> None:
    assert normalise_phone(said) == stored


def test_normalise_rego() -> None:
    assert normalise_rego(" 1ab-2cd ") == "1AB2CD"
