"""When a booking can happen: services, opening hours, holidays, capacity.

Everything here is pure: the business's rules come from two TOML files the owner edits
(`services.toml`, `calendar.toml`), the bookings already taken come in as a list of busy
intervals, and "now" is an argument. The booking code runs `check_slot` inside its database
transaction, so two callers cannot take the last bay at once; this module only decides.

Two kinds of calendar share one set of rules:

* **hours**: open from/to each weekday; appointments start on a grid (every 30 minutes, say)
  and last as long as the service takes (a car service centre).
* **windows**: fixed named periods such as a "morning" and an "afternoon"; a booking takes a
  whole window (piano removals).

Times are aware datetimes in the business's zone; comparisons happen in UTC, so a daylight
saving change never shortens or stretches a job. Every error subclasses `SchedulingError` and
its message is written for the LLM to read and pass on to the caller.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AmbiguousService",
    "BusinessCalendar",
    "Catalogue",
    "DataFileError",
    "Interval",
    "OpeningHours",
    "Reason",
    "SchedulingError",
    "Service",
    "Slot",
    "SlotUnavailable",
    "UnclearDate",
    "UnknownService",
    "UnknownWindow",
    "Window",
    "available_slots",
    "available_windows",
    "check_slot",
    "check_window",
    "explain_day",
    "load_calendar",
    "load_catalogue",
    "parse_calendar",
    "parse_catalogue",
    "parse_when",
    "spoken_choices",
    "spoken_date",
    "spoken_time",
]

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# A second offer on the same day should be a real alternative, not the next half hour.
_SAME_DAY_GAP = timedelta(hours=3)
_ALTERNATIVES = 3


# --------------------------------------------------------------------------- errors


class SchedulingError(Exception):
    """Base of every error this module raises; the message is meant for the LLM."""


class DataFileError(SchedulingError):
    """A services or calendar file is missing, not valid TOML, or has a bad value.

    `problems` lists each fault as "field: what is wrong", so the owner can fix the file; a
    field of a ``[[service]]`` or ``[[window]]`` entry is named with the entry's id or name
    (``service "logbook-minor": price_from_cents: ...``).
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            message = f"{source} has {len(self.problems)} problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class UnknownService(SchedulingError):
    """No service matches what the caller asked for; `options` are the service names."""

    def __init__(self, text: str, options: Sequence[str], message: str | None = None) -> None:
        self.text = text
        self.options = tuple(options)
        super().__init__(
            message
            or f"We don't have a service called {text!r}. The services are: "
            f"{_join(self.options, 'and')}. Use one of these names, or ask the caller "
            "to describe the problem."
        )


class AmbiguousService(UnknownService):
    """More than one service matches; `options` are the candidates to ask the caller about."""

    def __init__(self, text: str, options: Sequence[str]) -> None:
        super().__init__(
            text,
            options,
            f"{text!r} could mean {_join(options, 'or')}. Ask the caller which one they need.",
        )


class UnclearDate(SchedulingError):
    """`parse_when` could not read the text as a date or a date and time."""


class UnknownWindow(SchedulingError):
    """A window name that the calendar does not define."""


class Reason(StrEnum):
    """Why a time cannot be booked; the value is a stable machine-readable code."""

    PAST = "past"
    TOO_SOON = "too_soon"
    BEYOND_HORIZON = "beyond_horizon"
    HOLIDAY = "holiday"
    CLOSED = "closed"
    OUTSIDE_HOURS = "outside_hours"
    OFF_GRID = "off_grid"
    FULL = "full"


class SlotUnavailable(SchedulingError):
    """A requested time cannot be booked.

    `reason` says why, `alternatives` are free slots to offer instead (possibly none), and the
    message combines both in words, e.g. "We're closed on Sundays. The next free times are
    Monday the 23rd of November at 7:30 am or ...".
    """

    def __init__(self, reason: Reason, message: str, alternatives: Sequence[Slot] = ()) -> None:
        self.reason = reason
        self.alternatives = tuple(alternatives)
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready tool result: error code, message and alternatives with ISO times."""
        return {
            "error": self.reason.value,
            "message": str(self),
            "alternatives": [slot.to_dict() for slot in self.alternatives],
        }


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Service:
    """One bookable service from the catalogue."""

    id: str
    name: str
    duration: timedelta
    price_from_cents: int
    synonyms: tuple[str, ...] = ()
    description: str = ""

    def spoken_price(self) -> str:
        """The starting price as it should be said, e.g. "from $249" or "from $35.50"."""
        dollars, cents = divmod(self.price_from_cents, 100)
        amount = f"${dollars:,}" if cents == 0 else f"${dollars:,}.{cents:02d}"
        return f"from {amount}"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The services a business offers, in the order of its file."""

    services: tuple[Service, ...]

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)

    def __len__(self) -> int:
        return len(self.services)

    def find(self, text: str) -> Service:
        """Resolve a service from its id, name or a synonym, ignoring case and punctuation.

        An exact match wins; then names or synonyms found inside the text ("new brake pads
        please"; the longest phrase wins, so "brake inspection" beats "inspection"); then the
        text found inside names ("regas"). Raises `AmbiguousService` when that leaves several
        services and `UnknownService` when it leaves none; both list the choices.
        """
        wanted = _normalise(text)
        keys = {key: service for service in self.services for key in _service_keys(service)}
        if wanted in keys:
            return keys[wanted]
        inside = [key for key in keys if wanted and _contains(wanted, key)]
        # A phrase that is part of a longer matched phrase ("inspection" in "brake
        # inspection") says less about what the caller meant, so it does not count.
        longest = [k for k in inside if not any(k != o and _contains(o, k) for o in inside)]
        around = [key for key in keys if wanted and _contains(key, wanted)]
        matches = list(dict.fromkeys(keys[key] for key in (longest or around)))
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousService(text, [s.name for s in matches])
        raise UnknownService(text, [s.name for s in self.services])

    def summary(self) -> str:
        """One line per service (name, time, price) for a prompt or a tool description."""
        return "\n".join(
            f"- {s.name} (id {s.id}): about {_spoken_duration(s.duration)}, {s.spoken_price()}"
            for s in self.services
        )


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """Opening and closing time on one weekday, wall clock in the business's zone."""

    opens: time
    closes: time


