"""The appointment tools of the car service centre, on a real SQLite database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from relay.storage.models import Booking, Customer, SideEffect, Vehicle

MEL = ZoneInfo("Australia/Melbourne")
TUESDAY = date(2026, 11, 24)


async def test_find_available_slots(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    result = await call("find_available_slots", service="oil change", date="2026-11-24")
    assert result.content.startswith(
        "A minor logbook service takes about an hour and a half, from $249. Free times: Tuesday the 24th of November at 7:30 am, 10:30 am, 1 pm or 4 pm."
    )
    assert "(Starts for book_appointment: 2026-11-24T07:30, " in result.content
    assert result.data is not None and result.data["service"] == "logbook-minor"
    # A 90-minute job must finish by 5:30 pm: 4 pm is the last start.
    assert result.data["slots"][-1]["start"] == "2026-11-24T16:00+11:00"

    later = await call(
        "find_available_slots", service="brake pads", date="2026-11-24", after="13:00"
    )
    assert later.data is not None and later.data["slots"][0]["start"] == "2026-11-24T13:00+11:00"

    sunday = await call("find_available_slots", service="roadworthy", date="2026-11-22")
    assert "We're closed on Sundays" in sunday.content and sunday.data["alternatives"]  # type: ignore[index]

    vague = await call("find_available_slots", service="service")
    assert "could mean" in vague.content


async def test_book_appointment_only_after_confirmation(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    await _customer(
        call, "+61412000111", "Sarah Kelly", rego="1AB2CD", car=("Toyota", "Corolla", 2019)
    )
    asked = await call("book_appointment", service="minor service", start="2026-11-24T09:30", name="Sarah Kelly",
                       rego="1ab 2cd", confirmed=False)  # fmt: skip
    assert asked.content.startswith(
        "Not booked yet; the time is free. Read back to the caller: a minor logbook service on Tuesday the 24th of November at 9:30 am"
    )
    assert await _count(call, Booking) == 0

    booked = await call("book_appointment", service="minor service", start="2026-11-24T09:30", name="Sarah Kelly",
                        rego="1ab 2cd", confirmed=True, notes="Would like to wait")  # fmt: skip
    assert booked.content.startswith("Booked. Reference ")
    assert (
        "minor logbook service for the 2019 Toyota Corolla on Tuesday the 24th of November at 9:30 am"
        in booked.content
    )
    async with call.db.session() as session:
        booking = await session.get(Booking, booked.data["booking_ref"])  # type: ignore[index]
        car = await session.scalar(select(Vehicle).where(Vehicle.rego == "1AB2CD"))
    assert booking is not None and car is not None
    assert (
        booking.kind == "appointment"
        and booking.service == "logbook-minor"
        and booking.vehicle_id == car.id
    )
    # 9:30 am in Melbourne during daylight saving (UTC+11), stored as UTC; 90 minutes long.
    assert (booking.starts_at, booking.ends_at) == (
        datetime(2026, 11, 23, 22, 30),
        datetime(2026, 11, 24, 0, 0),
    )
    assert booking.phone == call.caller and booking.notes == "Would like to wait"


async def test_a_new_car_and_customer_are_recorded(phone: Callable[..., Any]) -> None:
    call = phone("car-service", caller="0412 999 888")
    booked = await call("book_appointment", service="battery", start="2026-11-25T08:00", name="Dimitri Papadopoulos",
                        rego="ZXC 123", vehicle="2015 Mazda CX-5", confirmed=True)  # fmt: skip
    assert "for the 2015 Mazda CX-5" in booked.content
    async with call.db.session() as session:
        customer = await session.scalar(select(Customer))
        car = await session.scalar(select(Vehicle))
    assert customer is not None and (customer.phone, customer.name) == (
        "+61412999888",
        "Dimitri Papadopoulos",
    )
    assert car is not None and (car.make, car.model, car.year, car.rego) == (
        "Mazda",
        "CX-5",
        2015,
        "ZXC123",
    )


async def test_the_same_booking_twice_books_once(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    arguments = {
        "service": "roadworthy",
        "start": "2026-11-24T10:00",
        "name": "Lee",
        "confirmed": True,
    }
    first = await call("book_appointment", **arguments)
    second = await call("book_appointment", **arguments)
    assert second.content == f"{first.content} (Already done earlier in this call; not repeated.)"
    # The same request in another call (a retried session) finds the booking it made.
    third = await call.another()("book_appointment", **arguments)
    assert third.content.startswith("That appointment is already booked: reference")
    assert await _count(call, Booking) == 1


async def test_two_callers_race_for_the_last_bay(phone: Callable[..., Any]) -> None:
    first = phone("car-service")
    second = phone("car-service", caller="+61412000222").another()
    start = datetime(2026, 11, 24, 9, 0, tzinfo=MEL)
    for _ in range(2):  # three bays: two taken
        await _booking(first, start, timedelta(hours=3))

    results = await asyncio.gather(
        first(
            "book_appointment",
            service="minor service",
            start="2026-11-24T09:00",
            name="Ann",
            confirmed=True,
        ),
        second(
            "book_appointment",
            service="minor service",
            start="2026-11-24T09:00",
            name="Bo",
            confirmed=True,
        ),
    )

    won = [r for r in results if r.content.startswith("Booked.")]
    lost = [r for r in results if not r.content.startswith("Booked.")]
    assert len(won) == 1 and len(lost) == 1, [r.content for r in results]
    assert lost[0].content.startswith(
        "Not booked. That time is fully booked. Free times nearby are Tuesday the 24th of November at"
    )
    assert (
        lost[0].data is not None
        and lost[0].data["error"] == "full"
        and lost[0].data["alternatives"]
    )
    assert await _count(first, Booking) == 3
    async with first.db.session() as session:
        assert sorted((await session.scalars(select(SideEffect.status))).all()) == [
            "done",
            "failed",
        ]


async def test_reschedule_and_cancel(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    booked = await call(
        "book_appointment",
        service="tyre rotation",
        start="2026-11-24T08:00",
        name="Mia",
        confirmed=True,
    )
    ref = booked.data["booking_ref"]  # type: ignore[index]

    status = await call("appointment_status")
    assert (
        status.content
        == f"Upcoming appointments: reference {ref}: tyre rotation and balance on Tuesday the 24th of November at 8 am."
    )

    asked = await call(
        "reschedule_appointment", booking_ref=ref, new_start="2026-11-26T14:00", confirmed=False
    )
    assert asked.content.startswith(
        "Not changed yet; the new time is free. Read back: move the tyre rotation and balance"
    )
    moved = await call(
        "reschedule_appointment",
        booking_ref=" ".join(ref),
        new_start="2026-11-26T14:00",
        confirmed=True,
    )
    assert moved.content.startswith(
        f"Moved. The tyre rotation and balance (reference {ref}) is now on Thursday the 26th of November at 2 pm"
    )
    async with call.db.session() as session:
        booking = await session.get(Booking, ref)
    assert booking is not None and booking.starts_at == datetime(2026, 11, 26, 3, 0)

    stranger = phone("car-service", caller="+61412000333").another()
    refused = await stranger("cancel_appointment", booking_ref=ref, confirmed=True)
    assert "different phone number" in refused.content

    asked = await call("cancel_appointment", booking_ref=ref, confirmed=False)
    assert asked.content.startswith("Not cancelled yet.")
    cancelled = await call("cancel_appointment", booking_ref=ref, confirmed=True)
    assert (
        cancelled.content
        == f"Cancelled the tyre rotation and balance on Thursday the 26th of November at 2 pm (reference {ref})."
    )
    again = await call.another()("cancel_appointment", booking_ref=ref, confirmed=True)
    assert "already cancelled" in again.content
    assert (await call("appointment_status")).data == {"bookings": []}


async def test_reschedule_into_a_full_time_offers_alternatives(phone: Callable[..., Any]) -> None:
    call = phone("car-service")
    booked = await call(
        "book_appointment",
        service="brake inspection",
        start="2026-11-24T08:00",
        name="Mia",
        confirmed=True,
    )
    full = datetime(2026, 11, 25, 10, 0, tzinfo=MEL)
    for _ in range(3):
        await _booking(call, full, timedelta(hours=1))
    result = await call(
        "reschedule_appointment",
        booking_ref=booked.data["booking_ref"],
        new_start="2026-11-25T10:00",
        confirmed=True,
    )  # type: ignore[index]
    assert result.content.startswith(
        "Not changed. That time is fully booked. Free times nearby are"
    )


async def test_appointments_follow_the_business_time_zone(phone: Callable[..., Any]) -> None:
    # 5 April 2027: daylight saving has ended (UTC+10) -- 8 am is 22:00 UTC the day before.
    call = phone("car-service", now=datetime(2027, 3, 30, 9, 0, tzinfo=MEL))
    booked = await call(
        "book_appointment",
        service="minor service",
        start="2027-04-05T08:00",
        name="Ana",
        confirmed=True,
    )
    async with call.db.session() as session:
        booking = await session.get(Booking, booked.data["booking_ref"])  # type: ignore[index]
    assert booking is not None and booking.starts_at == datetime(2027, 4, 4, 22, 0)


# -- helpers ---------------------------------------------------------------------------------


async def _booking(call: Any, start: datetime, length: timedelta) -> None:
    async with call.db.session() as session, session.begin():
        session.add(Booking(id=uuid.uuid4().hex[:12], agent="car-service", kind="appointment",
                            service="logbook-major", phone="+61400000000", name="Someone",
                            starts_at=start.astimezone(UTC), ends_at=(start + length).astimezone(UTC),
                            status="booked", created_at=start, updated_at=start))  # fmt: skip


async def _customer(
    call: Any, phone: str, name: str, *, rego: str, car: tuple[str, str, int]
) -> None:
    async with call.db.session() as session, session.begin():
        customer = Customer(phone=phone, name=name, created_at=datetime(2024, 1, 5, tzinfo=UTC))
        session.add(customer)
        await session.flush()
        session.add(
            Vehicle(customer_id=customer.id, make=car[0], model=car[1], year=car[2], rego=rego)
        )


async def _count(call: Any, model: type[Any]) -> int:
    async with call.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)
