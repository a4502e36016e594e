"""Tests for relay.domain.scheduling: data files, slots, checks, DST and parse_when."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relay.domain.scheduling import (
    AmbiguousService,
    BusinessCalendar,
    Catalogue,
    DataFileError,
    Interval,
    Reason,
    SchedulingError,
    Slot,
    SlotUnavailable,
    UnclearDate,
    UnknownService,
    UnknownWindow,
    available_slots,
    available_windows,
    check_slot,
    check_window,
    explain_day,
    load_calendar,
    load_catalogue,
    parse_calendar,
    parse_catalogue,
    parse_when,
    spoken_choices,
    spoken_date,
)

DATA = Path(__file__).resolve().parents[2] / "data"
MEL = ZoneInfo("Australia/Melbourne")
HOUR = timedelta(hours=1)
MINOR = timedelta(minutes=90)
MAJOR = timedelta(minutes=180)
# Friday 20 November 2026, 4 pm: the "now" of most tests.
NOW = datetime(2026, 11, 20, 16, 0, tzinfo=MEL)
TUESDAY = date(2026, 11, 24)


def at(year: int, month: int, day: int, hour: int, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, fold=fold, tzinfo=MEL)


def booking(start: datetime, length: timedelta) -> Interval:
    return Interval(start, start + length)


@pytest.fixture(scope="module")
def garage() -> BusinessCalendar:
    return load_calendar(DATA / "car-service" / "calendar.toml")


@pytest.fixture(scope="module")
def pianos() -> BusinessCalendar:
    return load_calendar(DATA / "piano-removals" / "calendar.toml")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(DATA / "car-service" / "services.toml")


def night_owl(capacity: int = 1) -> BusinessCalendar:
    """Open every night 00:00-06:00, so slots straddle the 2-3 am daylight saving change."""
    days = "\n".join(
        f'{d} = "00:00-06:00"'
        for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
    return parse_calendar(
        f'timezone = "Australia/Melbourne"\ncapacity = {capacity}\n'
        f"booking_horizon_days = 30\n[hours]\n{days}\n"
    )


# --------------------------------------------------------------------------- data files


def easter_sunday(year: int) -> date:
    """Anonymous Gregorian algorithm (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return date(year, month, day + 1)


def nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def victorian_public_holidays(year: int) -> set[date]:
    """The rules of the Public Holidays Act 1993 (Vic), with the usual Grand Final date."""
    days = set()
    new_year = date(year, 1, 1)
    days.add(new_year)
    if new_year.weekday() >= 5:
        days.add(new_year + timedelta(days=7 - new_year.weekday()))
    australia = date(year, 1, 26)
    days.add(
        australia + timedelta(days=(7 - australia.weekday()) % 7 if australia.weekday() >= 5 else 0)
    )
    days.add(nth_weekday(year, 3, 0, 2))  # Labour Day
    easter = easter_sunday(year)
    days |= {easter + timedelta(days=n) for n in (-2, -1, 0, 1)}
    days.add(date(year, 4, 25))  # ANZAC Day: no substitute in Victoria
    days.add(nth_weekday(year, 6, 0, 2))  # King's Birthday
    last_saturday = max(d for d in (date(year, 9, n) for n in range(24, 31)) if d.weekday() == 5)
    days.add(last_saturday - timedelta(days=1))  # Friday before the Grand Final (usual date)
    days.add(nth_weekday(year, 11, 1, 1))  # Melbourne Cup Day
    christmas, boxing = date(year, 12, 25), date(year, 12, 26)
    days |= {christmas, boxing}
    if christmas.weekday() >= 5:
        days.add(date(year, 12, 27))
    if boxing.weekday() >= 5:
        days.add(date(year, 12, 28))
    return days


@pytest.mark.parametrize("business", ["car-service", "piano-removals"])
def test_holidays_follow_the_victorian_rules(business: str) -> None:
    calendar = load_calendar(DATA / business / "calendar.toml")
    expected = victorian_public_holidays(2026) | victorian_public_holidays(2027)
    assert set(calendar.holidays) == expected


def test_holiday_dates_spot_checks(garage: BusinessCalendar) -> None:
    assert garage.holidays[date(2026, 4, 3)] == "Good Friday"
    assert garage.holidays[date(2026, 11, 3)] == "Melbourne Cup Day"
    assert garage.holidays[date(2027, 3, 29)] == "Easter Monday"
    assert garage.holidays[date(2026, 12, 28)].startswith("Boxing Day")
    assert garage.holidays[date(2027, 12, 27)].startswith("Christmas Day")


def test_both_businesses_share_the_holiday_list(
    garage: BusinessCalendar, pianos: BusinessCalendar
) -> None:
    assert dict(garage.holidays) == dict(pianos.holidays)


def test_car_calendar_settings(garage: BusinessCalendar) -> None:
    assert garage.zone.key == "Australia/Melbourne"
    assert garage.capacity == 3
    assert garage.slot_length == timedelta(minutes=30)
    assert garage.minimum_notice == timedelta(hours=2)
    assert garage.horizon_days == 60
    assert not garage.uses_windows
    assert 6 not in garage.hours  # Sunday


def test_piano_calendar_settings(pianos: BusinessCalendar) -> None:
    assert pianos.uses_windows
    assert pianos.capacity == 2
    assert pianos.notice_days == 1
    assert [w.name for w in pianos.windows] == ["morning", "afternoon"]


def test_catalogue_has_the_core_services(catalogue: Catalogue) -> None:
    ids = {service.id for service in catalogue}
    assert {"logbook-minor", "logbook-major", "brake-pads", "roadworthy", "aircon-regas"} <= ids
    assert catalogue.find("logbook-minor").duration == MINOR
    assert catalogue.find("logbook-major").duration == MAJOR
    assert all(s.price_from_cents > 0 and s.duration > timedelta(0) for s in catalogue)
    assert catalogue.find("logbook-minor").spoken_price() == "from $249"
    assert "major logbook service (id logbook-major)" in catalogue.summary()


@pytest.mark.parametrize(
    ("text", "service_id"),
    [
        ("logbook-major", "logbook-major"),
        ("Major Logbook Service", "logbook-major"),
        ("MINOR SERVICE", "logbook-minor"),
        ("oil change", "logbook-minor"),
        ("RWC", "roadworthy"),
        ("air-con regas", "aircon-regas"),
        ("I need new brake pads please", "brake-pads"),
        ("brake inspection please", "brake-inspection"),
        ("the check engine light is on", "diagnostics"),
        ("regas", "aircon-regas"),
    ],
)
def test_find_service(catalogue: Catalogue, text: str, service_id: str) -> None:
    assert catalogue.find(text).id == service_id


def test_find_ambiguous_service_lists_the_candidates(catalogue: Catalogue) -> None:
    with pytest.raises(AmbiguousService) as caught:
        catalogue.find("logbook service")
    assert set(caught.value.options) == {"minor logbook service", "major logbook service"}
    assert "which one" in str(caught.value)


def test_find_unknown_service_lists_every_option(catalogue: Catalogue) -> None:
    with pytest.raises(UnknownService) as caught:
        catalogue.find("sunroof repair")
    assert len(caught.value.options) == len(catalogue)
    assert "roadworthy certificate" in str(caught.value)
    assert isinstance(caught.value, SchedulingError)


def test_catalogue_rejects_a_phrase_used_by_two_services() -> None:
    text = """
[[service]]
id = "a"
name = "wash"
synonyms = ["clean"]
duration_minutes = 30
price_from_cents = 1000

[[service]]
id = "b"
name = "detail"
synonyms = ["Clean"]
duration_minutes = 60
price_from_cents = 2000
"""
    with pytest.raises(DataFileError) as caught:
        parse_catalogue(text, source="services.toml")
    assert caught.value.problems == ('service "b": \'clean\' is already used by service "a"',)


def test_catalogue_error_names_the_service_and_the_missing_field() -> None:
    text = '[[service]]\nid = "a"\nname = "wash"\nprice_from_cents = 1000\n'
    with pytest.raises(DataFileError) as caught:
        parse_catalogue(text)
    assert caught.value.problems == ('service "a": duration_minutes: is missing',)


def test_a_service_without_an_id_is_named_by_its_place_in_the_file() -> None:
    text = '[[service]]\nname = "wash"\nduration_minutes = 30\nprice_from_cents = 1000\n'
    with pytest.raises(DataFileError) as caught:
        parse_catalogue(text)
    assert caught.value.problems == ("the 1st [[service]] (it has no id): id: is missing",)


SERVICE = """
[[service]]
id = "logbook-minor"
name = "minor logbook service"
duration_minutes = 90
price_from_cents = 24900
"""


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        # text, a boolean or a decimal where a whole number is due: never read as a number
        ("price_from_cents = 24900", 'price_from_cents = "249"', "(got '249')"),
        ("price_from_cents = 24900", 'price_from_cents = "249.00"', "(got '249.00')"),
        ("price_from_cents = 24900", "price_from_cents = true", "(got True)"),
        ("price_from_cents = 24900", "price_from_cents = 249.00", "(got 249.0)"),
        ("duration_minutes = 90", 'duration_minutes = "90"', "(got '90')"),
    ],
)
def test_catalogue_numbers_must_be_numbers(old: str, new: str, problem: str) -> None:
    field = new.split(" = ")[0]
    with pytest.raises(DataFileError) as caught:
        parse_catalogue(SERVICE.replace(old, new), source="services.toml")
    assert str(caught.value) == (
        f'services.toml: service "logbook-minor": {field}: must be a whole number, written '
        f"without quotes {problem}"
    )


