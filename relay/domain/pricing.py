"""Piano-move quotes computed from the price list the business edits (``pricing.toml``).

Every number comes from the file; this module only knows how they combine:

1. base price for the piano type;
2. distance: road km beyond ``included_km`` at ``per_km``;
3. stairs at each end: steps carried by hand (floors count as ``steps_per_floor`` steps
   each) at the per-type rate, or a flat lift charge where a lift serves that end;
4. a top-up to the minimum charge when 1-3 come to less;
5. next-day and weekend surcharges: a percentage of 1-4 plus a flat amount;
6. storage per week.

Money is integer cents (prices are read from the file as ``Decimal``, never ``float``).
Road distance is rounded to 0.1 km, then each charge is rounded to the cent, half up.

Refusals (Sunday, same-day, past dates, unknown piano types, impossible inputs) raise
:class:`PricingError` subclasses whose messages are written for the model to act on.
A broken price list raises :class:`PricingFileError` (a :class:`~relay.errors.ConfigError`)
naming the field to fix.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from relay.errors import ConfigError, ToolError

__all__ = [
    "AmbiguousPianoType",
    "ClosedDay",
    "DateInPast",
    "InvalidQuoteRequest",
    "LineItem",
    "LineKind",
    "PianoType",
    "PricingError",
    "PricingFileError",
    "PricingRules",
    "Quote",
    "QuoteRequest",
    "SameDayNotOffered",
    "UnknownPianoType",
    "format_money",
    "load_pricing",
    "parse_piano_type",
    "quote",
]


# --------------------------------------------------------------------------- errors


class PricingError(ToolError):
    """A quote was refused. The message is read by the model, so it says what to do next."""


class UnknownPianoType(PricingError):
    """The piano type is not one we recognise."""

    def __init__(self, text: str) -> None:
        super().__init__(
            f"I don't recognise the piano type {text!r}. Ask the caller whether it is a digital "
            "piano, an upright, a large upright or player piano, a baby grand (under 170 cm "
            "long), a grand (170 to 210 cm) or a concert grand (over 210 cm)."
        )
        self.text = text


class AmbiguousPianoType(PricingError):
    """What was said names more than one piano type (``"upright, not a grand"``)."""

    def __init__(self, text: str, kinds: tuple[PianoType, ...]) -> None:
        named = " or ".join(_article(kind.spoken_name) for kind in kinds)
        super().__init__(
            f"{text!r} could be {named}. Ask the caller which it is: a digital piano, an "
            "upright, a large upright or player piano, a baby grand (under 170 cm long), a grand "
            "(170 to 210 cm) or a concert grand (over 210 cm)."
        )
        self.text = text
        self.kinds = kinds


class InvalidQuoteRequest(PricingError):
    """A quote input is impossible (negative steps, negative distance...)."""


class DateInPast(PricingError):
    """The move date is before today."""

    def __init__(self, move_date: date, earliest: date) -> None:
        super().__init__(
            f"{_spoken_date(move_date)} has already passed. Ask the caller for a moving date; "
            f"the earliest we can offer is {_spoken_date(earliest)}."
        )
        self.move_date = move_date
        self.earliest = earliest


class SameDayNotOffered(PricingError):
    """The move date is today; we never move the same day."""

    def __init__(self, move_date: date, earliest: date) -> None:
        super().__init__(
            "We don't do same-day moves. The earliest we can offer is "
            f"{_spoken_date(earliest)}. Ask the caller if that or a later day suits."
        )
        self.move_date = move_date
        self.earliest = earliest


class ClosedDay(PricingError):
    """The move date falls on a day we don't move pianos (Sunday)."""

    def __init__(self, move_date: date, alternatives: tuple[date, ...]) -> None:
        offer = " or ".join(_spoken_date(d) for d in alternatives)
        super().__init__(
            f"We don't move pianos on {move_date:%A}s. Offer {offer}."
            if offer
            else f"We don't move pianos on {move_date:%A}s. Ask the caller for another day."
        )
        self.move_date = move_date
        self.alternatives = alternatives


class PricingFileError(ConfigError):
    """``pricing.toml`` is missing or invalid; the message names the file and the field."""


# --------------------------------------------------------------------------- piano types


class PianoType(StrEnum):
    """The piano types we price. Values are the keys used in ``pricing.toml``."""

    DIGITAL = "digital"
    UPRIGHT = "upright"
    LARGE_UPRIGHT = "large_upright"
    BABY_GRAND = "baby_grand"
    GRAND = "grand"
    CONCERT_GRAND = "concert_grand"

    @property
    def spoken_name(self) -> str:
        """How the agent names the type aloud: ``"baby grand piano"``."""
        return _SPOKEN_NAMES[self]


