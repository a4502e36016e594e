"""Booking actions from the console, through the same tools, domain rules and ledger as calls.

- **confirm**: the owner has checked the booking; recorded in ``booking_confirmations``.
- **cancel**: a service appointment through the ``cancel_appointment`` tool; a piano move under
  the same booking lock (``booking_transaction``) the tools use.
- **reschedule**: a service appointment through the ``reschedule_appointment`` tool (its slot
  rules and capacity check); a piano move into another free window through
  ``relay.domain.scheduling.check_window``, under the booking lock.

Tool runs go through the tools' at-most-once ledger with a key naming the console user, so a
double-clicked button changes nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select

from relay.errors import ToolError
from relay.storage import business as store
from relay.storage.console import BookingConfirmation
from relay.storage.models import Booking
from relay.tools.base import ToolContext, invoke
from relay.tools.ledger import once


class ActionError(Exception):
    """What the owner is told when a booking action is refused."""


async def booking_action(
    runtime: Any, booking_id: str, action: str, form: dict[str, str], user: str
) -> str:
    deps = runtime.deps
    async with deps.db.session() as session:
        booking = await session.get(Booking, booking_id)
    if booking is None:
        raise ActionError(f"There is no booking {booking_id}.")
    agent = deps.agents.agents.get(booking.agent)
    if agent is None:
        raise ActionError(f"Booking {booking_id} belongs to an agent that is not loaded.")
    if action == "confirm":
        return await _confirm(deps.db, booking, user)
    if booking.status != "booked":
        raise ActionError(f"Booking {booking_id} is already {booking.status}.")
    if action == "cancel":
        if booking.kind == "appointment":
            return await _tool(runtime, agent, booking, "cancel_appointment",
                               {"booking_ref": booking.id, "confirmed": True}, user)  # fmt: skip
        return await _cancel_move(runtime, agent, booking)
    if action == "reschedule":
        if booking.kind == "appointment":
            start = form.get("start", "").strip()
            if not start:
                raise ActionError("Give the new start as YYYY-MM-DDTHH:MM.")
            return await _tool(runtime, agent, booking, "reschedule_appointment",
                               {"booking_ref": booking.id, "new_start": start, "confirmed": True},
                               user)  # fmt: skip
        return await _move_window(
            runtime, agent, booking, form.get("date", ""), form.get("window", "")
        )
    raise ActionError(f"Unknown action {action!r}.")


async def _confirm(db: Any, booking: Booking, user: str) -> str:
    async with db.session() as session, session.begin():
        if await session.get(BookingConfirmation, booking.id) is None:
            session.add(
                BookingConfirmation(
                    booking_id=booking.id, confirmed_by=user, confirmed_at=datetime.now(UTC)
                )
            )
    return f"Booking {booking.id} confirmed."


def _context(runtime: Any, agent: Any, booking: Booking) -> ToolContext:
    deps = runtime.deps
    return ToolContext(
        call_sid=booking.call_sid or "",
        agent=agent,
        caller=booking.phone or "",  # the tools only change bookings made from this number
        db=deps.db,
        http=deps.http,
        now=deps.now,
        services=deps.services.get(agent.name, {}),
        extras={"console": True},
    )


async def _tool(
    runtime: Any, agent: Any, booking: Booking, name: str, arguments: dict[str, Any], user: str
) -> str:
    tools = runtime.deps.tools.select([name], agent=agent.name) if name in agent.tools else {}
    tool = tools.get(name)
    if tool is None:
        raise ActionError(f"The agent {agent.name} has no {name} tool.")
    try:
        parsed = tool.parse(orjson.dumps(arguments).decode())
    except ToolError as exc:
        raise ActionError(str(exc)) from exc
    ctx = _context(runtime, agent, booking)
    key = tool.idempotency_key(f"console:{user}:{booking.id}:{booking.updated_at}", parsed)
    result = await once(runtime.deps.db, key, tool.name, booking.call_sid,
                        lambda: invoke(tool, ctx, parsed))  # fmt: skip
    if result.data and "error" in result.data:
        raise ActionError(result.content)
    return result.content


async def _cancel_move(runtime: Any, agent: Any, booking: Booking) -> str:
    now = runtime.deps.now()
    async with store.booking_transaction(runtime.deps.db, scope=agent.name) as session:
        row = await session.get(Booking, booking.id)
        if row is None or row.status != "booked":
            raise ActionError(f"Booking {booking.id} is not booked any more.")
        row.status = "cancelled"
        row.updated_at = store.utc(now)
    return f"Cancelled booking {booking.id}."


async def _move_window(
    runtime: Any, agent: Any, booking: Booking, day_text: str, window: str
) -> str:
    from datetime import date, timedelta

    from relay.domain.scheduling import BusinessCalendar, SchedulingError, check_window

    calendar = runtime.deps.services.get(agent.name, {}).get("calendar")
    if not isinstance(calendar, BusinessCalendar):
        raise ActionError(f"The agent {agent.name} has no calendar to reschedule in.")
    try:
        day = date.fromisoformat(day_text.strip())
    except ValueError as exc:
        raise ActionError("Give the new day as YYYY-MM-DD.") from exc
    now = runtime.deps.now()
    async with store.booking_transaction(runtime.deps.db, scope=agent.name) as session:
        busy = await store.busy_intervals(
            session, agent=agent.name, start=now,
            end=now + timedelta(days=calendar.horizon_days + 2), exclude=booking.id,
        )  # fmt: skip
        try:
            slot = check_window(
                calendar, day=day, window=window.strip() or "morning", busy=busy, now=now
            )
        except SchedulingError as exc:
            raise ActionError(f"Not moved: {exc}") from exc
        row = await session.scalar(select(Booking).where(Booking.id == booking.id))
        assert row is not None
        row.starts_at, row.ends_at = store.utc(slot.start), store.utc(slot.end)
        row.updated_at = store.utc(now)
    return f"Moved booking {booking.id} to {slot.spoken()}."