CALENDAR = """
timezone = "Australia/Melbourne"
capacity = 3
booking_horizon_days = 60
[hours]
monday = "07:30-17:30"
tuesday = "07:30-17:30"
wednesday = "07:30-17:30"
thursday = "07:30-17:30"
friday = "07:30-17:30"
saturday = "08:00-12:00"
sunday = "closed"
"""


def test_inline_calendar_parses() -> None:
    calendar = parse_calendar(CALENDAR)
    assert calendar.hours[5].closes.hour == 12
    assert calendar.must_finish_by_closing


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("capacity = 3", "capacty = 3", "capacty: is not a setting we know"),
        ('monday = "07:30-17:30"', 'monday = "7.30-5.30"', "hours.monday: "),
        ('sunday = "closed"', "", "hours.sunday: is missing"),
        ('monday = "07:30-17:30"', 'monday = "17:30-07:30"', "closes before it opens"),
        ("Australia/Melbourne", "Melbourne", "timezone: 'Melbourne' is not a time zone"),
        ("capacity = 3", "capacity = 0", "capacity: "),
        ("capacity = 3", 'capacity = 3\n[holidays]\n2026-02-30 = "x"', "holidays.2026-02-30"),
        ("[hours]", "holidays = 1\n[hours]", "holidays: "),
        (
            "[hours]",
            '[[window]]\nname="m"\ntimes="08:00-12:00"\ndays=["monday"]\n[hours]',
            "exactly one",
        ),
        ("capacity = 3", "capacity = = 3", "not valid TOML"),
        (
            "capacity = 3",
            'capacity = "2"',
            "capacity: must be a whole number, written without quotes (got '2')",
        ),
        ("capacity = 3", "capacity = true", "capacity: must be a whole number"),
        ("capacity = 3", "capacity = 3\nslot_minutes = 30.0", "slot_minutes: must be a whole "),
        (
            "capacity = 3",
            'capacity = 3\nmust_finish_by_closing = "false"',
            "must_finish_by_closing: must be true or false, written without quotes (got 'false')",
        ),
    ],
)
def test_broken_calendar_names_the_field(old: str, new: str, expected: str) -> None:
    assert old in CALENDAR
    with pytest.raises(DataFileError) as caught:
        parse_calendar(CALENDAR.replace(old, new), source="calendar.toml")
    assert str(caught.value).startswith("calendar.toml")
    assert expected in str(caught.value)