_SPOKEN_NAMES: Final[Mapping[PianoType, str]] = MappingProxyType(
    {
        PianoType.DIGITAL: "digital piano",
        PianoType.UPRIGHT: "upright piano",
        PianoType.LARGE_UPRIGHT: "large upright piano",
        PianoType.BABY_GRAND: "baby grand piano",
        PianoType.GRAND: "grand piano",
        PianoType.CONCERT_GRAND: "concert grand piano",
    }
)

# Phrases callers use, normalised (lower case, words only, "piano" dropped), matched as
# whole words anywhere in what was said, longer phrases first and each word once, so
# "upright grand" (an old tall upright) is one match, not an upright and a grand. What was
# said must then name one type: a more specific type settles a plain one ("grand ... the baby
# one" is a baby grand, see _REFINES), and two others ("upright, not a grand") are asked about
# rather than guessed.
_SYNONYMS: Final[tuple[tuple[str, PianoType], ...]] = (
    ("semi concert grand", PianoType.CONCERT_GRAND),
    ("living room grand", PianoType.GRAND),
    ("music room grand", PianoType.GRAND),
    ("concert grand", PianoType.CONCERT_GRAND),
    ("ballroom grand", PianoType.CONCERT_GRAND),
    ("upright grand", PianoType.LARGE_UPRIGHT),
    ("concert upright", PianoType.LARGE_UPRIGHT),
    ("large upright", PianoType.LARGE_UPRIGHT),
    ("tall upright", PianoType.LARGE_UPRIGHT),
    ("big upright", PianoType.LARGE_UPRIGHT),
    ("heavy upright", PianoType.LARGE_UPRIGHT),
    ("overstrung upright", PianoType.LARGE_UPRIGHT),
    ("baby grand", PianoType.BABY_GRAND),
    ("small grand", PianoType.BABY_GRAND),
    ("petite grand", PianoType.BABY_GRAND),
    ("mini grand", PianoType.BABY_GRAND),
    ("studio grand", PianoType.BABY_GRAND),
    ("parlour grand", PianoType.GRAND),
    ("parlor grand", PianoType.GRAND),
    ("boudoir grand", PianoType.GRAND),
    ("salon grand", PianoType.GRAND),
    ("pianola", PianoType.LARGE_UPRIGHT),
    ("player", PianoType.LARGE_UPRIGHT),
    ("digital", PianoType.DIGITAL),
    ("electric", PianoType.DIGITAL),
    ("electronic", PianoType.DIGITAL),
    ("clavinova", PianoType.DIGITAL),
    ("keyboard", PianoType.DIGITAL),
    ("stage", PianoType.DIGITAL),
    ("concert", PianoType.CONCERT_GRAND),
    ("babygrand", PianoType.BABY_GRAND),
    ("baby", PianoType.BABY_GRAND),
    ("grand", PianoType.GRAND),
    ("upright", PianoType.UPRIGHT),
    ("vertical", PianoType.UPRIGHT),
    ("console", PianoType.UPRIGHT),
    ("spinet", PianoType.UPRIGHT),
    ("studio", PianoType.UPRIGHT),
    ("cottage", PianoType.UPRIGHT),
)

_SYNONYMS_LONGEST_FIRST: Final = tuple(
    (tuple(phrase.split()), kind)
    for phrase, kind in sorted(_SYNONYMS, key=lambda pair: -len(pair[0].split()))
)

#: A plain type and the more specific ones that settle it when both are named: a "digital
#: grand" or "digital upright" is a digital piano in that shape, priced as one (as before).
_REFINES: Final[Mapping[PianoType, frozenset[PianoType]]] = MappingProxyType(
    {
        PianoType.GRAND: frozenset(
            {PianoType.BABY_GRAND, PianoType.CONCERT_GRAND, PianoType.DIGITAL}
        ),
        PianoType.UPRIGHT: frozenset({PianoType.LARGE_UPRIGHT, PianoType.DIGITAL}),
    }
)

