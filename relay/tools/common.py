"""What the business tools share: their data from the context, the business's clock, dates
read from tool arguments, and scheduling refusals turned into results for the model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from relay.domain.scheduling import (
    BusinessCalendar,
    Interval,
    SchedulingError,
    SlotUnavailable,
    parse_when,
)
from relay.errors import ToolError
from relay.services.customers import normalise_phone
from relay.storage import business as store
from relay.tools.base import ToolContext, ToolResult

T = TypeVar("T")

#: The service key under which ``load_services`` records whose bookings an agent works on.
OWNER = "bookings_agent"


def need(ctx: ToolContext, key: str, kind: type[T]) -> T:
    """The loaded business data ``key`` (checked at start by ``load_services``)."""
    value = ctx.services.get(key)
    if not isinstance(value, kind):
        # Only reachable when services were not loaded for this agent: a wiring mistake.
        raise ToolError(
            f"This business has no {key} data set up, so this can't be done on the phone. "
            "Apologise and offer to take a message."
        )
    return value


def owner(ctx: ToolContext) -> str:
    """The agent name bookings are stored under."""
    return str(ctx.services.get(OWNER) or ctx.agent.name)


def zone_of(ctx: ToolContext) -> ZoneInfo:
    calendar = ctx.services.get("calendar")
    if isinstance(calendar, BusinessCalendar):
        return calendar.zone
    return ZoneInfo(ctx.agent.timezone)


def now_in(ctx: ToolContext, zone: ZoneInfo) -> datetime:
    """The session's clock, in ``zone`` (the clock is always aware)."""
    return ctx.now().astimezone(zone)


def caller_phone(ctx: ToolContext) -> str | None:
    """The caller's number in E.164, or None when it was withheld."""
    return normalise_phone(ctx.caller)


async def bookings_busy(
    session: AsyncSession,
    ctx: ToolContext,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude: str | None = None,
) -> list[Interval]:
    """Every booked period from now to the end of the booking horizon, so that alternatives
    offered on other days are really free too."""
    return await store.busy_intervals(
        session,
        agent=owner(ctx),
        start=now,
        end=now + timedelta(days=calendar.horizon_days + 2),
        exclude=exclude,
    )


@contextlib.asynccontextmanager
async def locked(ctx: ToolContext) -> AsyncIterator[AsyncSession]:
    """:func:`relay.storage.business.booking_transaction` for this agent's bookings; a lock that
    cannot be had in time becomes a message for the model rather than a failed turn."""
    try:
        async with store.booking_transaction(ctx.db, scope=owner(ctx)) as session:
            yield session
    except store.BookingsBusy as exc:
        raise ToolError(
            "The booking diary is busy right now and nothing was changed. Tell the caller, and "
            "try once more in a moment."
        ) from exc


def read_day(text: str, *, calendar: BusinessCalendar, now: datetime) -> date:
    """A day from a tool argument ("2026-11-24", "tomorrow", "tuesday"); a date and time counts
    as its day. Raises ToolError with a message asking for an ISO date."""
    try:
        when = parse_when(text, now=now, calendar=calendar)
    except SchedulingError as exc:
        raise ToolError(str(exc)) from exc
    return when.astimezone(calendar.zone).date() if isinstance(when, datetime) else when


def read_start(text: str, *, calendar: BusinessCalendar, now: datetime) -> datetime:
    """A date and time from a tool argument, aware in the business's zone."""
    try:
        when = parse_when(text, now=now, calendar=calendar)
    except SchedulingError as exc:
        raise ToolError(str(exc)) from exc
    if not isinstance(when, datetime):
        raise ToolError(
            f"{text!r} is a day without a time. Give the start as YYYY-MM-DDTHH:MM, for "
            f"example {when.isoformat()}T09:30, using a time from find_available_slots."
        )
    return when


def read_after(
    text: str, *, day: date | None, calendar: BusinessCalendar, now: datetime
) -> datetime:
    """An earliest time: a date and time, a day (from its start), or "HH:MM" on ``day``."""
    clock = text.strip().lower().replace(".", ":")
    if day is not None and len(clock) in (4, 5) and clock.count(":") == 1:
        hours, _, minutes = clock.partition(":")
        if hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60:
            return datetime.combine(day, time(int(hours), int(minutes)), tzinfo=calendar.zone)
    try:
        when = parse_when(text, now=now, calendar=calendar)
    except SchedulingError as exc:
        raise ToolError(str(exc)) from exc
    if isinstance(when, datetime):
        return when
    return datetime.combine(when, time(0), tzinfo=calendar.zone)


def refusal(exc: SchedulingError, *, lead: str = "") -> ToolResult:
    """A scheduling refusal as a result: its message (which offers alternatives) for the model,
    and the machine-readable reason and alternatives in ``data``."""
    data: dict[str, Any]
    if isinstance(exc, SlotUnavailable):
        data = exc.to_dict()
    else:
        data = {"error": type(exc).__name__, "message": str(exc)}
    message = f"{lead} {exc}".strip() if lead else str(exc)
    return ToolResult(message, data=data)


def blank_name(name: str) -> bool:
    """A name with no letter or digit in it: blank, spaces, an invisible character (``"\u200b"``)
    or punctuation alone (``"."``, ``"-"``)."""
    return not any(ch.isalnum() for ch in name)


def no_name() -> ToolResult:
    """A booking asked for without a name (:func:`blank_name`): ask for it, as take_message
    does, rather than book under no name."""
    return ToolResult(
        "Not booked. Ask for the caller's name first: the booking goes under it.",
        data={"error": "no name"},
    )


def spoken_ref(ref: str) -> str:
    """A reference spelt out for speech: ``"482913"`` -> ``"4 8 2 9 1 3"``."""
    return " ".join(ref)


def clean_ref(text: str) -> str:
    """A booking reference as typed or said: digits only (``"ref 482-913"`` -> ``"482913"``)."""
    return "".join(c for c in text if c.isdigit())