def test_overlapping_windows_are_refused() -> None:
    text = """
timezone = "Australia/Melbourne"
capacity = 1
booking_horizon_days = 10
[[window]]
name = "morning"
times = "08:00-12:00"
days = ["monday", "tuesday"]
[[window]]
name = "midday"
times = "11:00-14:00"
days = ["Tuesday"]
"""
    with pytest.raises(DataFileError, match=r"window\[0\] and window\[1\] overlap on tuesday"):
        parse_calendar(text)


def test_a_bad_window_is_named_by_its_name() -> None:
    text = """
timezone = "Australia/Melbourne"
capacity = 1
booking_horizon_days = 10
[[window]]
name = "morning"
times = "08:00-12:00"
days = ["monday", "funday"]
"""
    with pytest.raises(DataFileError) as caught:
        parse_calendar(text)
    [problem] = caught.value.problems
    assert problem.startswith('window "morning": days[1]: ')


def test_missing_file_is_a_data_file_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot be read"):
        load_calendar(tmp_path / "nope.toml")


# --------------------------------------------------------------------------- hours


def test_slots_respect_opening_hours(garage: BusinessCalendar) -> None:
    slots = available_slots(garage, duration=MINOR, day=TUESDAY, busy=[], now=NOW, limit=100)
    starts = [slot.start for slot in slots]
    assert starts[0] == at(2026, 11, 24, 7, 30)
    assert starts[-1] == at(2026, 11, 24, 16, 0)  # ends 17:30, exactly at closing
    assert len(starts) == 18  # every half hour from 7:30 to 16:00
    assert all(slot.end - slot.start == MINOR for slot in slots)
    assert all(slot.start.tzinfo is MEL and slot.start.utcoffset() == 11 * HOUR for slot in slots)


def test_job_running_past_closing_is_not_offered(garage: BusinessCalendar) -> None:
    saturday = date(2026, 11, 21)
    slots = available_slots(garage, duration=MAJOR, day=saturday, busy=[], now=NOW, limit=10)
    assert [s.start.time().isoformat("minutes") for s in slots] == ["08:00", "08:30", "09:00"]
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 21, 9, 30), duration=MAJOR, busy=[], now=NOW)
    assert caught.value.reason is Reason.OUTSIDE_HOURS
    assert "has to start by 9 am" in str(caught.value)
    assert [a.start for a in caught.value.alternatives][-1] == at(2026, 11, 21, 9)


