"""Bookings as an iCalendar (.ics) feed that Google Calendar or Outlook can subscribe to.

The owner adds the feed's URL to their calendar app once ("subscribe from URL") and sees
every booking; the app re-fetches the whole feed periodically, so a cancelled booking stays
in the feed with STATUS:CANCELLED rather than vanishing. Pure: events in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import Calendar, Event

__all__ = ["PRODID", "CalendarEvent", "EventStatus", "build_ics", "event_uid"]

PRODID = "-//relay//Booking calendar//EN"

EventStatus = Literal["confirmed", "cancelled"]

# Hint to subscribing apps how often to re-fetch (REFRESH-INTERVAL and Outlook's
# X-PUBLISHED-TTL); Google and Outlook mostly decide for themselves.
_REFRESH = timedelta(hours=1)


def event_uid(booking_id: str | int, *, domain: str) -> str:
    """The stable UID for a booking, e.g. `"b-1042@northsideauto.com.au"`.

    Calendar apps match updates by UID, so it must never change for a booking: build it
    from the booking's database id and a domain the business owns.
    """
    booking = str(booking_id).strip()
    host = domain.strip().lower()
    if not booking or not host or "@" in host or " " in host:
        raise ValueError(f"need a booking id and a bare domain, got {booking_id!r} and {domain!r}")
    return f"{booking}@{host}"


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """One booking as the feed shows it.

    `uid` comes from `event_uid`; `start`, `end` and `updated` (when the booking last changed,
    used for DTSTAMP and LAST-MODIFIED) must be timezone-aware.
    """

    uid: str
    start: datetime
    end: datetime
    summary: str
    updated: datetime
    description: str = ""
    location: str = ""
    status: EventStatus = "confirmed"

    def __post_init__(self) -> None:
        for name in ("start", "end", "updated"):
            moment: datetime = getattr(self, name)
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(f"CalendarEvent.{name} must be timezone-aware, got {moment!r}")
        if self.end <= self.start:
            raise ValueError(f"CalendarEvent {self.uid!r} ends before it starts")
        if not self.uid:
            raise ValueError("CalendarEvent.uid must not be empty")
        if self.status not in ("confirmed", "cancelled"):
            raise ValueError(
                f"CalendarEvent.status must be confirmed or cancelled, got {self.status!r}"
            )


def build_ics(events: Iterable[CalendarEvent], *, calendar_name: str, timezone: str) -> bytes:
    """Serialise bookings as one VCALENDAR with a VEVENT each.

    Start and end are written in `timezone` (an IANA name such as "Australia/Melbourne")
    with a TZID, and the matching VTIMEZONE is included, as RFC 5545 requires. The output
    depends only on the arguments, so an unchanged feed gives identical bytes.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", "PUBLISH")
    calendar.add("name", calendar_name)
    calendar.add("x-wr-calname", calendar_name)
    calendar.add("x-wr-timezone", timezone)
    calendar.add("refresh-interval", _REFRESH, parameters={"VALUE": "DURATION"})
    # An X- property is plain text to icalendar, so give the duration in ISO form.
    calendar.add("x-published-ttl", "PT1H")
    for item in sorted(events, key=lambda e: (e.start.astimezone(UTC), e.uid)):
        calendar.add_component(_vevent(item, zone))
    calendar.add_missing_timezones()
    feed: bytes = calendar.to_ical()
    return feed


def _vevent(item: CalendarEvent, zone: ZoneInfo) -> Event:
    updated = item.updated.astimezone(UTC)
    event = Event()
    event.add("uid", item.uid)
    event.add("dtstamp", updated)
    event.add("last-modified", updated)
    event.add("dtstart", item.start.astimezone(zone))
    event.add("dtend", item.end.astimezone(zone))
    event.add("summary", item.summary)
    if item.description:
        event.add("description", item.description)
    if item.location:
        event.add("location", item.location)
    event.add("status", item.status.upper())
    # A cancelled booking no longer blocks the owner's time.
    event.add("transp", "TRANSPARENT" if item.status == "cancelled" else "OPAQUE")
    return event