#: Grand pianos by length, as the price list's types are defined: a baby grand is under
#: 170 cm long, a grand 170 to 210 cm, a concert grand over 210 cm.
_GRANDS: Final = frozenset({PianoType.BABY_GRAND, PianoType.GRAND, PianoType.CONCERT_GRAND})
_BABY_GRAND_UNDER_CM: Final = 170
_GRAND_UP_TO_CM: Final = 210
_LENGTH: Final = re.compile(
    r"(\d+(?:[.,]\d+)?)\s*(cm|centimet(?:re|er)s?|m|met(?:re|er)s?|ft|foot|feet)\b"
)
#: A length in feet and inches ("5 ft 10 in", "5'10\"", "5 feet 10"), or metres and centimetres
#: ("1 m 80", "1 metre 80 cm").
_FEET_INCHES: Final = re.compile(
    r"(\d+)\s*(?:ft|foot|feet|')\s*(\d{1,2})\s*(?:in(?:ch(?:es)?)?\b|\"|(?=\s|$|[,.;]))"
)
_METRES_CM: Final = re.compile(r"(\d)\s*(?:m|met(?:re|er)s?)\s*(\d{1,2})\s*(?:cm\b|(?=\s|$|[,.;]))")
_CM_PER_INCH: Final = Decimal("2.54")
#: Where a caller's description breaks into clauses.
_CLAUSES: Final = re.compile(r"[,;:!?()/]+|\.(?!\d)")
_CM_PER_UNIT: Final[Mapping[str, Decimal]] = MappingProxyType(
    {"c": Decimal(1), "m": Decimal(100), "f": Decimal("30.48")}
)

_NOISE_WORDS: Final[frozenset[str]] = frozenset({"a", "an", "the", "my", "our", "piano", "pianos"})


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z]+", text.lower()) if w and w not in _NOISE_WORDS]


def parse_piano_type(text: str | PianoType) -> PianoType:
    """Map what a caller (or the model) said to a :class:`PianoType`.

    Accepts the enum values (``"baby_grand"``) and spoken names such as ``"Baby Grand"``,
    ``"babygrand"``, ``"an upright piano"``, ``"pianola"``, ``"Yamaha U3 upright"``; a grand's
    length decides which grand (``"grand piano 150 cm long"`` is a baby grand).
    Raises :class:`UnknownPianoType` when nothing matches, and :class:`AmbiguousPianoType`
    when two types are named (``"upright, not a grand"``, ``"grand upright"``) or a grand's
    length contradicts its name (``"baby grand 200 cm"``).
    """
    if isinstance(text, PianoType):
        return text
    # Phrases are matched within a clause: "not an upright, a grand" names two kinds, not the
    # "upright grand" (a tall upright) its words would make across the comma.
    named: list[PianoType] = []
    for clause in _CLAUSES.split(text.replace("_", " ")):
        named.extend(kind for kind in _named_types(_words(clause)) if kind not in named)
    if not named:
        raise UnknownPianoType(text)
    kinds = [kind for kind in named if not _REFINES.get(kind, frozenset()) & set(named)]
    length_cm = _length_cm(text)
    if length_cm is not None and set(kinds) <= _GRANDS:
        # The length settles which grand; a name it contradicts is a second type named.
        by_length = _grand_by_length(length_cm)
        kinds = [kind for kind in kinds if kind is not PianoType.GRAND]
        if by_length not in kinds:
            kinds.append(by_length)
    if len(kinds) > 1:
        raise AmbiguousPianoType(text, tuple(kinds))
    return kinds[0]


def _named_types(words: list[str]) -> list[PianoType]:
    """The piano types named in ``words``, in the order they were said, each once; longer
    phrases are matched first and each word belongs to one phrase."""
    used = [False] * len(words)
    found: list[tuple[int, PianoType]] = []
    for phrase, kind in _SYNONYMS_LONGEST_FIRST:
        size = len(phrase)
        for start in range(len(words) - size + 1):
            span = range(start, start + size)
            if tuple(words[start : start + size]) == phrase and not any(used[i] for i in span):
                for i in span:
                    used[i] = True
                found.append((start, kind))
    kinds: list[PianoType] = []
    for _, kind in sorted(found, key=lambda item: item[0]):
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _length_cm(text: str) -> Decimal | None:
    """The grand's length in what was said: the longest dimension given (a grand is longer
    than it is wide: "1.5 m wide and 1.9 m long" is 190 cm), a dimension in two parts taken
    whole ("5 ft 10 in", "1 m 80")."""
    lowered = text.lower()
    found: list[Decimal] = []
    for match in _FEET_INCHES.finditer(lowered):
        found.append(
            Decimal(match.group(1)) * _CM_PER_UNIT["f"] + Decimal(match.group(2)) * _CM_PER_INCH
        )
    lowered = _FEET_INCHES.sub(" ", lowered)
    for match in _METRES_CM.finditer(lowered):
        found.append(Decimal(match.group(1)) * 100 + Decimal(match.group(2)))
    lowered = _METRES_CM.sub(" ", lowered)
    for match in _LENGTH.finditer(lowered):
        found.append(Decimal(match.group(1).replace(",", ".")) * _CM_PER_UNIT[match.group(2)[0]])
    return max(found, default=None)