def test_time_before_opening_is_outside_hours(garage: BusinessCalendar) -> None:
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 24, 6), duration=HOUR, busy=[], now=NOW)
    assert caught.value.reason is Reason.OUTSIDE_HOURS
    assert "open 7:30 am to 5:30 pm" in str(caught.value)
    assert caught.value.alternatives[0].start == at(2026, 11, 24, 7, 30)


def test_start_off_the_grid_is_refused(garage: BusinessCalendar) -> None:
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 24, 9, 10), duration=HOUR, busy=[], now=NOW)
    assert caught.value.reason is Reason.OFF_GRID
    assert {a.start for a in caught.value.alternatives} >= {at(2026, 11, 24, 9)}


def test_sunday_has_no_slots(garage: BusinessCalendar) -> None:
    sunday = date(2026, 11, 22)
    assert available_slots(garage, duration=HOUR, day=sunday, busy=[], now=NOW) == []
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 22, 9), duration=HOUR, busy=[], now=NOW)
    assert caught.value.reason is Reason.CLOSED
    assert str(caught.value).startswith("We're closed on Sundays. The next free times are Monday")
    assert caught.value.alternatives[0].start == at(2026, 11, 23, 7, 30)


def test_public_holiday_has_no_slots(garage: BusinessCalendar) -> None:
    now = at(2026, 11, 1, 9)
    cup_day = date(2026, 11, 3)
    assert available_slots(garage, duration=HOUR, day=cup_day, busy=[], now=now) == []
    found = available_slots(garage, duration=HOUR, busy=[], now=now, limit=50)
    assert cup_day not in {slot.start.date() for slot in found}
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 3, 9), duration=HOUR, busy=[], now=now)
    assert caught.value.reason is Reason.HOLIDAY
    assert "Tuesday the 3rd of November for Melbourne Cup Day" in str(caught.value)
    assert caught.value.alternatives[0].start.date() == date(2026, 11, 4)


def test_christmas_closures(garage: BusinessCalendar) -> None:
    now = at(2026, 12, 20, 9)
    found = available_slots(garage, duration=HOUR, busy=[], now=now, limit=6, per_day=1)
    days = [slot.start.date() for slot in found]
    assert date(2026, 12, 25) not in days and date(2026, 12, 28) not in days
    assert days[:5] == [
        date(2026, 12, 21),
        date(2026, 12, 22),
        date(2026, 12, 23),
        date(2026, 12, 24),
        date(2026, 12, 29),  # 25th holiday, 26th holiday (Sat), 27th Sunday, 28th additional
    ]


def test_minimum_notice(garage: BusinessCalendar) -> None:
    now = at(2026, 11, 24, 10, 5)
    slots = available_slots(garage, duration=HOUR, day=TUESDAY, busy=[], now=now, limit=100)
    assert slots[0].start == at(2026, 11, 24, 12, 30)  # 10:05 + 2 h, next half hour
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 24, 12), duration=HOUR, busy=[], now=now)
    assert caught.value.reason is Reason.TOO_SOON
    assert "at least 2 hours notice" in str(caught.value)
    assert check_slot(garage, start=at(2026, 11, 24, 12, 30), duration=HOUR, busy=[], now=now)


def test_past_time_is_refused(garage: BusinessCalendar) -> None:
    now = at(2026, 11, 24, 10, 5)
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2026, 11, 24, 9), duration=HOUR, busy=[], now=now)
    assert caught.value.reason is Reason.PAST
    assert caught.value.alternatives[0].start == at(2026, 11, 24, 12, 30)


def test_booking_horizon(garage: BusinessCalendar) -> None:
    last_day = date(2027, 1, 19)  # 60 days after 20 November 2026
    assert available_slots(garage, duration=HOUR, day=last_day, busy=[], now=NOW)
    assert available_slots(garage, duration=HOUR, day=date(2027, 1, 20), busy=[], now=NOW) == []
    everything = available_slots(garage, duration=HOUR, busy=[], now=NOW, limit=10_000)
    assert max(slot.start.date() for slot in everything) == last_day
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=at(2027, 1, 20, 9), duration=HOUR, busy=[], now=NOW)
    assert caught.value.reason is Reason.BEYOND_HORIZON
    assert "Tuesday the 19th of January" in str(caught.value)
    assert caught.value.alternatives == ()


# --------------------------------------------------------------------------- capacity


