"""Customer tools: what we know about a car from its registration."""

from __future__ import annotations

from sqlalchemy import select

from relay.services.customers import describe_vehicle, normalise_rego
from relay.storage.models import Customer, Vehicle
from relay.tools.base import ToolContext, ToolResult, tool
from relay.tools.common import caller_phone


@tool()
async def lookup_vehicle(ctx: ToolContext, rego: str) -> ToolResult:
    """Find a car on file by its registration number: make, model, year, odometer at the last visit and when it was last serviced. Use it to confirm the car before booking.

    Args:
        rego: The registration number as the caller says it, e.g. "1AB 2CD".
    """
    plate = normalise_rego(rego)
    if not 2 <= len(plate) <= 9:
        return ToolResult(
            f"{rego!r} doesn't look like a registration number. Ask the caller to say it again, "
            "letter by letter.",
            data={"error": "bad rego"},
        )
    async with ctx.db.session() as session:
        row = (
            await session.execute(
                select(Vehicle, Customer)
                .join(Customer, Customer.id == Vehicle.customer_id)
                .where(Vehicle.rego == plate)
                .limit(1)
            )
        ).first()
    if row is None:
        return ToolResult(
            f"No car with rego {plate} is on file. It may be a new car for us: ask for the year, "
            "make and model, and pass them as vehicle when booking.",
            data={"found": False, "rego": plate},
        )
    vehicle, customer = row
    facts = [f"{describe_vehicle(vehicle)}, rego {plate}"]
    if vehicle.odometer_km is not None:
        facts.append(f"{vehicle.odometer_km:,} km at the last visit")
    if vehicle.last_service is not None:
        facts.append(f"last serviced on {vehicle.last_service:%-d %B %Y}")
    # A rego is on the car for anyone to read; whose car it is is not ours to tell.
    owner = (
        f" It belongs to {customer.name}, the caller."
        if customer.phone == caller_phone(ctx)
        else " It is on file under another customer's number; don't share their details."
    )
    return ToolResult(
        "On file: " + "; ".join(facts) + "." + owner,
        data={
            "found": True,
            "rego": plate,
            "vehicle_id": vehicle.id,
            "callers": customer.phone == caller_phone(ctx),
        },
    )


TOOLS = [lookup_vehicle]