def _grand_by_length(length_cm: Decimal) -> PianoType:
    if length_cm < _BABY_GRAND_UNDER_CM:
        return PianoType.BABY_GRAND
    if length_cm <= _GRAND_UP_TO_CM:
        return PianoType.GRAND
    return PianoType.CONCERT_GRAND


# --------------------------------------------------------------------------- price list


def _number(value: Any) -> Any:
    """A TOML number, never text or a boolean (``"350"`` or ``true`` is a mistake in the file,
    not a price)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number, written without quotes or $")
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number, written without quotes")
    return value


def _yes_no(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false, written without quotes")
    return value


# Numbers in the file are TOML numbers: text ("350") or a boolean is refused, not converted.
Number = Annotated[Decimal, BeforeValidator(_number)]
Whole = Annotated[int, BeforeValidator(_whole_number)]
YesNo = Annotated[bool, BeforeValidator(_yes_no)]
# Money in the file: dollars, at most two decimals, never negative.
Money = Annotated[Number, Field(ge=0, decimal_places=2)]
Percent = Annotated[Number, Field(ge=0, le=100)]

_WEEKDAYS: Final[tuple[str, ...]] = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)


def _weekday_names(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    names: list[str] = []
    for item in value:
        name = str(item).strip().capitalize()
        if name not in _WEEKDAYS:
            raise ValueError(f"{item!r} is not a day of the week (use e.g. 'Sunday')")
        names.append(name)
    return tuple(names)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerPianoType(_Section):
    """One amount per piano type (a table keyed by the :class:`PianoType` values)."""

    digital: Money
    upright: Money
    large_upright: Money
    baby_grand: Money
    grand: Money
    concert_grand: Money

    def cents(self, piano: PianoType) -> int:
        """The amount for ``piano`` in cents."""
        amounts: dict[PianoType, Decimal] = {
            PianoType.DIGITAL: self.digital,
            PianoType.UPRIGHT: self.upright,
            PianoType.LARGE_UPRIGHT: self.large_upright,
            PianoType.BABY_GRAND: self.baby_grand,
            PianoType.GRAND: self.grand,
            PianoType.CONCERT_GRAND: self.concert_grand,
        }
        return _to_cents(amounts[piano])


class General(_Section):
    """``[general]``: currency, GST, time zone, minimum charge, quote validity."""

    currency: str = Field(min_length=3, max_length=3)
    gst_included: YesNo
    timezone: str
    minimum_charge: Money
    quote_valid_days: Whole = Field(ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Distance(_Section):
    """``[distance]``: included road km, price per km beyond, straight-line to road factor."""

    included_km: Number = Field(ge=0)
    per_km: Money
    road_factor: Annotated[float, BeforeValidator(_number)] = Field(ge=1, le=3)


#: Steps carried by hand at one end, floors included, beyond which a count is taken to be
#: misheard rather than priced, when the price list does not say (``stairs.max_steps_per_end``):
#: ten floors of 14 steps, over three times the stairs that make a grand a crane job.
DEFAULT_MAX_STEPS_PER_END: Final = 140
#: Weeks of storage beyond which a count is asked again (``storage.max_weeks``): a year.
DEFAULT_MAX_STORAGE_WEEKS: Final = 52


class Stairs(_Section):
    """``[stairs]``: steps per floor, the per-step price for each piano type, and the most
    steps (floors included) carried by hand at one end that a quote believes."""

    steps_per_floor: Whole = Field(ge=1)
    per_step: PerPianoType
    max_steps_per_end: Whole = Field(default=DEFAULT_MAX_STEPS_PER_END, ge=1)


class Lift(_Section):
    """``[lift]``: flat charge per end served by a lift (stairs then not charged there)."""

    per_end: Money


class Calendar(_Section):
    """``[calendar]``: weekdays we never move on."""

    closed_days: tuple[str, ...]

    @field_validator("closed_days", mode="before")
    @classmethod
    def _day_names(cls, value: Any) -> Any:
        return _weekday_names(value)


class Surcharge(_Section):
    """A surcharge: ``percent`` of the job price plus a ``flat`` amount."""

    percent: Percent
    flat: Money


class WeekendSurcharge(Surcharge):
    """``[weekend_surcharge]``: a surcharge for moves on the listed weekdays."""

    days: tuple[str, ...]

    @field_validator("days", mode="before")
    @classmethod
    def _day_names(cls, value: Any) -> Any:
        return _weekday_names(value)


class Storage(_Section):
    """``[storage]``: warehouse storage per piano per week, and the most weeks a quote takes."""

    per_week: Money
    max_weeks: Whole = Field(default=DEFAULT_MAX_STORAGE_WEEKS, ge=1)


class Crane(_Section):
    """``[crane]``: when to flag that a crane or hoist (priced on inspection) may be needed."""

    types: tuple[PianoType, ...]
    steps_threshold: Whole = Field(ge=0)


class Cancellation(_Section):
    """``[cancellation]``: late-cancellation fee, quoted by the knowledge documents."""

    late_fee: Money
    notice_hours: Whole = Field(ge=0)


class PricingRules(_Section):
    """The whole price list, validated. Build it with :func:`load_pricing`."""

    general: General
    base_price: PerPianoType
    distance: Distance
    stairs: Stairs
    lift: Lift
    calendar: Calendar
    next_day_surcharge: Surcharge
    weekend_surcharge: WeekendSurcharge
    storage: Storage
    crane: Crane
    cancellation: Cancellation

    @property
    def tz(self) -> ZoneInfo:
        """The business's time zone; use it to work out ``today`` for :func:`quote`."""
        return ZoneInfo(self.general.timezone)

    def is_open(self, day: date) -> bool:
        """Whether pianos are moved on ``day``'s weekday."""
        return _WEEKDAYS[day.weekday()] not in self.calendar.closed_days