def test_fourth_overlapping_booking_is_refused(garage: BusinessCalendar) -> None:
    nine = at(2026, 11, 24, 9)
    busy = [booking(nine, MINOR)] * 3  # three bays taken 9:00-10:30
    for start in (nine, at(2026, 11, 24, 9, 30), at(2026, 11, 24, 8)):
        with pytest.raises(SlotUnavailable) as caught:
            check_slot(garage, start=start, duration=MINOR, busy=busy, now=NOW)
        assert caught.value.reason is Reason.FULL
    # Back to back does not overlap: 7:30-9:00 and 10:30-12:00 are free.
    assert check_slot(garage, start=at(2026, 11, 24, 7, 30), duration=MINOR, busy=busy, now=NOW)
    assert check_slot(garage, start=at(2026, 11, 24, 10, 30), duration=MINOR, busy=busy, now=NOW)
    offered = available_slots(garage, duration=MINOR, day=TUESDAY, busy=busy, now=NOW, limit=100)
    assert [s.start.time().isoformat("minutes") for s in offered][:3] == ["07:30", "10:30", "11:00"]


def test_a_third_booking_still_fits(garage: BusinessCalendar) -> None:
    nine = at(2026, 11, 24, 9)
    busy = [booking(nine, MINOR)] * 2
    assert check_slot(garage, start=nine, duration=MINOR, busy=busy, now=NOW).start == nine


def test_capacity_counts_simultaneous_bookings_not_total_overlaps(
    garage: BusinessCalendar,
) -> None:
    # Four bookings touch 8:30-10:00, but never more than two at once, so a third bay is free.
    busy = [
        booking(at(2026, 11, 24, 8), HOUR),
        booking(at(2026, 11, 24, 8), HOUR),
        booking(at(2026, 11, 24, 9, 30), MINOR),
        booking(at(2026, 11, 24, 9, 30), MINOR),
    ]
    start = at(2026, 11, 24, 8, 30)
    assert check_slot(garage, start=start, duration=MINOR, busy=busy, now=NOW).start == start
    with pytest.raises(SlotUnavailable):
        check_slot(garage, start=start, duration=MINOR, busy=[*busy, busy[0]], now=NOW)


def test_busy_intervals_in_utc_are_compared_correctly(garage: BusinessCalendar) -> None:
    nine_utc = at(2026, 11, 24, 9).astimezone(UTC)  # 22:00 UTC the day before
    busy = [Interval(nine_utc, nine_utc + HOUR)] * 3
    with pytest.raises(SlotUnavailable):
        check_slot(garage, start=at(2026, 11, 24, 9), duration=HOUR, busy=busy, now=NOW)


def test_full_slot_offers_nearby_times(garage: BusinessCalendar) -> None:
    noon = at(2026, 11, 24, 12)
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(garage, start=noon, duration=HOUR, busy=[booking(noon, HOUR)] * 3, now=NOW)
    alternatives = [a.start for a in caught.value.alternatives]
    # 11:30 would run into the full hour; 11:00 and 13:00 are an hour away, then 10:30.
    assert alternatives == [at(2026, 11, 24, 10, 30), at(2026, 11, 24, 11), at(2026, 11, 24, 13)]
    assert "Free times nearby are Tuesday the 24th of November at 10:30 am, 11 am or 1 pm." in str(
        caught.value
    )
    result = caught.value.to_dict()
    assert result["error"] == "full" and result["message"] == str(caught.value)
    assert result["alternatives"][0]["start"] == "2026-11-24T10:30+11:00"


# --------------------------------------------------------------------------- search shape


def test_next_slots_are_spread_over_days(garage: BusinessCalendar) -> None:
    found = available_slots(garage, duration=MINOR, busy=[], now=NOW)
    assert len(found) == 5
    days = [slot.start.date() for slot in found]
    assert days == sorted(days)
    assert max(days.count(d) for d in days) == 2
    assert len(set(days)) == 3
    # The second time on a day is a real alternative, not the next half hour.
    monday = [s.start for s in found if s.start.date() == date(2026, 11, 23)]
    assert monday[1] - monday[0] >= timedelta(hours=3)
    one_a_day = available_slots(garage, duration=MINOR, busy=[], now=NOW, per_day=1)
    assert len({slot.start.date() for slot in one_a_day}) == 5


def test_slots_on_a_day_cover_the_day(garage: BusinessCalendar) -> None:
    found = available_slots(garage, duration=MINOR, day=TUESDAY, busy=[], now=NOW, limit=5)
    assert found[0].start == at(2026, 11, 24, 7, 30)
    assert found[-1].start == at(2026, 11, 24, 16)
    assert len(found) == 5


def test_after_moves_the_search_forward(garage: BusinessCalendar) -> None:
    found = available_slots(garage, duration=HOUR, after=at(2026, 11, 25, 14), busy=[], now=NOW)
    assert found[0].start == at(2026, 11, 25, 14)
    naive = available_slots(
        garage, duration=HOUR, after=datetime(2026, 11, 25, 14), busy=[], now=NOW
    )
    assert naive == found
    same_day = available_slots(
        garage, duration=HOUR, day=date(2026, 11, 25), after=at(2026, 11, 25, 15), busy=[], now=NOW
    )
    assert same_day[0].start == at(2026, 11, 25, 15)


