"""Who is calling: the caller's customer record, vehicles and upcoming bookings.

The session asks :class:`CustomerDirectory` at ``setup``, before the first prompt, so the model
knows on its first turn that it is talking to Sarah about her Corolla. Also the small helpers
every business tool shares: phone numbers and registrations in one stored form, the name of a
service, and whose bookings an agent works on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from sqlalchemy import select

from relay import privacy
from relay.agents import AgentProfile
from relay.domain.scheduling import Catalogue, spoken_date, spoken_time
from relay.privacy import DEFAULT_REGION
from relay.storage import business as store
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Vehicle

__all__ = [
    "CustomerDirectory",
    "bookings_owner",
    "describe_vehicle",
    "normalise_phone",
    "normalise_rego",
    "service_label",
    "spoken_when",
]


def normalise_phone(text: str | None, *, country_code: str = "61") -> str | None:
    """A valid phone number in E.164, or None if it cannot be one.

    Takes what a caller says or types: ``"0412 345 678"``, ``"(03) 9000 1234"``,
    ``"+61 412 345 678"``, ``"0061412345678"``. National numbers (a leading 0) are read in the
    country of ``country_code``, Australia's by default (:func:`relay.privacy.normalise_phone`).
    """
    region = phonenumbers.region_code_for_country_code(int(country_code))
    return privacy.normalise_phone(text, region=region if region != "ZZ" else DEFAULT_REGION)


def normalise_rego(text: str) -> str:
    """A registration plate as stored: letters and digits only, upper case (``"1AB 2CD"`` ->
    ``"1AB2CD"``)."""
    return re.sub(r"[^A-Za-z0-9]", "", text).upper()


def bookings_owner(agent: AgentProfile) -> str:
    """The agent whose bookings ``agent`` works on: its own, unless its profile says
    ``[data] bookings = "<agent>"`` (an outbound reminder agent acting for a workshop)."""
    return agent.data.get("bookings", agent.name)


def service_label(services: Mapping[str, Any], service_id: str | None) -> str:
    """The spoken name of a stored service id, from the agent's catalogue when it has one."""
    if not service_id:
        return "booking"
    catalogue = services.get("catalogue")
    if isinstance(catalogue, Catalogue):
        for service in catalogue:
            if service.id == service_id:
                return service.name
    return service_id.replace("-", " ")


def describe_vehicle(vehicle: Vehicle) -> str:
    """``"2019 Toyota Corolla"``."""
    return " ".join(str(part) for part in (vehicle.year, vehicle.make, vehicle.model) if part)


def spoken_when(booking: Booking, zone: ZoneInfo) -> str:
    """A booking's start as said aloud in the business's zone."""
    start = store.aware(booking.starts_at).astimezone(zone)
    return f"{spoken_date(start.date())} at {spoken_time(start.time())}"


class CustomerDirectory:
    """Finds the caller in the customer table (see ``relay.call.session.CallerDirectory``).

    Args:
        db: The database.
        services: The loaded business data per agent name (as given to the sessions), used to
            name services in bookings.
        now: The clock, so "upcoming" means the same thing as in the session.
        limit: At most this many vehicles and this many bookings are returned.
    """

    def __init__(
        self,
        db: Database,
        *,
        services: Mapping[str, Mapping[str, Any]] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        limit: int = 3,
    ) -> None:
        self._db = db
        self._services = services or {}
        self._now = now
        self._limit = limit

    async def lookup(self, agent: AgentProfile, phone: str) -> Mapping[str, Any] | None:
        """The customer calling from ``phone``, their vehicles and upcoming bookings with this
        business, as a small JSON-ready mapping for the model, or None for a new caller."""
        number = normalise_phone(phone)
        if number is None:
            return None
        owner = bookings_owner(agent)
        async with self._db.session() as session:
            customer = await store.customer_by_phone(session, number)
            if customer is None:
                return None
            vehicles = (
                await session.scalars(
                    select(Vehicle)
                    .where(Vehicle.customer_id == customer.id)
                    .order_by(Vehicle.id)
                    .limit(self._limit)
                )
            ).all()
            bookings = await store.upcoming_bookings(
                session, agent=owner, phone=number, now=self._now(), limit=self._limit
            )
        return _summary(agent, customer, vehicles, bookings, self._services.get(owner, {}))


def _summary(
    agent: AgentProfile,
    customer: Customer,
    vehicles: Any,
    bookings: Any,
    services: Mapping[str, Any],
) -> dict[str, Any]:
    zone = ZoneInfo(agent.timezone)
    result: dict[str, Any] = {"name": customer.name, "phone": customer.phone}
    if customer.notes:
        result["notes"] = customer.notes
    cars = []
    for vehicle in vehicles:
        car: dict[str, Any] = {"vehicle": describe_vehicle(vehicle)}
        if vehicle.rego:
            car["rego"] = vehicle.rego
        if vehicle.odometer_km is not None:
            car["odometer_km"] = vehicle.odometer_km
        if vehicle.last_service is not None:
            car["last_service"] = vehicle.last_service.isoformat()
        cars.append(car)
    if cars:
        result["vehicles"] = cars
    upcoming = [
        {
            "booking_ref": booking.id,
            "what": "piano move"
            if booking.kind == "move"
            else service_label(services, booking.service),
            "when": spoken_when(booking, zone),
        }
        for booking in bookings
    ]
    if upcoming:
        result["upcoming_bookings"] = upcoming
    return result