def load_pricing(path: str | Path) -> PricingRules:
    """Read and validate ``pricing.toml``.

    Numbers are parsed as ``Decimal``. Raises :class:`PricingFileError` naming the file and
    each bad field (``base_price.grand: Field required``) when the file is missing, is not
    valid TOML, lacks a field, has an unknown one, or holds an impossible value.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh, parse_float=Decimal)
    except FileNotFoundError as exc:
        raise PricingFileError(f"{path}: price list not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PricingFileError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return PricingRules.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise PricingFileError(f"{path}: {problems}") from exc


def _problem(error: Any) -> str:
    """One fault of the file on one line: the setting, what is wrong, and what was written."""
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    if error["type"] == "value_error" and not isinstance(given, dict | list):
        message += "" if repr(given) in message else f" (got {given!r})"
    return f"{where}: {message}"


# --------------------------------------------------------------------------- request / quote


@dataclass(frozen=True, kw_only=True)
class QuoteRequest:
    """What the caller wants moved, from where to where, and when.

    ``piano_type`` takes a :class:`PianoType` or a spoken name (``"baby grand"``,
    ``"pianola"``), normalised with :func:`parse_piano_type` on construction, so after
    construction it is always a :class:`PianoType` (:class:`UnknownPianoType` otherwise).

    At each end: ``steps`` are stair steps the piano is carried on by hand; ``floors`` are
    storeys climbed by stairs, each counted as ``stairs.steps_per_floor`` steps; with
    ``has_lift`` a lift big enough for the piano serves that address, so no stairs are
    charged there, only the flat lift charge (if any steps or floors were given).
    """

    piano_type: PianoType | str
    pickup: str
    dropoff: str
    move_date: date
    pickup_steps: int = 0
    pickup_floors: int = 0
    pickup_has_lift: bool = False
    dropoff_steps: int = 0
    dropoff_floors: int = 0
    dropoff_has_lift: bool = False
    storage_weeks: int = 0
    needs_crane: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "piano_type", parse_piano_type(self.piano_type))
        for name in (
            "pickup_steps",
            "pickup_floors",
            "dropoff_steps",
            "dropoff_floors",
            "storage_weeks",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidQuoteRequest(
                    f"{name} must be a whole number, zero or more (got {value!r}). "
                    "Ask the caller again."
                )


#: What a quote needing a crane or hoist says instead of a price.
INSPECTION_ONLY: Final = (
    "Crane and hoist jobs are never priced over the phone: the price is worked out after an "
    "inspection, so there is no price to give and the move can't be booked yet."
)


class LineKind(StrEnum):
    """What a line of a quote charges for."""

    BASE = "base"
    DISTANCE = "distance"
    STAIRS = "stairs"
    LIFT = "lift"
    MINIMUM = "minimum"
    NEXT_DAY = "next_day"
    WEEKEND = "weekend"
    STORAGE = "storage"


_SURCHARGE_KINDS: Final[frozenset[LineKind]] = frozenset({LineKind.NEXT_DAY, LineKind.WEEKEND})
_EXTRA_KINDS: Final[frozenset[LineKind]] = frozenset({LineKind.STORAGE})


@dataclass(frozen=True)
class LineItem:
    """One charge: a plain-English ``label``, its ``amount_cents`` and a short ``phrase``
    that follows the amount when spoken (``"$57.50" + " for the extra 23 km"``)."""

    kind: LineKind
    label: str
    amount_cents: int
    phrase: str


@dataclass(frozen=True)
class Quote:
    """A priced move. Amounts are integer cents, GST as stated by ``gst_included``."""

    piano_type: PianoType
    pickup: str
    dropoff: str
    move_date: date
    distance_km: Decimal | None
    lines: tuple[LineItem, ...]
    notes: tuple[str, ...]
    valid_until: date
    currency: str
    gst_included: bool
    needs_inspection: bool = False

    @property
    def subtotal_cents(self) -> int:
        """The job price before surcharges and storage (what the percentages apply to)."""
        return sum(
            line.amount_cents
            for line in self.lines
            if line.kind not in _SURCHARGE_KINDS | _EXTRA_KINDS
        )

    @property
    def surcharges_cents(self) -> int:
        """Next-day and weekend surcharges together."""
        return sum(line.amount_cents for line in self.lines if line.kind in _SURCHARGE_KINDS)

    @property
    def total_cents(self) -> int:
        """Everything the caller pays."""
        return sum(line.amount_cents for line in self.lines)

    def spoken(self) -> str:
        """The quote as one or two short sentences for the agent to read out.

        The first gives the total and the breakdown; the second (only when there are notes)
        says what is not included, such as a crane needing an inspection.

        A move that needs a crane or hoist has no phone price at all (the price list says so):
        no total and no breakdown, only why, so the agent offers an inspection instead.
        """
        if self.needs_inspection:
            return " ".join((*self.notes, INSPECTION_ONLY))
        gst = "including GST" if self.gst_included else "plus GST"
        total = format_money(self.total_cents)
        if len(self.lines) == 1:
            first = f"The total is {total} {gst} {self.lines[0].phrase}."
        else:
            parts = [f"{format_money(line.amount_cents)} {line.phrase}" for line in self.lines]
            first = f"The total is {total} {gst}: {_join(parts)}."
        return " ".join((first, *self.notes))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for a tool result (without any price when it needs an inspection)."""
        if self.needs_inspection:
            return {
                "piano_type": self.piano_type.value,
                "pickup": self.pickup,
                "dropoff": self.dropoff,
                "move_date": self.move_date.isoformat(),
                "notes": list(self.notes),
                "needs_inspection": True,
                "spoken": self.spoken(),
            }
        return {
            "piano_type": self.piano_type.value,
            "pickup": self.pickup,
            "dropoff": self.dropoff,
            "move_date": self.move_date.isoformat(),
            "road_distance_km": None if self.distance_km is None else float(self.distance_km),
            "lines": [
                {"label": line.label, "amount": format_money(line.amount_cents)}
                for line in self.lines
            ],
            "total": format_money(self.total_cents),
            "total_cents": self.total_cents,
            "currency": self.currency,
            "gst_included": self.gst_included,
            "notes": list(self.notes),
            "needs_inspection": self.needs_inspection,
            "valid_until": self.valid_until.isoformat(),
            "spoken": self.spoken(),
        }


