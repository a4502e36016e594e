"""Appointment tools for a business that books by the hour (a car service centre).

Times are read and said in the business's time zone and stored in UTC. Every change to the
diary (book, move, cancel) happens inside :func:`relay.storage.business.booking_transaction`,
so the capacity check and the write cannot be split by another call taking the same bay.
Changes need the caller's explicit yes (``confirmed``) and only touch bookings made from the
number they are calling from.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relay.domain.scheduling import (
    BusinessCalendar,
    Catalogue,
    SchedulingError,
    Service,
    Slot,
    available_slots,
    check_slot,
    explain_day,
    spoken_choices,
)
from relay.errors import ToolError
from relay.services.customers import describe_vehicle, normalise_rego, spoken_when
from relay.storage import business as store
from relay.storage.models import Booking, Vehicle
from relay.tools.base import ToolContext, ToolResult, tool
from relay.tools.common import (
    blank_name,
    bookings_busy,
    caller_phone,
    clean_ref,
    locked,
    need,
    no_name,
    owner,
    read_after,
    read_day,
    read_start,
    refusal,
    spoken_ref,
)


@tool()
async def find_available_slots(
    ctx: ToolContext, service: str, date: str | None = None, after: str | None = None
) -> ToolResult:
    """Find free appointment times for a service. Without a date you get the next free times over the coming days; with a date, times spread over that day. Also gives how long the job takes and its "from" price.

    Args:
        service: The service in the caller's words, e.g. "minor service", "brake pads", "roadworthy", "check engine light".
        date: A day the caller wants, as YYYY-MM-DD ("tomorrow" or a weekday name also work).
        after: The earliest time that suits, as YYYY-MM-DDTHH:MM, or HH:MM on the given date (e.g. "10:00" if they can't come before ten).
    """
    catalogue = need(ctx, "catalogue", Catalogue)
    calendar = need(ctx, "calendar", BusinessCalendar)
    now = ctx.now()
    try:
        job = catalogue.find(service)
    except SchedulingError as exc:
        return refusal(exc)
    day = read_day(date, calendar=calendar, now=now) if date else None
    earliest = read_after(after, day=day, calendar=calendar, now=now) if after else None
    async with ctx.db.session() as session:
        busy = await bookings_busy(session, ctx, calendar, now)
    slots = available_slots(
        calendar, duration=job.duration, day=day, after=earliest, busy=busy, now=now, limit=4
    )
    if not slots:
        if day is not None:
            problem = explain_day(calendar, day=day, duration=job.duration, busy=busy, now=now)
            if problem is not None:
                return refusal(problem, lead=f"{_about(job)}.")
        return ToolResult(
            f"{_about(job)}. There are no free times for it in the next "
            f"{calendar.horizon_days} days. Offer to take a message.",
            data={"error": "none free"},
        )
    starts = ", ".join(_iso(slot) for slot in slots)
    return ToolResult(
        f"{_about(job)}. Free times: {spoken_choices(slots)}. (Starts for book_appointment: "
        f"{starts}.)",
        data={"service": job.id, "slots": [slot.to_dict() for slot in slots]},
    )


@tool(side_effect=True)
async def book_appointment(
    ctx: ToolContext,
    service: str,
    start: str,
    name: str,
    confirmed: bool,
    rego: str | None = None,
    vehicle: str | None = None,
    notes: str | None = None,
) -> ToolResult:
    """Book a service appointment. First read back the service, the day and time, the car and the name, and ask the caller to confirm; call this with confirmed=true only after they clearly say yes.

    Args:
        service: The service, e.g. "minor logbook service" or its id from find_available_slots.
        start: The start time as YYYY-MM-DDTHH:MM, one of the starts find_available_slots gave.
        name: The name the booking is under.
        confirmed: True only if the caller clearly said yes to your read-back just now. An interrupted read-back is not a yes.
        rego: The car's registration number, if the caller gave it.
        vehicle: The car's year, make and model if it is not already on file, e.g. "2018 Toyota Corolla".
        notes: Anything the workshop should know: symptoms, warning lights, a loan car or shuttle request.
    """
    catalogue = need(ctx, "catalogue", Catalogue)
    calendar = need(ctx, "calendar", BusinessCalendar)
    if blank_name(name):
        return no_name()
    now = ctx.now()
    try:
        job = catalogue.find(service)
    except SchedulingError as exc:
        return refusal(exc)
    begins = read_start(start, calendar=calendar, now=now)
    phone = caller_phone(ctx)
    plate = normalise_rego(rego) if rego else None
    scope = owner(ctx)

    if not confirmed:
        async with ctx.db.session() as session:
            busy = await bookings_busy(session, ctx, calendar, now)
        try:
            slot = check_slot(calendar, start=begins, duration=job.duration, busy=busy, now=now)
        except SchedulingError as exc:
            return refusal(exc, lead="That time can't be booked.")
        which = f", for the car with rego {plate}" if plate else ""
        return ToolResult(
            f"Not booked yet; the time is free. Read back to the caller: a {job.name} on "
            f"{slot.spoken()}{which}, under the name {name}, {job.spoken_price()}. Ask them to "
            "confirm, and only when they clearly say yes call book_appointment again with "
            "confirmed=true.",
            data={"error": "not confirmed", "slot": slot.to_dict()},
        )

    async with locked(ctx) as session:
        existing = await _same_booking(session, scope, phone, job, begins)
        if existing is not None:
            return ToolResult(
                f"That appointment is already booked: reference {existing.id} "
                f"({spoken_ref(existing.id)}). Nothing new was booked.",
                data={"booking_ref": existing.id, "already_booked": True},
            )
        busy = await bookings_busy(session, ctx, calendar, now)
        try:
            slot = check_slot(calendar, start=begins, duration=job.duration, busy=busy, now=now)
        except SchedulingError as exc:
            return refusal(exc, lead="Not booked.")
        customer = (
            await store.ensure_customer(session, phone=phone, name=name, now=now) if phone else None
        )
        car = await _vehicle(session, plate, vehicle, customer.id if customer else None)
        extra = [notes.strip()] if notes and notes.strip() else []
        if plate and car is None:
            extra.append(f"Rego: {plate}")
        ref = await store.new_booking_id(session)
        stamp = store.utc(now)
        session.add(
            Booking(
                id=ref,
                agent=scope,
                kind="appointment",
                service=job.id,
                customer_id=customer.id if customer else None,
                vehicle_id=car.id if car else None,
                phone=phone,
                name=name.strip(),
                starts_at=store.utc(slot.start),
                ends_at=store.utc(slot.end),
                status="booked",
                call_sid=ctx.call_sid or None,
                notes="\n".join(extra) or None,
                created_at=stamp,
                updated_at=stamp,
            )
        )
    car_text = f" for the {describe_vehicle(car)}" if car else ""
    return ToolResult(
        f"Booked. Reference {ref} ({spoken_ref(ref)}): {job.name}{car_text} on {slot.spoken()}, "
        f"{job.spoken_price()}. Tell the caller the reference slowly and to bring the car in at "
        "that time.",
        data={"booking_ref": ref, "service": job.id, "slot": slot.to_dict()},
    )


@tool(side_effect=True)
async def reschedule_appointment(
    ctx: ToolContext, booking_ref: str, new_start: str, confirmed: bool
) -> ToolResult:
    """Move the caller's appointment to another time. Check the new time with find_available_slots first, read back the change and ask the caller to confirm; call this with confirmed=true only after they clearly say yes.

    Args:
        booking_ref: The six-digit booking reference (from appointment_status or the caller).
        new_start: The new start as YYYY-MM-DDTHH:MM, one of the starts find_available_slots gave.
        confirmed: True only if the caller clearly said yes to the change just now.
    """
    catalogue = need(ctx, "catalogue", Catalogue)
    calendar = need(ctx, "calendar", BusinessCalendar)
    now = ctx.now()
    begins = read_start(new_start, calendar=calendar, now=now)
    async with locked(ctx) as session:
        booking = await _callers_booking(session, ctx, booking_ref, now)
        old = spoken_when(booking, calendar.zone)
        label = _service_name(catalogue, booking)
        if store.aware(booking.starts_at) == store.utc(begins):
            return ToolResult(f"The {label} is already booked for {old}; nothing to change.")
        busy = await bookings_busy(session, ctx, calendar, now, exclude=booking.id)
        try:
            slot = check_slot(
                calendar, start=begins, duration=_duration(catalogue, booking), busy=busy, now=now
            )
        except SchedulingError as exc:
            return refusal(exc, lead="Not changed.")
        if not confirmed:
            return ToolResult(
                f"Not changed yet; the new time is free. Read back: move the {label} "
                f"(reference {booking.id}) from {old} to {slot.spoken()}. Ask the caller to "
                "confirm, and only when they clearly say yes call reschedule_appointment again "
                "with confirmed=true.",
                data={"error": "not confirmed", "slot": slot.to_dict()},
            )
        booking.starts_at = store.utc(slot.start)
        booking.ends_at = store.utc(slot.end)
        booking.updated_at = store.utc(now)
    return ToolResult(
        f"Moved. The {label} (reference {booking.id}) is now on {slot.spoken()} instead of {old}.",
        data={"booking_ref": booking.id, "slot": slot.to_dict()},
    )


@tool(side_effect=True)
async def cancel_appointment(ctx: ToolContext, booking_ref: str, confirmed: bool) -> ToolResult:
    """Cancel the caller's appointment. Read back which booking you are cancelling and ask the caller to confirm; call this with confirmed=true only after they clearly say yes. Offer to reschedule instead first.

    Args:
        booking_ref: The six-digit booking reference (from appointment_status or the caller).
        confirmed: True only if the caller clearly said yes to cancelling just now.
    """
    catalogue = need(ctx, "catalogue", Catalogue)
    calendar = need(ctx, "calendar", BusinessCalendar)
    now = ctx.now()
    async with locked(ctx) as session:
        booking = await _callers_booking(session, ctx, booking_ref, now)
        label = _service_name(catalogue, booking)
        when = spoken_when(booking, calendar.zone)
        if not confirmed:
            return ToolResult(
                f"Not cancelled yet. Read back: cancel the {label} on {when} (reference "
                f"{booking.id}). Ask the caller to confirm, and only when they clearly say yes "
                "call cancel_appointment again with confirmed=true.",
                data={"error": "not confirmed"},
            )
        booking.status = "cancelled"
        booking.updated_at = store.utc(now)
    return ToolResult(
        f"Cancelled the {label} on {when} (reference {booking.id}).",
        data={"booking_ref": booking.id, "cancelled": True},
    )


@tool()
async def appointment_status(ctx: ToolContext) -> ToolResult:
    """Look up the caller's upcoming appointments by the number they are calling from: references, services, times and cars."""
    catalogue = need(ctx, "catalogue", Catalogue)
    calendar = need(ctx, "calendar", BusinessCalendar)
    now = ctx.now()
    phone = caller_phone(ctx)
    scope = owner(ctx)
    found: list[Booking] = []
    cars: dict[int, Vehicle] = {}
    async with ctx.db.session() as session:
        # An outbound reminder call names its booking in the call's parameters.
        ref = str(ctx.extras.get("parameters", {}).get("booking", "")) if ctx.extras else ""
        if ref:
            named = await session.get(Booking, ref)
            if named is not None and named.agent == scope and named.status == "booked":
                found.append(named)
        if phone:
            for booking in await store.upcoming_bookings(
                session, agent=scope, phone=phone, now=now
            ):
                if all(booking.id != b.id for b in found):
                    found.append(booking)
        for booking in found:
            if booking.vehicle_id is not None:
                car = await session.get(Vehicle, booking.vehicle_id)
                if car is not None:
                    cars[booking.vehicle_id] = car
    if not found:
        return ToolResult(
            "No upcoming appointments under the number the caller is calling from. If they "
            "booked with another number, offer to put them through to the workshop or take a "
            "message.",
            data={"bookings": []},
        )
    items = []
    for booking in found:
        car = cars.get(booking.vehicle_id) if booking.vehicle_id is not None else None
        car_text = f" for the {describe_vehicle(car)}" if car else ""
        items.append(
            f"reference {booking.id}: {_service_name(catalogue, booking)}{car_text} on "
            f"{spoken_when(booking, calendar.zone)}"
        )
    return ToolResult(
        "Upcoming appointments: " + "; ".join(items) + ".",
        data={
            "bookings": [
                {
                    "booking_ref": b.id,
                    "service": b.service,
                    "start": store.aware(b.starts_at)
                    .astimezone(calendar.zone)
                    .isoformat(timespec="minutes"),
                    "name": b.name,
                }
                for b in found
            ]
        },
    )


# -- helpers ---------------------------------------------------------------------------------


def _about(job: Service) -> str:
    return f"A {job.name} takes about {_length(job.duration)}, {job.spoken_price()}"


def _length(duration: timedelta) -> str:
    hours, minutes = divmod(int(duration.total_seconds() // 60), 60)
    if hours == 0:
        return f"{minutes} minutes"
    whole = "an hour" if hours == 1 else f"{hours} hours"
    if minutes == 0:
        return whole
    if minutes == 30:
        return "an hour and a half" if hours == 1 else f"{hours} and a half hours"
    return f"{whole} and {minutes} minutes"


def _iso(slot: Slot) -> str:
    return slot.start.strftime("%Y-%m-%dT%H:%M")


def _service_name(catalogue: Catalogue, booking: Booking) -> str:
    for service in catalogue:
        if service.id == booking.service:
            return service.name
    return (booking.service or "appointment").replace("-", " ")


def _duration(catalogue: Catalogue, booking: Booking) -> timedelta:
    for service in catalogue:
        if service.id == booking.service:
            return service.duration
    return store.aware(booking.ends_at) - store.aware(booking.starts_at)


async def _same_booking(
    session: AsyncSession, scope: str, phone: str | None, job: Service, begins: datetime
) -> Booking | None:
    """This caller's booking of this service at this time, if it exists already."""
    if phone is None:
        return None
    booking: Booking | None = await session.scalar(
        select(Booking).where(
            Booking.agent == scope,
            Booking.phone == phone,
            Booking.service == job.id,
            Booking.starts_at == store.utc(begins),
            Booking.status == "booked",
        )
    )
    return booking


async def _callers_booking(
    session: AsyncSession, ctx: ToolContext, text: str, now: datetime
) -> Booking:
    """The booking ``text`` names, if it is a current appointment made from the caller's number."""
    ref = clean_ref(text)
    booking = await session.get(Booking, ref) if ref else None
    if booking is None or booking.agent != owner(ctx) or booking.kind != "appointment":
        raise ToolError(
            f"There is no appointment with reference {text!r}. Ask the caller to check it, or "
            "call appointment_status to find their bookings."
        )
    if booking.phone is None or booking.phone != caller_phone(ctx):
        raise ToolError(
            "That booking was made from a different phone number, so it can't be changed on this "
            "call. Offer to put the caller through to the workshop or take a message."
        )
    if booking.status != "booked":
        raise ToolError(f"Booking {booking.id} was already cancelled. Offer to make a new booking.")
    if store.aware(booking.starts_at) <= store.utc(now):
        raise ToolError(
            f"Booking {booking.id} has already started or passed, so it can't be changed."
        )
    return booking


_YEAR = re.compile(r"^(19[5-9]\d|20\d\d)$")


async def _vehicle(
    session: AsyncSession, plate: str | None, description: str | None, customer_id: int | None
) -> Vehicle | None:
    """The car on file with this rego, or a new one from the caller's description."""
    if plate:
        known = await store.vehicle_by_rego(session, plate)
        if known is not None:
            return known
    if not description or customer_id is None:
        return None
    words = description.split()
    year = None
    for index in (0, -1):
        if words and _YEAR.match(words[index]):
            year = int(words.pop(index))
            break
    if not words:
        return None
    car = Vehicle(
        customer_id=customer_id,
        make=words[0].strip(",")[:64],
        model=" ".join(words[1:])[:64],
        year=year,
        rego=plate,
    )
    session.add(car)
    await session.flush()
    return car


TOOLS = [
    find_available_slots,
    book_appointment,
    reschedule_appointment,
    cancel_appointment,
    appointment_status,
]