def test_explain_day(garage: BusinessCalendar) -> None:
    assert explain_day(garage, day=TUESDAY, duration=HOUR, busy=[], now=NOW) is None
    closed = explain_day(garage, day=date(2026, 11, 22), duration=HOUR, busy=[], now=NOW)
    assert closed is not None and closed.reason is Reason.CLOSED
    starts = [at(2026, 11, 24, 7, 30) + n * timedelta(minutes=30) for n in range(20)]
    packed = [Interval(s, s + timedelta(minutes=30)) for s in starts for _ in range(3)]
    full = explain_day(garage, day=TUESDAY, duration=HOUR, busy=packed, now=NOW)
    assert full is not None and full.reason is Reason.FULL
    assert str(full).startswith("We're fully booked on Tuesday the 24th of November.")
    assert full.alternatives[0].start.date() == date(2026, 11, 25)
    too_long = explain_day(
        garage, day=date(2026, 11, 21), duration=timedelta(hours=5), busy=[], now=NOW
    )
    assert too_long is not None and too_long.reason is Reason.OUTSIDE_HOURS
    assert "longer than we're open on Saturdays" in str(too_long)
    today = explain_day(garage, day=date(2026, 11, 20), duration=HOUR, busy=[], now=NOW)
    assert today is not None and today.reason is Reason.TOO_SOON


def test_naive_now_is_a_programming_error(garage: BusinessCalendar) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        available_slots(garage, duration=HOUR, busy=[], now=datetime(2026, 11, 20, 16))
    with pytest.raises(ValueError, match="timezone-aware"):
        Interval(datetime(2026, 11, 24, 9), datetime(2026, 11, 24, 10))
    with pytest.raises(ValueError, match="before it starts"):
        Interval(at(2026, 11, 24, 10), at(2026, 11, 24, 9))


# --------------------------------------------------------------------------- daylight saving


def test_offsets_either_side_of_daylight_saving_start(garage: BusinessCalendar) -> None:
    now = at(2026, 10, 1, 12)  # Thursday; clocks go forward on Sunday 4 October 2026
    saturday = available_slots(garage, duration=HOUR, day=date(2026, 10, 3), busy=[], now=now)
    monday = available_slots(garage, duration=HOUR, day=date(2026, 10, 5), busy=[], now=now)
    assert all(slot.start.utcoffset() == 10 * HOUR for slot in saturday)
    assert all(slot.start.utcoffset() == 11 * HOUR for slot in monday)
    assert saturday[0].start.astimezone(UTC) == datetime(2026, 10, 2, 22, 0, tzinfo=UTC)
    assert monday[0].start.astimezone(UTC) == datetime(2026, 10, 4, 20, 30, tzinfo=UTC)


def test_offsets_either_side_of_daylight_saving_end(garage: BusinessCalendar) -> None:
    now = at(2027, 3, 31, 12)  # clocks go back on Sunday 4 April 2027
    saturday = available_slots(garage, duration=HOUR, day=date(2027, 4, 3), busy=[], now=now)
    monday = available_slots(garage, duration=HOUR, day=date(2027, 4, 5), busy=[], now=now)
    assert all(slot.start.utcoffset() == 11 * HOUR for slot in saturday)
    assert all(slot.start.utcoffset() == 10 * HOUR for slot in monday)


def test_night_of_clocks_going_forward() -> None:
    calendar = night_owl()
    now = at(2026, 10, 3, 12)
    slots = available_slots(
        calendar, duration=HOUR, day=date(2026, 10, 4), busy=[], now=now, limit=100
    )
    clock = [slot.start.strftime("%H:%M") for slot in slots]
    assert "02:00" not in clock and "02:30" not in clock  # those times do not exist
    assert clock[:4] == ["00:00", "00:30", "01:00", "01:30"] and clock[4] == "03:00"
    across = slots[3]  # 01:30 AEST for an hour: ends 03:30 AEDT, one real hour later
    assert across.start.utcoffset() == 10 * HOUR and across.end.utcoffset() == 11 * HOUR
    assert across.end.strftime("%H:%M") == "03:30"
    assert all(s.end.astimezone(UTC) - s.start.astimezone(UTC) == HOUR for s in slots)
    # A start given in UTC is found on the local grid.
    utc_start = datetime(2026, 10, 3, 15, 30, tzinfo=UTC)
    assert (
        check_slot(calendar, start=utc_start, duration=HOUR, busy=[], now=now).start == across.start
    )