# --------------------------------------------------------------------------- the quote


def quote(
    rules: PricingRules,
    request: QuoteRequest,
    *,
    today: date,
    distance_km: float | None,
) -> Quote:
    """Price ``request`` with ``rules`` as of ``today`` (in the business's time zone).

    ``distance_km`` is the road distance between pick-up and drop-off (straight-line km
    times ``rules.distance.road_factor``, see :func:`relay.domain.places.distance_km`);
    ``None`` when unknown, in which case the quote leaves distance out and says so in a note.

    Raises :class:`DateInPast`, :class:`SameDayNotOffered` or :class:`ClosedDay` for dates
    we can't do, and :class:`InvalidQuoteRequest` for an impossible distance or more stairs
    or storage weeks than the price list believes (a misheard "floor 100").
    """
    _check_date(rules, request.move_date, today)
    _check_counts(rules, request)
    piano = parse_piano_type(request.piano_type)  # already normalised; this narrows the type
    lines: list[LineItem] = []
    notes: list[str] = []

    lines.append(
        LineItem(
            LineKind.BASE,
            f"Base price for {_article(piano.spoken_name)}",
            rules.base_price.cents(piano),
            f"for the {piano.spoken_name}",
        )
    )

    road_km = _road_km(distance_km)
    if road_km is None:
        notes.append(
            "The distance charge isn't included yet because I couldn't work out the distance; "
            f"it's {format_money(_to_cents(rules.distance.per_km))} per km beyond the first "
            f"{_km(rules.distance.included_km)}."
        )
    else:
        extra_km = road_km - rules.distance.included_km
        if extra_km > 0:
            lines.append(
                LineItem(
                    LineKind.DISTANCE,
                    f"Distance: {_km(extra_km)} beyond the first {_km(rules.distance.included_km)}"
                    f" at {format_money(_to_cents(rules.distance.per_km))} per km",
                    _round_cents(extra_km * rules.distance.per_km * 100),
                    f"for the extra {_km(extra_km)}",
                )
            )

    crane_ends: list[str] = []
    for end, steps, floors, has_lift in (
        ("pick-up", request.pickup_steps, request.pickup_floors, request.pickup_has_lift),
        ("drop-off", request.dropoff_steps, request.dropoff_floors, request.dropoff_has_lift),
    ):
        item = _stairs_line(rules, piano, end, steps, floors, has_lift)
        if item is None:
            continue
        lines.append(item)
        total_steps = steps + floors * rules.stairs.steps_per_floor
        if (
            item.kind is LineKind.STAIRS
            and piano in rules.crane.types
            and total_steps > rules.crane.steps_threshold
        ):
            crane_ends.append(end)

    job_cents = sum(line.amount_cents for line in lines)
    minimum_cents = _to_cents(rules.general.minimum_charge)
    if job_cents < minimum_cents:
        lines.append(
            LineItem(
                LineKind.MINIMUM,
                f"Top-up to our minimum charge of {format_money(minimum_cents)}",
                minimum_cents - job_cents,
                f"to reach our {format_money(minimum_cents)} minimum",
            )
        )
        job_cents = minimum_cents

    if request.move_date == today + timedelta(days=1):
        lines.extend(
            _surcharge(
                rules.next_day_surcharge,
                job_cents,
                LineKind.NEXT_DAY,
                "Next-day surcharge",
                "for next-day service",
            )
        )
    weekday = _WEEKDAYS[request.move_date.weekday()]
    if weekday in rules.weekend_surcharge.days:
        lines.extend(
            _surcharge(
                rules.weekend_surcharge,
                job_cents,
                LineKind.WEEKEND,
                f"{weekday} surcharge",
                f"for a {weekday} move",
            )
        )

    if request.storage_weeks:
        weeks = _plural(request.storage_weeks, "week")
        per_week = format_money(_to_cents(rules.storage.per_week))
        lines.append(
            LineItem(
                LineKind.STORAGE,
                f"Storage: {weeks} at {per_week} per week",
                request.storage_weeks * _to_cents(rules.storage.per_week),
                f"for {weeks} of storage",
            )
        )

    if request.needs_crane:
        notes.append(
            "A crane or hoist is needed, which we price after an inspection, so it isn't included."
        )
    elif crane_ends:
        where = " and ".join(crane_ends)
        notes.append(
            f"With that many stairs at {where}, a {piano.spoken_name} may need a crane or hoist; "
            "that needs an inspection and isn't included."
        )

    return Quote(
        piano_type=piano,
        pickup=request.pickup,
        dropoff=request.dropoff,
        move_date=request.move_date,
        distance_km=road_km,
        lines=tuple(lines),
        notes=tuple(notes),
        valid_until=today + timedelta(days=rules.general.quote_valid_days),
        currency=rules.general.currency,
        gst_included=rules.general.gst_included,
        needs_inspection=bool(request.needs_crane or crane_ends),
    )


