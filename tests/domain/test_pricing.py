"""Quotes computed from the shipped price list, checked to the cent against sums done by hand."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.domain.pricing import (
    ClosedDay,
    DateInPast,
    InvalidQuoteRequest,
    LineKind,
    PianoType,
    PricingError,
    PricingFileError,
    PricingRules,
    QuoteRequest,
    SameDayNotOffered,
    UnknownPianoType,
    format_money,
    load_pricing,
    parse_piano_type,
    quote,
)
from relay.errors import ConfigError, ToolError

PRICING_TOML = Path(__file__).resolve().parents[2] / "data" / "piano-removals" / "pricing.toml"

MON = date(2026, 3, 2)  # "today" in most cases: Monday 2 March 2026
TUE = date(2026, 3, 3)
WED_NEXT = date(2026, 3, 11)  # an ordinary weekday, no surcharges
FRI = date(2026, 3, 6)
SAT = date(2026, 3, 7)
SUN = date(2026, 3, 8)


@pytest.fixture(scope="module")
def rules() -> PricingRules:
    return load_pricing(PRICING_TOML)


def test_shipped_price_list_is_the_one_the_table_was_worked_out_from(rules: PricingRules) -> None:
    # The hand-computed table below uses these numbers. If the owner changes pricing.toml,
    # update this test and the table together.
    assert rules.general.currency == "AUD"
    assert rules.general.gst_included is True
    assert rules.general.minimum_charge == 250
    assert rules.general.quote_valid_days == 30
    assert [rules.base_price.cents(t) for t in PianoType] == [
        22000,
        35000,
        45000,
        65000,
        80000,
        140000,
    ]
    assert rules.distance.included_km == 10
    assert rules.distance.per_km == Decimal("2.50")
    assert rules.distance.road_factor == 1.3
    assert rules.stairs.steps_per_floor == 14
    assert [rules.stairs.per_step.cents(t) for t in PianoType] == [300, 600, 800, 1000, 1200, 1800]
    assert rules.lift.per_end == 25
    assert rules.calendar.closed_days == ("Sunday",)
    assert (rules.next_day_surcharge.percent, rules.next_day_surcharge.flat) == (
        Decimal(20),
        Decimal(0),
    )
    assert rules.weekend_surcharge.days == ("Saturday",)
    assert (rules.weekend_surcharge.percent, rules.weekend_surcharge.flat) == (
        Decimal(0),
        Decimal(80),
    )
    assert rules.storage.per_week == 60
    assert rules.crane.types == (PianoType.BABY_GRAND, PianoType.GRAND, PianoType.CONCERT_GRAND)
    assert rules.crane.steps_threshold == 42
    assert (rules.cancellation.late_fee, rules.cancellation.notice_hours) == (Decimal(150), 48)
    assert str(rules.tz) == "Australia/Melbourne"


@dataclass(frozen=True)
class Case:
    id: str
    request: dict[str, Any]
    distance_km: float | None
    lines: list[tuple[LineKind, int]]
    total: int
    today: date = MON
    needs_inspection: bool = False
    labels: dict[LineKind, str] = field(default_factory=dict)


CASES = [
    Case(
        "upright within the included km",
        {"piano_type": "upright"},
        8.4,
        [(LineKind.BASE, 35000)],
        35000,
        labels={LineKind.BASE: "Base price for an upright piano"},
    ),
    Case(
        # 33 km - 10 included = 23 km x $2.50 = $57.50
        "baby grand with a distance charge",
        {"piano_type": "baby grand"},
        33.0,
        [(LineKind.BASE, 65000), (LineKind.DISTANCE, 5750)],
        70750,
        labels={
            LineKind.BASE: "Base price for a baby grand piano",
            LineKind.DISTANCE: "Distance: 23 km beyond the first 10 km at $2.50 per km",
        },
    ),
    Case(
        # 12 steps x $12 = $144; 20 steps x $12 = $240
        "grand with stairs at both ends and no lift",
        {"piano_type": "grand", "pickup_steps": 12, "dropoff_steps": 20},
        8.0,
        [(LineKind.BASE, 80000), (LineKind.STAIRS, 14400), (LineKind.STAIRS, 24000)],
        118400,
        labels={LineKind.STAIRS: "Stairs at drop-off: 20 steps without a lift at $12 per step"},
    ),
    Case(
        # pick-up 1 floor + 3 steps = 17 steps x $6 = $102; drop-off 2 floors = 28 x $6 = $168
        "floors converted to steps",
        {"piano_type": "upright", "pickup_steps": 3, "pickup_floors": 1, "dropoff_floors": 2},
        10.0,
        [(LineKind.BASE, 35000), (LineKind.STAIRS, 10200), (LineKind.STAIRS, 16800)],
        62000,
        labels={
            LineKind.STAIRS: (
                "Stairs at drop-off: 2 floors without a lift, counted as 28 steps at $6 per step"
            )
        },
    ),
    Case(
        # 5.5 km x $2.50 = $13.75; lift at pick-up $25 (its 3 floors free); 5 steps x $10 = $50
        "lift at one end",
        {
            "piano_type": "babygrand",
            "pickup_floors": 3,
            "pickup_has_lift": True,
            "dropoff_steps": 5,
        },
        15.5,
        [
            (LineKind.BASE, 65000),
            (LineKind.DISTANCE, 1375),
            (LineKind.LIFT, 2500),
            (LineKind.STAIRS, 5000),
        ],
        73875,
        labels={LineKind.LIFT: "Lift at pick-up"},
    ),
    Case(
        "a lift at a ground-floor address costs nothing",
        {"piano_type": "upright", "pickup_has_lift": True, "dropoff_has_lift": True},
        5.0,
        [(LineKind.BASE, 35000)],
        35000,
    ),
    Case(
        # ($350 + 10 km x $2.50) x 20% = $75
        "next-day surcharge",
        {"piano_type": "upright piano", "move_date": TUE},
        20.0,
        [(LineKind.BASE, 35000), (LineKind.DISTANCE, 2500), (LineKind.NEXT_DAY, 7500)],
        45000,
        labels={LineKind.NEXT_DAY: "Next-day surcharge (20%)"},
    ),
    Case(
        "Saturday surcharge",
        {"piano_type": "grand", "move_date": SAT},
        5.0,
        [(LineKind.BASE, 80000), (LineKind.WEEKEND, 8000)],
        88000,
        labels={LineKind.WEEKEND: "Saturday surcharge"},
    ),
    Case(
        # Friday call for Saturday: 20% of $350 = $70, plus $80
        "next day that is a Saturday gets both surcharges",
        {"piano_type": "upright", "move_date": SAT},
        5.0,
        [(LineKind.BASE, 35000), (LineKind.NEXT_DAY, 7000), (LineKind.WEEKEND, 8000)],
        50000,
        today=FRI,
    ),
    Case(
        "minimum charge applied",
        {"piano_type": "digital piano"},
        3.0,
        [(LineKind.BASE, 22000), (LineKind.MINIMUM, 3000)],
        25000,
        labels={LineKind.MINIMUM: "Top-up to our minimum charge of $250"},
    ),
    Case(
        # the surcharge is on the minimum, not on the lower base price: 20% of $250
        "minimum charge, then next-day surcharge",
        {"piano_type": "digital", "move_date": TUE},
        3.0,
        [(LineKind.BASE, 22000), (LineKind.MINIMUM, 3000), (LineKind.NEXT_DAY, 5000)],
        30000,
    ),
    Case(
        # 11.06 km -> 11.1 km; 1.1 km x $2.50 = $2.75; 20% of $352.75 = $70.55
        "distance rounded to 0.1 km and charges to the cent",
        {"piano_type": "upright", "move_date": TUE},
        11.06,
        [(LineKind.BASE, 35000), (LineKind.DISTANCE, 275), (LineKind.NEXT_DAY, 7055)],
        42330,
    ),
    Case(
        # 10.05 km rounds half up to 10.1 km: 0.1 km x $2.50 = 25 cents
        "half a tenth of a km rounds up",
        {"piano_type": "upright"},
        10.05,
        [(LineKind.BASE, 35000), (LineKind.DISTANCE, 25)],
        35025,
        labels={LineKind.DISTANCE: "Distance: 0.1 km beyond the first 10 km at $2.50 per km"},
    ),
    Case(
        "storage by the week",
        {"piano_type": "upright", "storage_weeks": 2},
        5.0,
        [(LineKind.BASE, 35000), (LineKind.STORAGE, 12000)],
        47000,
        labels={LineKind.STORAGE: "Storage: 2 weeks at $60 per week"},
    ),
    Case(
        "crane asked for: priced on inspection, not in the total",
        {"piano_type": "grand piano", "needs_crane": True},
        5.0,
        [(LineKind.BASE, 80000)],
        80000,
        needs_inspection=True,
    ),
    Case(
        # 4 floors = 56 steps > 42 for a grand: flagged, stairs still charged 56 x $12
        "many stairs flag a crane for a grand",
        {"piano_type": "grand", "dropoff_floors": 4},
        5.0,
        [(LineKind.BASE, 80000), (LineKind.STAIRS, 67200)],
        147200,
        needs_inspection=True,
    ),
    Case(
        # the same stairs with an upright: no crane flag (uprights are not in crane.types)
        "many stairs with an upright do not flag a crane",
        {"piano_type": "upright", "dropoff_floors": 4},
        5.0,
        [(LineKind.BASE, 35000), (LineKind.STAIRS, 33600)],
        68600,
    ),
    Case(
        "pianola is a large upright",
        {"piano_type": "pianola"},
        5.0,
        [(LineKind.BASE, 45000)],
        45000,
        labels={LineKind.BASE: "Base price for a large upright piano"},
    ),
    Case(
        "concert grand",
        {"piano_type": "Concert Grand"},
        5.0,
        [(LineKind.BASE, 140000)],
        140000,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_quote_table(rules: PricingRules, case: Case) -> None:
    request = QuoteRequest(
        **{"pickup": "Brunswick", "dropoff": "Coburg", "move_date": WED_NEXT, **case.request}
    )

    result = quote(rules, request, today=case.today, distance_km=case.distance_km)

    assert [(line.kind, line.amount_cents) for line in result.lines] == case.lines
    assert result.total_cents == case.total
    assert sum(line.amount_cents for line in result.lines) == result.total_cents
    assert result.needs_inspection is case.needs_inspection
    assert any("inspection" in note for note in result.notes) is case.needs_inspection
    for kind, label in case.labels.items():
        assert label in [line.label for line in result.lines if line.kind is kind]
    assert result.valid_until == case.today + timedelta(days=30)


def test_subtotal_is_the_job_before_surcharges_and_storage(rules: PricingRules) -> None:
    request = QuoteRequest(
        piano_type=PianoType.UPRIGHT,
        pickup="Brunswick",
        dropoff="Geelong",
        move_date=SAT,
        storage_weeks=1,
    )

    result = quote(rules, request, today=FRI, distance_km=20.0)

    assert result.subtotal_cents == 37500  # $350 + 10 km x $2.50
    assert result.surcharges_cents == 7500 + 8000  # 20% next day + $80 Saturday
    assert result.total_cents == 37500 + 15500 + 6000


def test_unknown_distance_leaves_it_out_and_says_so(rules: PricingRules) -> None:
    request = QuoteRequest(
        piano_type=PianoType.UPRIGHT, pickup="Brunswick", dropoff="?", move_date=WED_NEXT
    )

    result = quote(rules, request, today=MON, distance_km=None)

    assert result.total_cents == 35000
    assert result.distance_km is None
    assert "$2.50 per km beyond the first 10 km" in result.notes[0]


# --------------------------------------------------------------------------- refusals


def test_sunday_is_refused_with_saturday_and_monday_offered(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=SUN)

    with pytest.raises(ClosedDay) as info:
        quote(rules, request, today=MON, distance_km=5.0)

    assert str(info.value) == (
        "We don't move pianos on Sundays. Offer Saturday 7 March or Monday 9 March."
    )
    assert info.value.alternatives == (SAT, date(2026, 3, 9))


def test_sunday_asked_on_saturday_offers_only_monday(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=SUN)

    with pytest.raises(ClosedDay, match=r"Offer Monday 9 March\.$"):
        quote(rules, request, today=SAT, distance_km=5.0)


def test_past_date_is_refused(rules: PricingRules) -> None:
    request = QuoteRequest(
        piano_type="upright", pickup="a", dropoff="b", move_date=date(2026, 3, 1)
    )

    with pytest.raises(DateInPast, match="Sunday 1 March has already passed") as info:
        quote(rules, request, today=MON, distance_km=5.0)

    assert info.value.earliest == TUE


def test_same_day_is_refused(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=MON)

    with pytest.raises(SameDayNotOffered, match="earliest we can offer is Tuesday 3 March"):
        quote(rules, request, today=MON, distance_km=5.0)


def test_same_day_on_saturday_points_past_sunday(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=SAT)

    with pytest.raises(SameDayNotOffered, match="Monday 9 March"):
        quote(rules, request, today=SAT, distance_km=5.0)


def test_refusals_are_tool_errors_for_the_model() -> None:
    assert issubclass(PricingError, ToolError)
    assert issubclass(PricingFileError, ConfigError)
    assert not issubclass(PricingFileError, ToolError)


@pytest.mark.parametrize("distance", [-1.0, float("nan"), float("inf")])
def test_impossible_distance_is_refused(rules: PricingRules, distance: float) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=WED_NEXT)

    with pytest.raises(InvalidQuoteRequest):
        quote(rules, request, today=MON, distance_km=distance)


@pytest.mark.parametrize(
    "field_name, value",
    [("pickup_steps", -1), ("dropoff_floors", -2), ("storage_weeks", 1.5), ("pickup_steps", True)],
)
def test_impossible_counts_are_refused(field_name: str, value: object) -> None:
    with pytest.raises(InvalidQuoteRequest, match=field_name):
        QuoteRequest(
            piano_type="upright",
            pickup="a",
            dropoff="b",
            move_date=WED_NEXT,
            **{field_name: value},  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- piano types


@pytest.mark.parametrize(
    "said, expected",
    [
        ("baby grand", PianoType.BABY_GRAND),
        ("Baby Grand Piano", PianoType.BABY_GRAND),
        ("babygrand", PianoType.BABY_GRAND),
        ("baby_grand", PianoType.BABY_GRAND),
        ("a baby-grand", PianoType.BABY_GRAND),
        ("upright piano", PianoType.UPRIGHT),
        ("an upright", PianoType.UPRIGHT),
        ("Yamaha U3 upright", PianoType.UPRIGHT),
        ("console piano", PianoType.UPRIGHT),
        ("spinet", PianoType.UPRIGHT),
        ("studio piano", PianoType.UPRIGHT),
        ("pianola", PianoType.LARGE_UPRIGHT),
        ("player piano", PianoType.LARGE_UPRIGHT),
        ("large upright", PianoType.LARGE_UPRIGHT),
        ("old upright grand", PianoType.LARGE_UPRIGHT),
        ("concert upright", PianoType.LARGE_UPRIGHT),
        ("studio grand", PianoType.BABY_GRAND),
        ("grand", PianoType.GRAND),
        ("Steinway grand piano", PianoType.GRAND),
        ("parlour grand", PianoType.GRAND),
        ("concert grand", PianoType.CONCERT_GRAND),
        ("semi-concert grand", PianoType.CONCERT_GRAND),
        ("digital piano", PianoType.DIGITAL),
        ("electric piano", PianoType.DIGITAL),
        ("Clavinova", PianoType.DIGITAL),
        (PianoType.GRAND, PianoType.GRAND),
    ],
)
def test_piano_type_synonyms(said: str, expected: PianoType) -> None:
    assert parse_piano_type(said) is expected


@pytest.mark.parametrize("said", ["harpsichord", "piano", "", "organ"])
def test_unknown_piano_type(said: str) -> None:
    with pytest.raises(UnknownPianoType, match="Ask the caller whether it is a digital piano"):
        QuoteRequest(piano_type=said, pickup="a", dropoff="b", move_date=WED_NEXT)


# --------------------------------------------------------------------------- speech


def test_spoken_breakdown(rules: PricingRules) -> None:
    request = QuoteRequest(
        piano_type="baby grand", pickup="Brunswick", dropoff="Geelong", move_date=SAT
    )

    result = quote(rules, request, today=MON, distance_km=33.0)

    assert result.spoken() == (
        "The total is $787.50 including GST: $650 for the baby grand piano, "
        "$57.50 for the extra 23 km and $80 for a Saturday move."
    )


def test_spoken_single_line(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=WED_NEXT)

    result = quote(rules, request, today=MON, distance_km=2.0)

    assert result.spoken() == "The total is $350 including GST for the upright piano."


def test_spoken_includes_the_inspection_note(rules: PricingRules) -> None:
    request = QuoteRequest(
        piano_type="grand", pickup="a", dropoff="b", move_date=WED_NEXT, needs_crane=True
    )

    priced = quote(rules, request, today=MON, distance_km=2.0)
    spoken = priced.spoken()

    # Crane jobs are never priced over the phone: no total, no breakdown, only why.
    assert spoken.startswith("A crane or hoist is needed, which we price after an inspection")
    assert "$" not in spoken and "total" not in spoken.lower()
    data = priced.as_dict()
    assert data["needs_inspection"] is True
    assert "total" not in data and "total_cents" not in data and "lines" not in data
    assert "$" not in orjson.dumps(data).decode()


def test_as_dict_is_plain_data(rules: PricingRules) -> None:
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=WED_NEXT)

    data = quote(rules, request, today=MON, distance_km=12.34).as_dict()

    assert data["total"] == "$355.75"  # 12.3 km: 2.3 x $2.50 = $5.75
    assert data["total_cents"] == 35575
    assert data["road_distance_km"] == 12.3
    assert data["valid_until"] == "2026-04-01"
    assert data["lines"][1] == {
        "label": "Distance: 2.3 km beyond the first 10 km at $2.50 per km",
        "amount": "$5.75",
    }


@pytest.mark.parametrize(
    "cents, spoken",
    [(65000, "$650"), (123450, "$1,234.50"), (5, "$0.05"), (0, "$0"), (10000000, "$100,000")],
)
def test_format_money(cents: int, spoken: str) -> None:
    assert format_money(cents) == spoken


# --------------------------------------------------------------------------- the file


def _edited_copy(tmp_path: Path, pattern: str, replacement: str) -> Path:
    text, count = re.subn(pattern, replacement, PRICING_TOML.read_text(), flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} matched {count} times"
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    return path


def test_quote_follows_an_edited_price_list(tmp_path: Path) -> None:
    request = QuoteRequest(
        piano_type="upright", pickup="Brunswick", dropoff="Geelong", move_date=WED_NEXT
    )
    shipped = quote(load_pricing(PRICING_TOML), request, today=MON, distance_km=30.0)
    edited = load_pricing(_edited_copy(tmp_path, r"^upright = 350$", "upright = 395"))

    result = quote(edited, request, today=MON, distance_km=30.0)

    assert shipped.total_cents == 35000 + 5000
    assert result.total_cents == 39500 + 5000
    assert result.lines[0].amount_cents == 39500


def test_per_km_rate_follows_the_file(tmp_path: Path) -> None:
    rules = load_pricing(_edited_copy(tmp_path, r"^per_km = 2\.50$", "per_km = 3.15"))
    request = QuoteRequest(piano_type="upright", pickup="a", dropoff="b", move_date=WED_NEXT)

    result = quote(rules, request, today=MON, distance_km=30.0)

    assert result.lines[1].amount_cents == 6300  # 20 km x $3.15
    assert result.lines[1].label == "Distance: 20 km beyond the first 10 km at $3.15 per km"


@pytest.mark.parametrize(
    "pattern, replacement, names",
    [
        (r"^grand = 800\n", "", "base_price.grand: Field required"),
        (r"^per_km = 2\.50$", "per_km = -1", "distance.per_km"),
        (r"^per_km = 2\.50$", "per_km = 2.505", "distance.per_km"),
        (r"^per_km = 2\.50$", 'per_km = "$2.50"', "distance.per_km"),
        (r"^per_km = 2\.50$", "per_kms = 2.50", "distance.per_kms"),
        (r'^closed_days = \["Sunday"\]$', 'closed_days = ["Sundy"]', "calendar.closed_days"),
        (r'^timezone = "Australia/Melbourne"$', 'timezone = "Mars/Olympus"', "general.timezone"),
        (r'^types = \["baby_grand"', 'types = ["babygrand"', "crane.types"),
        (r"^steps_per_floor = 14$", "steps_per_floor = 0", "stairs.steps_per_floor"),
        # text or a boolean where a number is due: never read as a number
        (
            r"^upright = 350$",
            'upright = "350"',
            "base_price.upright: must be a number, written without quotes or $ (got '350')",
        ),
        (r"^upright = 350$", "upright = true", "base_price.upright: must be a number"),
        (
            r"^steps_per_floor = 14$",
            'steps_per_floor = "14"',
            "stairs.steps_per_floor: must be a whole number, written without quotes (got '14')",
        ),
        (
            r"^steps_per_floor = 14$",
            "steps_per_floor = 14.0",
            "stairs.steps_per_floor: must be a whole number",
        ),
        (r"^road_factor = .*$", 'road_factor = "1.3"', "distance.road_factor: must be a number"),
        (
            r"^gst_included = true$",
            'gst_included = "yes"',
            "general.gst_included: must be true or false, written without quotes (got 'yes')",
        ),
    ],
)
def test_broken_file_names_the_field(
    tmp_path: Path, pattern: str, replacement: str, names: str
) -> None:
    path = _edited_copy(tmp_path, pattern, replacement)

    with pytest.raises(PricingFileError, match=re.escape(names)) as info:
        load_pricing(path)

    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value) and "Value error" not in str(info.value)


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    path = _edited_copy(tmp_path, r"^upright = 350$", "upright = = 350")

    with pytest.raises(PricingFileError, match="not valid TOML"):
        load_pricing(path)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match="not found"):
        load_pricing(tmp_path / "nope.toml")