def test_night_of_clocks_going_back() -> None:
    calendar = night_owl()
    now = at(2026, 4, 4, 12)  # clocks go back at 3 am AEDT on Sunday 5 April 2026
    two = at(2026, 4, 5, 2)  # the first 2 am, AEDT
    slot = check_slot(calendar, start=two, duration=MINOR, busy=[], now=now)
    assert slot.start.utcoffset() == 11 * HOUR
    assert slot.end.utcoffset() == 10 * HOUR and slot.end.strftime("%H:%M") == "02:30"
    assert slot.end.astimezone(UTC) - slot.start.astimezone(UTC) == MINOR
    # That job blocks the single bay until 02:30 AEST, so 02:30 AEDT (an hour earlier) is taken,
    # even though on the wall clock it looks like the job has just finished.
    busy = [Interval(slot.start, slot.end)]
    free = available_slots(
        calendar,
        duration=timedelta(minutes=30),
        day=date(2026, 4, 5),
        busy=busy,
        now=now,
        limit=100,
    )
    clock = [s.start.strftime("%H:%M") for s in free]
    assert "02:00" not in clock and "02:30" not in clock and "03:00" in clock


# --------------------------------------------------------------------------- piano windows


def test_piano_windows_on_a_weekday(pianos: BusinessCalendar) -> None:
    windows = available_windows(pianos, day=date(2026, 11, 25), busy=[], now=NOW)
    assert [(w.window, w.start, w.end) for w in windows] == [
        ("morning", at(2026, 11, 25, 8), at(2026, 11, 25, 12)),
        ("afternoon", at(2026, 11, 25, 12, 30), at(2026, 11, 25, 16, 30)),
    ]
    assert windows[0].spoken() == (
        "the morning window on Wednesday the 25th of November, 8 am to midday"
    )
    assert windows[1].to_dict()["window"] == "afternoon"


def test_piano_saturday_morning_only_and_no_sunday(pianos: BusinessCalendar) -> None:
    saturday = available_windows(pianos, day=date(2026, 11, 28), busy=[], now=NOW)
    assert [w.window for w in saturday] == ["morning"]
    assert available_windows(pianos, day=date(2026, 11, 29), busy=[], now=NOW) == []
    with pytest.raises(SlotUnavailable) as caught:
        check_window(pianos, day=date(2026, 11, 28), window="afternoon", busy=[], now=NOW)
    assert caught.value.reason is Reason.OFF_GRID
    assert "On Saturdays we only book the morning window (8 am to midday)" in str(caught.value)


def test_piano_moves_from_tomorrow(pianos: BusinessCalendar) -> None:
    now = at(2026, 11, 24, 7)  # early Tuesday: today's windows are still ahead but not bookable
    assert available_windows(pianos, day=TUESDAY, busy=[], now=now) == []
    first = available_windows(pianos, busy=[], now=now, limit=1)
    assert first[0].start == at(2026, 11, 25, 8)
    with pytest.raises(SlotUnavailable) as caught:
        check_window(pianos, day=TUESDAY, window="afternoon", busy=[], now=now)
    assert caught.value.reason is Reason.TOO_SOON
    assert "earliest day we can book is Wednesday the 25th of November" in str(caught.value)
    reason = explain_day(pianos, day=TUESDAY, busy=[], now=now)
    assert reason is not None and reason.reason is Reason.TOO_SOON


def test_piano_crews_per_window(pianos: BusinessCalendar) -> None:
    wednesday = date(2026, 11, 25)
    morning = check_window(pianos, day=wednesday, window="Morning", busy=[], now=NOW)
    assert (morning.start, morning.end, morning.window) == (
        at(2026, 11, 25, 8),
        at(2026, 11, 25, 12),
        "morning",
    )
    # Two crews: one booking stored as the whole window, one as a shorter job inside it.
    busy = [Interval(morning.start, morning.end), booking(at(2026, 11, 25, 9), timedelta(hours=2))]
    with pytest.raises(SlotUnavailable) as caught:
        check_window(pianos, day=wednesday, window="morning", busy=busy, now=NOW)
    assert caught.value.reason is Reason.FULL
    assert check_window(pianos, day=wednesday, window="afternoon", busy=busy, now=NOW)
    left = available_windows(pianos, day=wednesday, busy=busy, now=NOW)
    assert [w.window for w in left] == ["afternoon"]
    assert check_window(pianos, day=wednesday, window="morning", busy=busy[:1], now=NOW)


def test_piano_holidays(pianos: BusinessCalendar) -> None:
    now = at(2026, 12, 20, 9)
    assert available_windows(pianos, day=date(2026, 12, 25), busy=[], now=now) == []
    with pytest.raises(SlotUnavailable) as caught:
        check_window(pianos, day=date(2026, 12, 28), window="morning", busy=[], now=now)
    assert caught.value.reason is Reason.HOLIDAY


def test_window_mistakes(pianos: BusinessCalendar, garage: BusinessCalendar) -> None:
    with pytest.raises(UnknownWindow, match="morning and afternoon"):
        check_window(pianos, day=date(2026, 11, 25), window="evening", busy=[], now=NOW)
    with pytest.raises(UnknownWindow):
        available_windows(garage, busy=[], now=NOW)
    with pytest.raises(SlotUnavailable) as caught:
        check_slot(pianos, start=at(2026, 11, 25, 9), duration=HOUR, busy=[], now=NOW)
    assert caught.value.reason is Reason.OFF_GRID