@dataclass(frozen=True, slots=True)
class Window:
    """A named booking window ("morning" 08:00-12:00) and the weekdays it is offered.

    `weekdays` holds `date.weekday()` numbers: Monday is 0, Sunday is 6.
    """

    name: str
    start: time
    end: time
    weekdays: frozenset[int]


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """A business's booking rules. Build it with `load_calendar` or `parse_calendar`.

    Exactly one of `hours` (weekday number to `OpeningHours`; a missing day is closed) and
    `windows` is used. `minimum_notice` is a lead time from now; `notice_days` says how many
    calendar days ahead the first bookable day is (1 means "from tomorrow").
    """

    zone: ZoneInfo
    capacity: int
    horizon_days: int
    hours: Mapping[int, OpeningHours] = field(default_factory=lambda: MappingProxyType({}))
    windows: tuple[Window, ...] = ()
    slot_length: timedelta = timedelta(minutes=30)
    must_finish_by_closing: bool = True
    minimum_notice: timedelta = timedelta(0)
    notice_days: int = 0
    holidays: Mapping[date, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def uses_windows(self) -> bool:
        """True when bookings take whole named windows rather than hours on a grid."""
        return bool(self.windows)

    def window(self, name: str) -> Window:
        """The window called `name` (case-insensitive); `UnknownWindow` lists the choices."""
        for window in self.windows:
            if window.name.lower() == name.strip().lower():
                return window
        names = [w.name for w in self.windows]
        raise UnknownWindow(
            f"There is no {name!r} booking window. The windows are {_join(names, 'and')}."
            if names
            else "This business books by the hour, not by windows."
        )


@dataclass(frozen=True, slots=True)
class Interval:
    """A busy period, e.g. an existing booking: [start, end), both timezone-aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        _require_aware(self.start, "Interval.start")
        _require_aware(self.end, "Interval.end")
        if self.end <= self.start:
            raise ValueError(f"Interval ends ({self.end}) before it starts ({self.start})")


@dataclass(frozen=True, slots=True)
class Slot:
    """A bookable time: aware start and end in the business's zone, and the window name if any."""

    start: datetime
    end: datetime
    window: str | None = None

    def spoken(self) -> str:
        """How to say it: "Tuesday the 24th of November at 9:30 am", or for a window
        "the morning window on Tuesday the 24th of November, 8 am to midday"."""
        day = spoken_date(self.start.date())
        if self.window is None:
            return f"{day} at {spoken_time(self.start.time())}"
        return (
            f"the {self.window} window on {day}, "
            f"{spoken_time(self.start.time())} to {spoken_time(self.end.time())}"
        )

    def to_dict(self) -> dict[str, str]:
        """JSON-ready: ISO start and end (with offset), the spoken form, and the window."""
        result = {
            "start": self.start.isoformat(timespec="minutes"),
            "end": self.end.isoformat(timespec="minutes"),
            "spoken": self.spoken(),
        }
        if self.window is not None:
            result["window"] = self.window
        return result


# --------------------------------------------------------------------------- speech


def spoken_date(day: date) -> str:
    """A date as said aloud: "Tuesday the 24th of November"."""
    return f"{_WEEKDAYS[day.weekday()].title()} the {_ordinal(day.day)} of {_MONTHS[day.month - 1]}"


def spoken_time(moment: time) -> str:
    """A time as said aloud: "9 am", "9:30 am", "midday", "4:30 pm"."""
    if moment.hour == 0 and moment.minute == 0:
        return "midnight"
    if moment.hour == 12 and moment.minute == 0:
        return "midday"
    hour = moment.hour % 12 or 12
    suffix = "am" if moment.hour < 12 else "pm"
    return f"{hour} {suffix}" if moment.minute == 0 else f"{hour}:{moment.minute:02d} {suffix}"


def spoken_choices(slots: Sequence[Slot]) -> str:
    """Several slots said together, one mention per day: "Monday the 23rd of November at
    7:30 am or 10:30 am, and Tuesday the 24th of November at 7:30 am"."""
    days: dict[date, list[Slot]] = {}
    for slot in slots:
        days.setdefault(slot.start.date(), []).append(slot)
    phrases = []
    for day, group in days.items():
        if all(slot.window is None for slot in group):
            times = [spoken_time(slot.start.time()) for slot in group]
            phrases.append(f"{spoken_date(day)} at {_join(times, 'or')}")
        else:
            windows = [
                f"the {slot.window} window ({spoken_time(slot.start.time())} to "
                f"{spoken_time(slot.end.time())})"
                for slot in group
            ]
            phrases.append(f"{spoken_date(day)}, {_join(windows, 'or')}")
    # Each day's phrase may contain "or", so days are separated by commas before "and".
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])}, and {phrases[-1]}"


