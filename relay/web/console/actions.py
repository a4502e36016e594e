"""Booking actions from the console, through the same tools, domain rules and ledger as calls.

- **confirm**: the owner has checked the booking; recorded in ``booking_confirmations``.
- **cancel**: a service appointment through the ``cancel_appointment`` tool; a piano move under
  the same booking lock (``booking_transaction``) the tools use.
- **reschedule**: a service appointment through the ``reschedule_appointment`` tool (its slot
  rules and capacity check); a piano move into another free window through
  ``relay.domain.scheduling.check_window``, under the booking lock.

Only a booking still ``booked`` takes an action. A refusal is worded for the owner (:data:`WHY`,
by the scheduling reason), not in the tools' words for a caller.

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
    if booking.status != "booked":  # a cancelled booking is not confirmed, moved or cancelled
        raise ActionError(f"Booking {booking_id} is already {booking.status}.")
    if action == "confirm":
        return await _confirm(deps.db, booking, user)
    if action == "cancel":
        if booking.kind == "appointment":
            return await _tool(runtime, agent, booking, "cancel_appointment",
                               {"booking_ref": booking.id, "confirmed": True}, user,
                               refused="not cancelled")  # fmt: skip
        return await _cancel_move(runtime, agent, booking)
    if action == "reschedule":
        if booking.kind == "appointment":
            start = form.get("start", "").strip()
            if not start:
                raise ActionError("Give the new start as YYYY-MM-DDTHH:MM.")
            return await _tool(runtime, agent, booking, "reschedule_appointment",
                               {"booking_ref": booking.id, "new_start": start, "confirmed": True},
                               user, refused="not moved")  # fmt: skip
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


#: Why a booking cannot go to the time asked for, as the owner reads it (the tools' own
#: messages are written for the model to say to a caller), by ``relay.domain.scheduling.Reason``.
WHY = {
    "past": "that time has already passed",
    "too_soon": "that is sooner than the notice the calendar asks for",
    "beyond_horizon": "that is further ahead than the calendar takes bookings",
    "holiday": "the business is closed that day (a holiday in the calendar)",
    "closed": "the business is closed on that day of the week",
    "outside_hours": "the job does not fit in the opening hours (or a window) that day",
    "off_grid": "that is not one of the start times the calendar offers",
    "full": "that time is fully booked",
}


def _free_time(slot: dict[str, Any]) -> str:
    """A free slot from a refusal, as the bookings page writes times: ``Wed 2026-12-09 08:00``
    (and the window's name), in the calendar's zone."""
    try:
        start = datetime.fromisoformat(str(slot.get("start")))
    except ValueError:
        return str(slot.get("spoken", ""))
    window = slot.get("window")
    return start.strftime("%a %Y-%m-%d %H:%M") + (f" ({window})" if window else "")


def _refused(booking_id: str, verb: str, reason: str, alternatives: Any, zone: str) -> str:
    """A refused change in the owner's words, the same for both kinds of booking: ``Booking
    333444 not moved: the business is closed on that day of the week. Free: Mon 2026-12-14
    08:00 (morning), Mon 2026-12-14 12:30 (afternoon) (Australia/Melbourne time).``"""
    text = f"Booking {booking_id} {verb}: {WHY[reason]}."
    times = [_free_time(a) for a in alternatives or [] if isinstance(a, dict)]
    if times:
        text += f" Free: {', '.join(times)} ({zone} time)."
    return text


async def _tool(
    runtime: Any,
    agent: Any,
    booking: Booking,
    name: str,
    arguments: dict[str, Any],
    user: str,
    *,
    refused: str,
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
        reason = result.data["error"]
        if reason in WHY:
            calendar = runtime.deps.services.get(agent.name, {}).get("calendar")
            zone = str(getattr(calendar, "zone", agent.timezone))
            alternatives = result.data.get("alternatives")
            raise ActionError(_refused(booking.id, refused, reason, alternatives, zone))
        raise ActionError(
            f"Booking {booking.id} {refused}: {result.content.removeprefix('Error: ')}"
        )
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

    from relay.domain.scheduling import (
        BusinessCalendar,
        SchedulingError,
        SlotUnavailable,
        check_window,
    )

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
        except SlotUnavailable as exc:
            alternatives = [slot.to_dict() for slot in exc.alternatives]
            raise ActionError(
                _refused(
                    booking.id, "not moved", exc.reason.value, alternatives, str(calendar.zone)
                )
            ) from exc
        except SchedulingError as exc:
            raise ActionError(f"Booking {booking.id} not moved: {exc}") from exc
        row = await session.scalar(select(Booking).where(Booking.id == booking.id))
        assert row is not None
        row.starts_at, row.ends_at = store.utc(slot.start), store.utc(slot.end)
        row.updated_at = store.utc(now)
    return f"Moved booking {booking.id} to {slot.spoken()}."