def _check_date(rules: PricingRules, move_date: date, today: date) -> None:
    earliest = _next_open_day(rules, today)
    if move_date < today:
        raise DateInPast(move_date, earliest)
    if move_date == today:
        raise SameDayNotOffered(move_date, earliest)
    if not rules.is_open(move_date):
        before = _previous_open_day(rules, move_date, after=today)
        after = _next_open_day(rules, move_date)
        raise ClosedDay(move_date, tuple(d for d in (before, after) if d is not None))


def _check_counts(rules: PricingRules, request: QuoteRequest) -> None:
    """Refuse counts no caller meant, so that a misheard number is asked again, not priced.
    Floors served by a lift are not carried, so they are not counted."""
    most = rules.stairs.max_steps_per_end
    for end, name, steps, floors, has_lift in (
        ("pick-up", "pickup", request.pickup_steps, request.pickup_floors, request.pickup_has_lift),
        ("drop-off", "dropoff", request.dropoff_steps, request.dropoff_floors,
         request.dropoff_has_lift),
    ):  # fmt: skip
        total = steps + floors * rules.stairs.steps_per_floor
        if not has_lift and total > most:
            raise InvalidQuoteRequest(
                f"{name}_floors {floors} and {name}_steps {steps} come to {total} steps at {end}, "
                f"more than the {most} we carry a piano by hand at one end. Ask the caller again: "
                "the floors climbed by stairs, and the steps besides the floors."
            )
    if request.storage_weeks > rules.storage.max_weeks:
        raise InvalidQuoteRequest(
            f"storage_weeks {request.storage_weeks} is more than the {rules.storage.max_weeks} "
            "weeks we store a piano for. Ask the caller again; for longer storage, offer to take "
            "a message for the office."
        )


