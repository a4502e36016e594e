"""Tests for relay.domain.calendar_feed: the .ics feed parses back to what went in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar

from relay.domain.calendar_feed import PRODID, CalendarEvent, build_ics, event_uid

MEL = ZoneInfo("Australia/Melbourne")
DOMAIN = "northsideauto.com.au"
UPDATED = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


def service(booking_id: int, start: datetime, **changes: object) -> CalendarEvent:
    fields: dict[str, object] = {
        "uid": event_uid(booking_id, domain=DOMAIN),
        "start": start,
        "end": start + timedelta(minutes=90),
        "summary": "Minor logbook service - Jane Citizen",
        "updated": UPDATED,
        "description": "Toyota Corolla, rego ABC123; caller says: squeaky brakes\nsecond line",
        "location": "Northside Auto Care, 12 Sydney Rd, Coburg VIC 3058",
    }
    fields.update(changes)
    return CalendarEvent(**fields)  # type: ignore[arg-type]


def feed(*events: CalendarEvent) -> Calendar:
    data = build_ics(events, calendar_name="Northside bookings", timezone="Australia/Melbourne")
    assert isinstance(data, bytes)
    return Calendar.from_ical(data)


def test_event_uid() -> None:
    assert event_uid(1042, domain="NorthsideAuto.com.au") == "1042@northsideauto.com.au"
    with pytest.raises(ValueError):
        event_uid("", domain=DOMAIN)
    with pytest.raises(ValueError):
        event_uid(1, domain="bookings@northsideauto.com.au")


def test_calendar_properties() -> None:
    calendar = feed()
    assert calendar["VERSION"] == "2.0"
    assert calendar["PRODID"] == PRODID
    assert calendar["X-WR-CALNAME"] == "Northside bookings"
    assert calendar["X-WR-TIMEZONE"] == "Australia/Melbourne"
    assert calendar["X-PUBLISHED-TTL"] == "PT1H"
    assert calendar.events == []


def test_round_trip() -> None:
    confirmed = service(1042, datetime(2026, 11, 24, 9, 30, tzinfo=MEL))
    cancelled = service(
        1043,
        datetime(2026, 11, 25, 7, 30, tzinfo=MEL),
        status="cancelled",
        summary="Brake inspection - Sam Lee",
        updated=datetime(2026, 11, 21, 3, 15, tzinfo=UTC),
    )
    calendar = feed(cancelled, confirmed)
    events = {str(e["UID"]): e for e in calendar.events}
    assert set(events) == {"1042@northsideauto.com.au", "1043@northsideauto.com.au"}

    first = events["1042@northsideauto.com.au"]
    assert first["DTSTART"].params["TZID"] == "Australia/Melbourne"
    assert first["DTEND"].params["TZID"] == "Australia/Melbourne"
    assert first.start == confirmed.start and first.end == confirmed.end
    assert isinstance(first.start, datetime)
    assert first.start.utcoffset() == timedelta(hours=11)
    assert str(first["STATUS"]) == "CONFIRMED"
    assert str(first["SUMMARY"]) == confirmed.summary
    assert str(first["DESCRIPTION"]) == confirmed.description  # commas, ; and \n survive
    assert str(first["LOCATION"]) == confirmed.location
    assert first.decoded("DTSTAMP") == UPDATED

    second = events["1043@northsideauto.com.au"]
    assert str(second["STATUS"]) == "CANCELLED"
    assert str(second["TRANSP"]) == "TRANSPARENT"
    assert second.decoded("DTSTAMP") == datetime(2026, 11, 21, 3, 15, tzinfo=UTC)

    # RFC 5545: every TZID used needs a VTIMEZONE.
    assert [str(tz["TZID"]) for tz in calendar.timezones] == ["Australia/Melbourne"]


def test_times_are_written_in_the_calendar_zone() -> None:
    start = datetime(2026, 11, 23, 22, 30, tzinfo=UTC)  # 9:30 am in Melbourne
    event = feed(service(7, start)).events[0]
    assert event["DTSTART"].params["TZID"] == "Australia/Melbourne"
    assert isinstance(event.start, datetime) and event.start == start
    assert (event.start.hour, event.start.minute) == (9, 30)
    assert b"DTSTART;TZID=Australia/Melbourne:20261124T093000" in build_ics(
        [service(7, start)], calendar_name="x", timezone="Australia/Melbourne"
    )


def test_daylight_saving_offsets_in_the_feed() -> None:
    winter = service(1, datetime(2026, 7, 1, 9, 0, tzinfo=MEL))
    summer = service(2, datetime(2026, 12, 1, 9, 0, tzinfo=MEL))
    events = {str(e["UID"]).split("@")[0]: e for e in feed(winter, summer).events}
    starts = {uid: event.start for uid, event in events.items()}
    assert all(isinstance(start, datetime) for start in starts.values())
    assert starts["1"] == winter.start and starts["2"] == summer.start
    assert winter.start.utcoffset() == timedelta(hours=10)
    assert summer.start.utcoffset() == timedelta(hours=11)
    assert events["1"]["DTSTART"].to_ical() == b"20260701T090000"
    assert events["2"]["DTSTART"].to_ical() == b"20261201T090000"


def test_output_is_deterministic_and_ordered() -> None:
    later = service(2, datetime(2026, 11, 26, 9, tzinfo=MEL))
    earlier = service(1, datetime(2026, 11, 24, 9, tzinfo=MEL))
    once = build_ics([later, earlier], calendar_name="x", timezone="Australia/Melbourne")
    again = build_ics([earlier, later], calendar_name="x", timezone="Australia/Melbourne")
    assert once == again
    assert [str(e["UID"]) for e in Calendar.from_ical(once).events] == [earlier.uid, later.uid]


def test_bad_input_is_refused() -> None:
    start = datetime(2026, 11, 24, 9, tzinfo=MEL)
    with pytest.raises(ValueError, match="timezone-aware"):
        service(1, datetime(2026, 11, 24, 9))
    with pytest.raises(ValueError, match="ends before it starts"):
        service(1, start, end=start - timedelta(hours=1))
    with pytest.raises(ValueError, match="status"):
        service(1, start, status="tentative")
    with pytest.raises(ValueError, match="time zone"):
        build_ics([], calendar_name="x", timezone="Mars/Olympus")