def _ordinal(n: int) -> str:
    if 11 <= n % 100 <= 13 or n % 10 not in (1, 2, 3):
        return f"{n}th"
    return f"{n}{('st', 'nd', 'rd')[n % 10 - 1]}"


def _spoken_duration(length: timedelta) -> str:
    minutes = int(length.total_seconds() // 60)
    hours, rest = divmod(minutes, 60)
    if hours == 0:
        return f"{minutes} minutes"
    if rest == 0:
        return "an hour" if hours == 1 else f"{hours} hours"
    if rest == 30:
        return "an hour and a half" if hours == 1 else f"{hours} and a half hours"
    return f"{minutes} minutes"


def _join(items: Sequence[str], word: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


# --------------------------------------------------------------------------- files


def _parse_clock(text: str) -> time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text.strip()!r} is not a 24-hour time like 07:30 or 17:30")
    return time(int(match[1]), int(match[2]))


def _parse_period(value: object) -> tuple[time, time] | None:
    """ "07:30-17:30" (also with an en dash or "to") to a pair of times; "closed" to None."""
    if not isinstance(value, str):
        raise ValueError('expected text like "07:30-17:30" or "closed"')
    if value.strip().lower() == "closed":
        return None
    parts = re.split(r"\s*(?:-|\u2013|\u2014|\bto\b)\s*", value.strip())
    if len(parts) != 2:
        raise ValueError(f'expected opening hours like "07:30-17:30" or "closed", got {value!r}')
    opens, closes = _parse_clock(parts[0]), _parse_clock(parts[1])
    if closes <= opens:
        raise ValueError(f"{value!r} closes before it opens")
    return opens, closes


def _parse_window_times(value: object) -> tuple[time, time]:
    period = _parse_period(value)
    if period is None:
        raise ValueError('a window needs times like "08:00-12:00"')
    return period


def _parse_weekday(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() in _WEEKDAYS:
        return _WEEKDAYS.index(value.strip().lower())
    raise ValueError(f"{value!r} is not a day name; use monday, tuesday, ... sunday")


def _whole_number(value: object) -> object:
    """A TOML integer, never text, a boolean or a decimal: ``"249"`` or ``249.00`` in a file
    whose numbers are cents must not quietly become 249 cents."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number, written without quotes")
    return value


def _yes_no(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("must be true or false, written without quotes")
    return value


_DayHours = Annotated[tuple[time, time] | None, BeforeValidator(_parse_period)]
_Weekday = Annotated[int, BeforeValidator(_parse_weekday)]
_Whole = Annotated[int, BeforeValidator(_whole_number)]
_YesNo = Annotated[bool, BeforeValidator(_yes_no)]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServiceEntry(_File):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str = Field(min_length=1)
    synonyms: list[str] = []
    duration_minutes: _Whole = Field(gt=0, le=24 * 60)
    price_from_cents: _Whole = Field(ge=0)
    description: str = ""


class _CatalogueFile(_File):
    service: list[_ServiceEntry] = Field(min_length=1)


class _HoursEntry(_File):
    monday: _DayHours
    tuesday: _DayHours
    wednesday: _DayHours
    thursday: _DayHours
    friday: _DayHours
    saturday: _DayHours
    sunday: _DayHours


class _WindowEntry(_File):
    name: str = Field(min_length=1)
    times: Annotated[tuple[time, time], BeforeValidator(_parse_window_times)]
    days: list[_Weekday] = Field(min_length=1)


class _CalendarFile(_File):
    timezone: str
    capacity: _Whole = Field(ge=1)
    booking_horizon_days: _Whole = Field(ge=1, le=3 * 366)
    hours: _HoursEntry | None = None
    window: list[_WindowEntry] = []
    slot_minutes: _Whole = Field(30, ge=5, le=24 * 60)
    must_finish_by_closing: _YesNo = True
    minimum_notice_minutes: _Whole = Field(0, ge=0)
    minimum_notice_days: _Whole = Field(0, ge=0)
    holidays: dict[date, str] = {}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone name; use one like Australia/Melbourne"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> _CalendarFile:
        if (self.hours is None) == (not self.window):
            raise ValueError(
                "give either an [hours] table or [[window]] entries (exactly one of the two)"
            )
        names = [w.name.lower() for w in self.window]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"window[{i}].name: {name!r} is used twice")
        for i, first in enumerate(self.window):
            for j, second in enumerate(self.window[i + 1 :], start=i + 1):
                shared = set(first.days) & set(second.days)
                if shared and first.times[0] < second.times[1] and second.times[0] < first.times[1]:
                    raise ValueError(
                        f"window[{i}] and window[{j}] overlap on "
                        f"{_WEEKDAYS[min(shared)]}; windows on one day must not overlap"
                    )
        return self


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


#: The tables of a file that are lists of entries (``[[service]]``), and the key naming each.
_ENTRY_KEYS = {"service": "id", "window": "name"}


def _entry(raw: Mapping[str, Any], table: str, index: int) -> str:
    """An entry of a ``[[table]]`` list as the owner knows it: by its id or name (``service
    "logbook-minor"``), else by its place in the file (TOML gives no line numbers)."""
    key = _ENTRY_KEYS[table]
    entries = raw.get(table)
    entry = entries[index] if isinstance(entries, list) and 0 <= index < len(entries) else None
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, str) and value.strip():
        return f'{table} "{value.strip()}"'
    return f"the {_ordinal(index + 1)} [[{table}]] (it has no {key})"


def _problems(exc: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if len(loc) >= 2 and loc[0] in _ENTRY_KEYS and isinstance(loc[1], int):
            entry, rest = _entry(raw, str(loc[0]), loc[1]), _field_path(loc[2:])
            path = f"{entry}: {rest}" if rest else entry
        else:
            path = _field_path(loc)
        if error["type"] == "missing":
            problem = "is missing"
        elif error["type"] == "extra_forbidden":
            problem = "is not a setting we know (check the spelling)"
        else:
            problem = str(error["msg"]).removeprefix("Value error, ")
            given = error.get("input")
            if (
                "input" in error
                and not isinstance(given, dict | list)
                and repr(given) not in problem
            ):
                problem += f" (got {given!r})"
        problems.append(f"{path}: {problem}" if path else problem)
    return problems


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataFileError(source, [f"not valid TOML: {exc}"]) from exc


def _read_file(path: Path | str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFileError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from exc


def parse_catalogue(text: str, *, source: str = "services.toml") -> Catalogue:
    """Build a `Catalogue` from the text of a services file; `DataFileError` if it is broken."""
    raw = _read_toml(text, source)
    try:
        parsed = _CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        raise DataFileError(source, _problems(exc, raw)) from exc
    services = tuple(
        Service(
            id=entry.id,
            name=entry.name,
            duration=timedelta(minutes=entry.duration_minutes),
            price_from_cents=entry.price_from_cents,
            synonyms=tuple(entry.synonyms),
            description=entry.description,
        )
        for entry in parsed.service
    )
    owners: dict[str, str] = {}
    problems = []
    for service in services:
        for key in dict.fromkeys(_service_keys(service)):
            if key in owners:
                problems.append(f'service "{service.id}": {key!r} is already used by {owners[key]}')
            else:
                owners[key] = f'service "{service.id}"'
    if problems:
        raise DataFileError(source, problems)
    return Catalogue(services)


def load_catalogue(path: Path | str) -> Catalogue:
    """Read a services file such as `data/car-service/services.toml`."""
    return parse_catalogue(_read_file(path), source=str(path))


def parse_calendar(text: str, *, source: str = "calendar.toml") -> BusinessCalendar:
    """Build a `BusinessCalendar` from the text of a calendar file; `DataFileError` if broken."""
    raw = _read_toml(text, source)
    try:
        parsed = _CalendarFile.model_validate(raw)
    except ValidationError as exc:
        raise DataFileError(source, _problems(exc, raw)) from exc
    hours: dict[int, OpeningHours] = {}
    if parsed.hours is not None:
        for number, name in enumerate(_WEEKDAYS):
            period: tuple[time, time] | None = getattr(parsed.hours, name)
            if period is not None:
                hours[number] = OpeningHours(*period)
    return BusinessCalendar(
        zone=ZoneInfo(parsed.timezone),
        capacity=parsed.capacity,
        horizon_days=parsed.booking_horizon_days,
        hours=MappingProxyType(hours),
        windows=tuple(
            Window(w.name, w.times[0], w.times[1], frozenset(w.days)) for w in parsed.window
        ),
        slot_length=timedelta(minutes=parsed.slot_minutes),
        must_finish_by_closing=parsed.must_finish_by_closing,
        minimum_notice=timedelta(minutes=parsed.minimum_notice_minutes),
        notice_days=parsed.minimum_notice_days,
        holidays=MappingProxyType(dict(sorted(parsed.holidays.items()))),
    )


def load_calendar(path: Path | str) -> BusinessCalendar:
    """Read a calendar file such as `data/car-service/calendar.toml`."""
    return parse_calendar(_read_file(path), source=str(path))


def _normalise(text: str) -> str:
    text = text.lower().replace("&", " and ").replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _service_keys(service: Service) -> list[str]:
    keys = [_normalise(service.id), _normalise(service.name)]
    keys += [_normalise(s) for s in service.synonyms]
    return [k for k in keys if k]


def _contains(haystack: str, needle: str) -> bool:
    return f" {needle} " in f" {haystack} "


# --------------------------------------------------------------------------- time helpers


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware (got {moment!r}); SQLite returns naive "
            "datetimes, so attach the zone they were stored in, e.g. .replace(tzinfo=UTC)"
        )


def _require_positive(duration: timedelta) -> None:
    if duration <= timedelta(0):
        raise ValueError(f"duration must be positive, got {duration}")


def _wall(calendar: BusinessCalendar, day: date, clock: time) -> datetime | None:
    """The aware moment `day clock` in the business's zone, or None if the clocks skip it."""
    moment = datetime.combine(day, clock, tzinfo=calendar.zone)
    if moment.astimezone(UTC).astimezone(calendar.zone).replace(tzinfo=None) != moment.replace(
        tzinfo=None
    ):
        return None
    return moment


def _local(calendar: BusinessCalendar, moment: datetime) -> datetime:
    """An aware moment in the business's zone; a naive one is taken as local wall time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=calendar.zone)
    return moment.astimezone(UTC).astimezone(calendar.zone)


def _as_day(calendar: BusinessCalendar, day: date) -> date:
    # datetime is a subclass of date; a datetime here means "the day it falls on, locally".
    return _local(calendar, day).date() if isinstance(day, datetime) else day


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _open_on(calendar: BusinessCalendar, day: date) -> bool:
    """Whether the weekday of `day` has opening hours or a window (holidays aside)."""
    if calendar.uses_windows:
        return any(day.weekday() in window.weekdays for window in calendar.windows)
    return day.weekday() in calendar.hours


def _day_start(calendar: BusinessCalendar, day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=calendar.zone).astimezone(UTC)


# --------------------------------------------------------------------------- search


def _candidates(
    calendar: BusinessCalendar, day: date, duration: timedelta | None
) -> Iterator[Slot]:
    """Every start the rules allow on `day`, ignoring holidays, notice and bookings.

    `duration=None` means "a whole window" and is only meaningful for window calendars.
    """
    if calendar.uses_windows:
        for window in calendar.windows:
            if day.weekday() not in window.weekdays:
                continue
            start, end = _wall(calendar, day, window.start), _wall(calendar, day, window.end)
            if start is None or end is None:
                continue
            if duration is None or start.astimezone(UTC) + duration <= end.astimezone(UTC):
                yield Slot(start, end, window.name)
        return
    hours = calendar.hours.get(day.weekday())
    if hours is None or duration is None:
        return
    close = datetime.combine(day, hours.closes, tzinfo=calendar.zone).astimezone(UTC)
    step = int(calendar.slot_length.total_seconds() // 60)
    minute = hours.opens.hour * 60 + hours.opens.minute
    last = hours.closes.hour * 60 + hours.closes.minute
    while minute < last:
        start = _wall(calendar, day, time(minute // 60, minute % 60))
        minute += step
        if start is None:
            continue
        end = start.astimezone(UTC) + duration
        if calendar.must_finish_by_closing and end > close:
            break
        yield Slot(start, end.astimezone(calendar.zone))


def _has_room(
    start: datetime, end: datetime, busy: Sequence[tuple[datetime, datetime]], capacity: int
) -> bool:
    """True if fewer than `capacity` busy intervals overlap at every moment of [start, end)."""
    events: list[tuple[datetime, int]] = []
    for busy_start, busy_end in busy:
        if busy_start < end and busy_end > start:
            events.append((max(busy_start, start), 1))
            events.append((min(busy_end, end), -1))
    if len(events) // 2 < capacity:
        return True
    # Ends sort before starts at the same instant: back-to-back bookings do not overlap.
    events.sort()
    load = 0
    for _, change in events:
        load += change
        if load >= capacity:
            return False
    return True


def _spread_over_day(free: list[Slot], limit: int) -> list[Slot]:
    """`limit` slots evenly spaced through the day, so the caller hears morning and afternoon."""
    if len(free) <= limit:
        return free
    if limit == 1:
        return free[:1]
    return [free[round(i * (len(free) - 1) / (limit - 1))] for i in range(limit)]


def _pick_for_day(free: list[Slot], per_day: int) -> list[Slot]:
    """The first free slot, then ones at least a few hours later, up to `per_day`."""
    if not free:
        return []
    picks = [free[0]]
    for slot in free[1:]:
        if len(picks) == per_day:
            break
        if _utc(slot.start) - _utc(picks[-1].start) >= _SAME_DAY_GAP:
            picks.append(slot)
    if len(picks) < per_day and free[-1] is not picks[-1]:
        picks.append(free[-1])
    return picks


@dataclass(frozen=True, slots=True)
class _Query:
    """The rules and bookings for one question, with "now" turned into concrete bounds."""

    calendar: BusinessCalendar
    duration: timedelta | None
    busy: tuple[tuple[datetime, datetime], ...]  # UTC, sorted by start
    busy_starts: tuple[datetime, ...]
    longest: timedelta  # the longest busy interval, to bound the overlap search
    now: datetime  # UTC
    earliest: datetime  # UTC: now plus the minimum notice
    today: date
    first_day: date
    last_day: date

    @classmethod
    def build(
        cls,
        calendar: BusinessCalendar,
        *,
        duration: timedelta | None,
        busy: Sequence[Interval],
        now: datetime,
    ) -> _Query:
        _require_aware(now, "now")
        now_utc = now.astimezone(UTC)
        today = now_utc.astimezone(calendar.zone).date()
        earliest = now_utc + calendar.minimum_notice
        intervals = tuple(sorted((_utc(b.start), _utc(b.end)) for b in busy))
        return cls(
            calendar=calendar,
            duration=duration,
            busy=intervals,
            busy_starts=tuple(start for start, _ in intervals),
            longest=max((end - start for start, end in intervals), default=timedelta(0)),
            now=now_utc,
            earliest=earliest,
            today=today,
            first_day=max(
                today + timedelta(days=calendar.notice_days),
                earliest.astimezone(calendar.zone).date(),
            ),
            last_day=today + timedelta(days=calendar.horizon_days),
        )

    def has_room(self, slot: Slot) -> bool:
        start, end = _utc(slot.start), _utc(slot.end)
        # Only intervals starting in [start - longest, end) can overlap [start, end).
        first = bisect_left(self.busy_starts, start - self.longest)
        stop = bisect_left(self.busy_starts, end)
        return _has_room(start, end, self.busy[first:stop], self.calendar.capacity)

    def free_on(self, day: date, after: datetime | None = None) -> list[Slot]:
        """Free slots on `day`, in order, starting at or after `after` (UTC) if given."""
        if day < self.first_day or day > self.last_day or day in self.calendar.holidays:
            return []
        floor = self.earliest if after is None else max(self.earliest, after)
        return [
            slot
            for slot in _candidates(self.calendar, day, self.duration)
            if slot.start.astimezone(UTC) >= floor and self.has_room(slot)
        ]

    def next_free(self, after: datetime, limit: int, per_day: int) -> list[Slot]:
        """The first free slots from `after` (UTC), at most `per_day` on any one day."""
        found: list[Slot] = []
        day = max(self.first_day, after.astimezone(self.calendar.zone).date())
        while day <= self.last_day and len(found) < limit:
            found += _pick_for_day(self.free_on(day, after), per_day)[: limit - len(found)]
            day += timedelta(days=1)
        return found

    def nearest(self, day: date, target: datetime) -> list[Slot]:
        """Free slots on `day` closest to `target`; failing that, the next free ones after it."""
        free = self.free_on(day)
        if not free:
            return self.next_free(max(target, _day_start(self.calendar, day)), _ALTERNATIVES, 2)
        free.sort(key=lambda slot: abs(_utc(slot.start) - target))
        return sorted(free[:_ALTERNATIVES], key=lambda slot: _utc(slot.start))

    def unavailable(
        self, reason: Reason, detail: str, alternatives: list[Slot], *, nearby: bool = False
    ) -> SlotUnavailable:
        if alternatives:
            lead = "Free times nearby are" if nearby else "The next free times are"
            detail += f" {lead} {spoken_choices(alternatives)}."
        elif reason is not Reason.BEYOND_HORIZON:
            detail += f" I couldn't find a free time in the next {self.calendar.horizon_days} days."
        return SlotUnavailable(reason, detail, alternatives)

    def day_problem(self, day: date) -> SlotUnavailable | None:
        """Why nothing at all can be booked on `day` (horizon, holiday, closed), if so."""
        calendar = self.calendar
        if day > self.last_day:
            return self.unavailable(
                Reason.BEYOND_HORIZON,
                f"We only take bookings up to {calendar.horizon_days} days ahead, so the "
                f"latest day we can book is {spoken_date(self.last_day)}. Please call back "
                "closer to the time.",
                [],
            )
        after_day = _day_start(calendar, day + timedelta(days=1))
        if day in calendar.holidays:
            return self.unavailable(
                Reason.HOLIDAY,
                f"We're closed on {spoken_date(day)} for {calendar.holidays[day]}.",
                self.next_free(max(after_day, self.now), _ALTERNATIVES, 2),
            )
        if not _open_on(calendar, day):
            return self.unavailable(
                Reason.CLOSED,
                f"We're closed on {_WEEKDAYS[day.weekday()].title()}s.",
                self.next_free(max(after_day, self.now), _ALTERNATIVES, 2),
            )
        return None

    def too_soon(self) -> SlotUnavailable:
        calendar = self.calendar
        if calendar.notice_days and self.first_day > self.today:
            days = "a day" if calendar.notice_days == 1 else f"{calendar.notice_days} days"
            detail = (
                f"We need to book at least {days} ahead, so the earliest day we can book "
                f"is {spoken_date(self.first_day)}."
            )
        else:
            detail = (
                f"We need at least {_spoken_duration(calendar.minimum_notice)} notice for "
                "a booking."
            )
        return self.unavailable(Reason.TOO_SOON, detail, self.next_free(self.now, _ALTERNATIVES, 2))

    def too_long(self, day: date, target: datetime) -> SlotUnavailable:
        """The job does not fit into any opening period (or window) on `day`."""
        calendar = self.calendar
        weekday = _WEEKDAYS[day.weekday()].title()
        length = _spoken_duration(self.duration or timedelta(0))
        if calendar.uses_windows:
            detail = f"That job takes {length}, longer than a booking window."
        else:
            hours = calendar.hours[day.weekday()]
            detail = (
                f"That job takes {length}, longer than we're open on {weekday}s "
                f"({spoken_time(hours.opens)} to {spoken_time(hours.closes)})."
            )
        return self.unavailable(
            Reason.OUTSIDE_HOURS, detail, self.nearest(day, target), nearby=True
        )

    def not_a_start(self, day: date, start: datetime) -> SlotUnavailable:
        """Explain why `start` is not one of the day's allowed starts."""
        calendar = self.calendar
        weekday = _WEEKDAYS[day.weekday()].title()
        starts = list(_candidates(calendar, day, self.duration))
        if not starts:
            return self.too_long(day, _utc(start))
        alternatives = self.nearest(day, _utc(start))
        if calendar.uses_windows:
            windows = [
                f"the {w.name} window ({spoken_time(w.start)} to {spoken_time(w.end)})"
                for w in calendar.windows
                if day.weekday() in w.weekdays
            ]
            only = "only " if len(windows) == 1 else ""
            detail = f"On {weekday}s we {only}book {_join(windows, 'or')}."
            return self.unavailable(Reason.OFF_GRID, detail, alternatives, nearby=True)
        hours = calendar.hours[day.weekday()]
        duration = self.duration or timedelta(0)
        clock = start.time()
        if clock < hours.opens or clock >= hours.closes:
            detail = (
                f"On {weekday}s we're open {spoken_time(hours.opens)} to "
                f"{spoken_time(hours.closes)}."
            )
            return self.unavailable(Reason.OUTSIDE_HOURS, detail, alternatives, nearby=True)
        if _utc(start) > _utc(starts[-1].start):
            detail = (
                f"That job takes {_spoken_duration(duration)}, so on {weekday}s it has to start "
                f"by {spoken_time(starts[-1].start.time())} to finish before we close at "
                f"{spoken_time(hours.closes)}."
            )
            return self.unavailable(Reason.OUTSIDE_HOURS, detail, alternatives, nearby=True)
        detail = (
            f"Appointments start every {_spoken_duration(calendar.slot_length)} from "
            f"{spoken_time(hours.opens)}."
        )
        return self.unavailable(Reason.OFF_GRID, detail, alternatives, nearby=True)


# --------------------------------------------------------------------------- public API


def available_slots(
    calendar: BusinessCalendar,
    *,
    duration: timedelta,
    day: date | None = None,
    after: datetime | None = None,
    busy: Sequence[Interval],
    now: datetime,
    limit: int = 5,
    per_day: int = 2,
) -> list[Slot]:
    """Free appointment times for a job lasting `duration`.

    With `day`, up to `limit` free times that day spread from morning to afternoon (starting
    at or after `after` if also given). Without it, the next free times from `after` (or now),
    at most `per_day` on any day so the caller hears a choice of days. Holidays, closed days,
    the minimum notice, the booking horizon and the capacity (`capacity` bookings may overlap)
    are respected, and the job must end by closing time. An empty list means nothing fits;
    `explain_day` says why in words. A naive `after` is read as the business's local time.
    """
    _require_positive(duration)
    return _search(
        calendar, duration, day=day, after=after, busy=busy, now=now, limit=limit, per_day=per_day
    )


def available_windows(
    calendar: BusinessCalendar,
    *,
    day: date | None = None,
    after: datetime | None = None,
    busy: Sequence[Interval],
    now: datetime,
    limit: int = 5,
    per_day: int = 2,
) -> list[Slot]:
    """Free booking windows (e.g. "morning", "afternoon"), like `available_slots` but each
    slot is a whole window and `Slot.window` names it. Capacity counts bookings per window."""
    if not calendar.uses_windows:
        raise UnknownWindow("This business books by the hour, not by windows.")
    return _search(
        calendar, None, day=day, after=after, busy=busy, now=now, limit=limit, per_day=per_day
    )


def _search(
    calendar: BusinessCalendar,
    duration: timedelta | None,
    *,
    day: date | None,
    after: datetime | None,
    busy: Sequence[Interval],
    now: datetime,
    limit: int,
    per_day: int,
) -> list[Slot]:
    if per_day < 1:
        raise ValueError(f"per_day must be at least 1, got {per_day}")
    query = _Query.build(calendar, duration=duration, busy=busy, now=now)
    floor = query.now if after is None else max(query.now, _local(calendar, after).astimezone(UTC))
    if limit < 1:
        return []
    if day is not None:
        return _spread_over_day(query.free_on(_as_day(calendar, day), floor), limit)
    return query.next_free(floor, limit, per_day)


def check_slot(
    calendar: BusinessCalendar,
    *,
    start: datetime,
    duration: timedelta,
    busy: Sequence[Interval],
    now: datetime,
) -> Slot:
    """Confirm that a job of `duration` can start at `start`, or raise `SlotUnavailable`.

    Call it inside the booking transaction with every booking that could overlap in `busy`
    (leave out the booking being moved when rescheduling). Returns the slot to store: for a
    window calendar that is the whole window. The checks, in order: past, beyond the horizon,
    holiday, closed that day, outside hours or not a valid start, too soon, full. A naive
    `start` is read as the business's local time.
    """
    _require_positive(duration)
    query = _Query.build(calendar, duration=duration, busy=busy, now=now)
    local = _local(calendar, start)
    start_utc = local.astimezone(UTC)
    day = local.date()
    if start_utc < query.now:
        raise query.unavailable(
            Reason.PAST,
            "That time has already passed.",
            query.next_free(query.now, _ALTERNATIVES, 2),
        )
    problem = query.day_problem(day)
    if problem is not None:
        raise problem
    match = next(
        (s for s in _candidates(calendar, day, duration) if s.start.astimezone(UTC) == start_utc),
        None,
    )
    if match is None:
        raise query.not_a_start(day, local)
    if start_utc < query.earliest or day < query.first_day:
        raise query.too_soon()
    if not query.has_room(match):
        raise query.unavailable(
            Reason.FULL, "That time is fully booked.", query.nearest(day, start_utc), nearby=True
        )
    return match


def check_window(
    calendar: BusinessCalendar,
    *,
    day: date,
    window: str,
    busy: Sequence[Interval],
    now: datetime,
) -> Slot:
    """`check_slot` for a window calendar: is the named window on `day` free?

    Raises `UnknownWindow` for a name the calendar lacks, else as `check_slot`.
    """
    chosen = calendar.window(window)
    day = _as_day(calendar, day)
    start = _local(calendar, datetime.combine(day, chosen.start))
    end = _local(calendar, datetime.combine(day, chosen.end))
    return check_slot(calendar, start=start, duration=_utc(end) - _utc(start), busy=busy, now=now)


def explain_day(
    calendar: BusinessCalendar,
    *,
    day: date,
    duration: timedelta | None = None,
    busy: Sequence[Interval],
    now: datetime,
) -> SlotUnavailable | None:
    """Why `day` has no free time, as a `SlotUnavailable` to return to the LLM, or None if
    it has some. Use it when `available_slots(day=...)` or `available_windows` comes back
    empty. `duration` is the job length; leave it out for a window calendar."""
    if duration is None and not calendar.uses_windows:
        raise ValueError("duration is required for a calendar that books by the hour")
    query = _Query.build(calendar, duration=duration, busy=busy, now=now)
    day = _as_day(calendar, day)
    if query.free_on(day):
        return None
    if day < query.today:
        return query.unavailable(
            Reason.PAST,
            "That day has already passed.",
            query.next_free(query.now, _ALTERNATIVES, 2),
        )
    problem = query.day_problem(day)
    if problem is not None:
        return problem
    starts = list(_candidates(calendar, day, duration))
    if not starts:
        return query.too_long(day, _day_start(calendar, day))
    if day == query.today and all(_utc(s.start) < query.now for s in starts):
        return query.unavailable(
            Reason.PAST,
            "There are no times left today.",
            query.next_free(query.now, _ALTERNATIVES, 2),
        )
    if day < query.first_day or all(_utc(s.start) < query.earliest for s in starts):
        return query.too_soon()
    return query.unavailable(
        Reason.FULL,
        f"We're fully booked on {spoken_date(day)}.",
        query.next_free(
            max(_day_start(calendar, day + timedelta(days=1)), query.now), _ALTERNATIVES, 2
        ),
    )


# --------------------------------------------------------------------------- parse_when

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
_DAY_WORDS = MappingProxyType(
    {
        **{name: i for i, name in enumerate(_WEEKDAYS)},
        **{name[:3]: i for i, name in enumerate(_WEEKDAYS)},
        "tues": 1,
        "weds": 2,
        "thur": 3,
        "thurs": 3,
    }
)


def parse_when(text: str, *, now: datetime, calendar: BusinessCalendar) -> date | datetime:
    """Read a date or a date and time as an LLM tool argument gives it.

    Accepts ISO "2026-11-24" (a `date`) and "2026-11-24T09:30" (an aware `datetime` in the
    business's zone; an explicit offset or "Z" is converted), plus "today", "tomorrow",
    a weekday name ("tuesday", "tue") and "this/next tuesday", all meaning the next such day
    after today. Anything else raises `UnclearDate` asking for an ISO date.
    """
    _require_aware(now, "now")
    today = now.astimezone(calendar.zone).date()
    cleaned = text.strip().rstrip(".!?,").strip()
    words = cleaned.lower().split()
    if _ISO_DATE.fullmatch(cleaned):
        try:
            return date.fromisoformat(cleaned)
        except ValueError:
            raise _unclear(text, today, f"{cleaned} is not a real date.") from None
    if _ISO_DATETIME.fullmatch(cleaned):
        try:
            parsed = datetime.fromisoformat(cleaned.upper().replace(" ", "T"))
        except ValueError:
            raise _unclear(text, today, f"{cleaned} is not a real date and time.") from None
        if parsed.tzinfo is None:
            local = parsed.replace(tzinfo=calendar.zone)
            if _wall(calendar, parsed.date(), parsed.time()) is None:
                raise _unclear(
                    text, today, f"{cleaned} does not exist: the clocks go forward that night."
                )
            return local
        return parsed.astimezone(calendar.zone)
    if words == ["today"]:
        return today
    if words == ["tomorrow"]:
        return today + timedelta(days=1)
    if words and words[0] in ("this", "next", "on"):
        words = words[1:]
    if len(words) == 1 and words[0] in _DAY_WORDS:
        ahead = (_DAY_WORDS[words[0]] - today.weekday() - 1) % 7 + 1
        return today + timedelta(days=ahead)
    raise _unclear(text, today, f"I couldn't read {text!r} as a date.")


def _unclear(text: str, today: date, problem: str) -> UnclearDate:
    example = today + timedelta(days=1)
    return UnclearDate(
        f"{problem} Please give the date as YYYY-MM-DD (for example {example.isoformat()}), "
        f"or a date and time as YYYY-MM-DDTHH:MM (for example {example.isoformat()}T09:30)."
    )