# --------------------------------------------------------------------------- speech


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 11, 24), "Tuesday the 24th of November"),
        (date(2026, 11, 1), "Sunday the 1st of November"),
        (date(2026, 11, 2), "Monday the 2nd of November"),
        (date(2026, 11, 3), "Tuesday the 3rd of November"),
        (date(2026, 11, 11), "Wednesday the 11th of November"),
        (date(2026, 11, 12), "Thursday the 12th of November"),
        (date(2026, 11, 13), "Friday the 13th of November"),
        (date(2026, 11, 21), "Saturday the 21st of November"),
        (date(2026, 11, 22), "Sunday the 22nd of November"),
        (date(2026, 11, 23), "Monday the 23rd of November"),
        (date(2026, 12, 31), "Thursday the 31st of December"),
    ],
)
def test_spoken_date(day: date, expected: str) -> None:
    assert spoken_date(day) == expected


def test_spoken_slot_and_choices() -> None:
    def slot(hour: int, minute: int = 0, day: int = 24) -> Slot:
        return Slot(at(2026, 11, day, hour, minute), at(2026, 11, day, hour, minute) + HOUR)

    assert slot(9, 30).spoken() == "Tuesday the 24th of November at 9:30 am"
    assert slot(12).spoken() == "Tuesday the 24th of November at midday"
    assert slot(13, 5).spoken() == "Tuesday the 24th of November at 1:05 pm"
    assert spoken_choices([slot(7, 30, 23), slot(10, 30, 23), slot(7, 30)]) == (
        "Monday the 23rd of November at 7:30 am or 10:30 am, "
        "and Tuesday the 24th of November at 7:30 am"
    )


# --------------------------------------------------------------------------- parse_when

TUESDAY_MORNING = at(2026, 11, 24, 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24", date(2026, 11, 24)),
        ("today", date(2026, 11, 24)),
        ("Tomorrow.", date(2026, 11, 25)),
        ("wednesday", date(2026, 11, 25)),
        ("Fri", date(2026, 11, 27)),
        ("this Saturday", date(2026, 11, 28)),
        ("tuesday", date(2026, 12, 1)),  # never today: "today" says that
        ("next Tuesday", date(2026, 12, 1)),
        ("on monday", date(2026, 11, 30)),
    ],
)
def test_parse_when_dates(garage: BusinessCalendar, text: str, expected: date) -> None:
    parsed = parse_when(text, now=TUESDAY_MORNING, calendar=garage)
    assert type(parsed) is date and parsed == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T09:30",
        "2026-11-24 09:30",
        "2026-11-24T09:30:00",
        "2026-11-24T09:30+11:00",
        "2026-11-23T22:30Z",
        "2026-11-23t22:30:00z",
    ],
)
def test_parse_when_datetimes(garage: BusinessCalendar, text: str) -> None:
    parsed = parse_when(text, now=TUESDAY_MORNING, calendar=garage)
    assert isinstance(parsed, datetime)
    assert parsed == at(2026, 11, 24, 9, 30)
    assert parsed.tzinfo is MEL and parsed.utcoffset() == 11 * HOUR


def test_parse_when_uses_the_business_zone_for_today(garage: BusinessCalendar) -> None:
    # 23:30 UTC on the 23rd is already the 24th in Melbourne.
    now = datetime(2026, 11, 23, 23, 30, tzinfo=UTC)
    assert parse_when("today", now=now, calendar=garage) == date(2026, 11, 24)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("sometime next week", "couldn't read"),
        ("24/11/2026", "couldn't read"),
        ("", "couldn't read"),
        ("2026-02-30", "not a real date"),
        ("2026-11-24T25:00", "not a real date and time"),
        ("2026-10-04T02:30", "clocks go forward"),
    ],
)
def test_parse_when_refuses_the_rest(garage: BusinessCalendar, text: str, hint: str) -> None:
    with pytest.raises(UnclearDate) as caught:
        parse_when(text, now=TUESDAY_MORNING, calendar=garage)
    assert hint in str(caught.value)
    assert "YYYY-MM-DD (for example 2026-11-25)" in str(caught.value)
    assert isinstance(caught.value, SchedulingError)


def test_parse_when_result_feeds_check_slot(garage: BusinessCalendar) -> None:
    start = parse_when("2026-11-25T09:00", now=TUESDAY_MORNING, calendar=garage)
    assert isinstance(start, datetime)
    slot = check_slot(garage, start=start, duration=MINOR, busy=[], now=TUESDAY_MORNING)
    assert slot.to_dict() == {
        "start": "2026-11-25T09:00+11:00",
        "end": "2026-11-25T10:30+11:00",
        "spoken": "Wednesday the 25th of November at 9 am",
    }