def _next_open_day(rules: PricingRules, day: date) -> date:
    for offset in range(1, 8):
        candidate = day + timedelta(days=offset)
        if rules.is_open(candidate):
            return candidate
    raise PricingFileError("calendar.closed_days: every day of the week is closed")


def _previous_open_day(rules: PricingRules, day: date, *, after: date) -> date | None:
    candidate = day - timedelta(days=1)
    while candidate > after:
        if rules.is_open(candidate):
            return candidate
        candidate -= timedelta(days=1)
    return None


def _road_km(distance_km: float | None) -> Decimal | None:
    if distance_km is None:
        return None
    km = Decimal(str(distance_km))
    if not km.is_finite() or km < 0:
        raise InvalidQuoteRequest(
            f"The distance {distance_km!r} km is impossible. Check the pick-up and drop-off."
        )
    return km.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _stairs_line(
    rules: PricingRules,
    piano: PianoType,
    end: str,
    steps: int,
    floors: int,
    has_lift: bool,
) -> LineItem | None:
    if steps == 0 and floors == 0:
        return None
    if has_lift:
        lift_cents = _to_cents(rules.lift.per_end)
        if lift_cents == 0:
            return None
        return LineItem(LineKind.LIFT, f"Lift at {end}", lift_cents, f"for the lift at {end}")
    total = steps + floors * rules.stairs.steps_per_floor
    rate = rules.stairs.per_step.cents(piano)
    if rate == 0:
        return None
    if floors:
        counted = _plural(floors, "floor")
        if steps:
            counted += f" and {_plural(steps, 'step')}"
        what = f"{counted} without a lift, counted as {_plural(total, 'step')}"
    else:
        what = f"{_plural(total, 'step')} without a lift"
    return LineItem(
        LineKind.STAIRS,
        f"Stairs at {end}: {what} at {format_money(rate)} per step",
        total * rate,
        f"for {_plural(total, 'step')} at {end}",
    )


def _surcharge(
    rule: Surcharge, job_cents: int, kind: LineKind, name: str, phrase: str
) -> list[LineItem]:
    amount = _round_cents(Decimal(job_cents) * rule.percent / 100) + _to_cents(rule.flat)
    if amount == 0:
        return []
    if rule.percent and rule.flat:
        label = f"{name} ({_percent(rule.percent)} plus {format_money(_to_cents(rule.flat))})"
    elif rule.percent:
        label = f"{name} ({_percent(rule.percent)})"
    else:
        label = name
    return [LineItem(kind, label, amount, phrase)]


# --------------------------------------------------------------------------- formatting


def format_money(cents: int) -> str:
    """Dollars as the agent says them: ``"$650"``, ``"$1,234.50"`` (no cents when whole)."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}" if rest == 0 else f"{sign}${dollars:,}.{rest:02d}"


def _to_cents(dollars: Decimal) -> int:
    return _round_cents(dollars * 100)


def _round_cents(cents: Decimal) -> int:
    return int(cents.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _km(km: Decimal) -> str:
    text = format(km.normalize(), "f")
    return f"{text} km"


def _percent(value: Decimal) -> str:
    return f"{format(value.normalize(), 'f')}%"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def _spoken_date(day: date) -> str:
    return f"{day:%A} {day.day} {day:%B}"
