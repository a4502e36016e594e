"""What a quote will not guess: absurd stair counts and storage weeks are asked again, and a piano
described as two kinds at once is asked about, never priced as the first kind named."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from relay.domain.pricing import (
    AmbiguousPianoType,
    InvalidQuoteRequest,
    PianoType,
    PricingFileError,
    PricingRules,
    QuoteRequest,
    load_pricing,
    parse_piano_type,
    quote,
)

PRICING_TOML = Path(__file__).resolve().parents[2] / "data" / "piano-removals" / "pricing.toml"
MON = date(2026, 3, 2)
WED_NEXT = date(2026, 3, 11)


@pytest.fixture(scope="module")
def rules() -> PricingRules:
    return load_pricing(PRICING_TOML)


def _quote(rules: PricingRules, *, piano: str = "upright", **counts: Any) -> int:
    request = QuoteRequest(piano_type=piano, pickup="a", dropoff="b", move_date=WED_NEXT, **counts)
    return quote(rules, request, today=MON, distance_km=5.0).total_cents


# -- stairs and storage ----------------------------------------------------------------------


def test_the_limits_have_defaults_when_the_price_list_leaves_them_out(tmp_path: Path) -> None:
    text = PRICING_TOML.read_text()
    text = text.replace("max_steps_per_end = 140\n", "").replace("max_weeks = 52\n", "")
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    rules = load_pricing(path)
    assert rules.stairs.max_steps_per_end == 140  # ten floors of 14 steps
    assert rules.storage.max_weeks == 52


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        pytest.param(
            {"pickup_floors": 1_000_000},
            "pickup_floors 1000000 and pickup_steps 0 come to 14000000 steps at pick-up, more "
            "than the 140 we carry a piano by hand at one end. Ask the caller again: the floors "
            "climbed by stairs, and the steps besides the floors.",
            id="a-million-floors",
        ),
        pytest.param(
            {"dropoff_floors": 100},
            "dropoff_floors 100 and dropoff_steps 0 come to 1400 steps at drop-off, more than the "
            "140 we carry a piano by hand at one end. Ask the caller again: the floors climbed by "
            "stairs, and the steps besides the floors.",
            id="floor-100-misheard",
        ),
        pytest.param(
            {"pickup_steps": 141},
            "pickup_floors 0 and pickup_steps 141 come to 141 steps at pick-up, more than the 140 "
            "we carry a piano by hand at one end. Ask the caller again: the floors climbed by "
            "stairs, and the steps besides the floors.",
            id="steps",
        ),
        pytest.param(
            {"storage_weeks": 100_000},
            "storage_weeks 100000 is more than the 52 weeks we store a piano for. Ask the caller "
            "again; for longer storage, offer to take a message for the office.",
            id="storage",
        ),
    ],
)
def test_implausible_counts_are_asked_again_not_priced(
    rules: PricingRules, counts: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidQuoteRequest) as caught:
        _quote(rules, **counts)
    assert str(caught.value) == message


def test_counts_up_to_the_limits_are_priced(rules: PricingRules) -> None:
    # 10 floors = 140 steps at $6; 52 weeks at $60.
    assert _quote(rules, pickup_floors=10) == 35000 + 140 * 600
    assert _quote(rules, pickup_floors=9, pickup_steps=14) == 35000 + 140 * 600
    assert _quote(rules, storage_weeks=52) == 35000 + 52 * 6000
    # Floors served by a lift are not carried, so not counted against the limit.
    assert _quote(rules, dropoff_floors=40, dropoff_has_lift=True) == 35000 + 2500


def test_a_grand_beyond_the_limit_is_asked_again_before_any_crane(rules: PricingRules) -> None:
    with pytest.raises(InvalidQuoteRequest, match="1400 steps at pick-up"):
        _quote(rules, piano="grand", pickup_floors=100)


def test_the_limits_are_read_from_the_price_list(tmp_path: Path) -> None:
    text = PRICING_TOML.read_text()
    text = text.replace("max_steps_per_end = 140\n", "max_steps_per_end = 70\n")
    text = text.replace("max_weeks = 52\n", "max_weeks = 8\n")
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    rules = load_pricing(path)
    assert (rules.stairs.max_steps_per_end, rules.storage.max_weeks) == (70, 8)
    with pytest.raises(InvalidQuoteRequest, match="more than the 70 we carry"):
        _quote(rules, pickup_floors=6)
    with pytest.raises(InvalidQuoteRequest, match="more than the 8 weeks"):
        _quote(rules, storage_weeks=9)

    path.write_text(text.replace("max_weeks = 8", "max_weeks = 0"))
    with pytest.raises(PricingFileError, match=r"storage\.max_weeks"):
        load_pricing(path)


# -- piano types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("grand piano 150 cm long", PianoType.BABY_GRAND),
        ("a grand, 1.5 m long", PianoType.BABY_GRAND),
        ("grand, about 5 feet", PianoType.BABY_GRAND),
        ("Kawai grand 185cm", PianoType.GRAND),
        ("grand 170 cm", PianoType.GRAND),
        ("grand 210 cm", PianoType.GRAND),
        ("grand piano, 2.3 metres", PianoType.CONCERT_GRAND),
        ("baby grand 150 cm", PianoType.BABY_GRAND),
        ("a grand, the baby one", PianoType.BABY_GRAND),
        ("upright, the big one, a large upright", PianoType.LARGE_UPRIGHT),
        ("upright piano 130 cm tall", PianoType.UPRIGHT),
        ("old upright grand", PianoType.LARGE_UPRIGHT),
        ("digital grand", PianoType.DIGITAL),
        # Lengths in two parts, and the longest dimension as the length (until late 7 December
        # the first number was read alone: "5 ft 10 in" was 5 ft, a baby grand).
        ("grand, 5 ft 10 in", PianoType.GRAND),
        ("grand piano, 1 m 80", PianoType.GRAND),
        ("grand, it's 1.5 m wide and 1.9 m long", PianoType.GRAND),
        ("a Roland digital upright", PianoType.DIGITAL),
    ],
)
def test_the_most_specific_description_wins(said: str, expected: PianoType) -> None:
    assert parse_piano_type(said) is expected


@pytest.mark.parametrize(
    "said",
    [
        "upright, not a grand",
        "grand upright",
        "not an upright, a grand",  # two clauses: not the "upright grand" phrase across them
        "baby grand or concert grand",
        "baby grand 200 cm",
        "concert grand 150 cm",
    ],
)
def test_two_kinds_at_once_are_asked_about(said: str) -> None:
    with pytest.raises(AmbiguousPianoType) as caught:
        QuoteRequest(piano_type=said, pickup="a", dropoff="b", move_date=WED_NEXT)
    assert str(caught.value).startswith(f"{said!r} could be ")
    assert "Ask the caller which it is" in str(caught.value)


def test_the_ambiguity_names_the_kinds() -> None:
    with pytest.raises(AmbiguousPianoType) as caught:
        parse_piano_type("upright, not a grand")
    assert str(caught.value) == (
        "'upright, not a grand' could be an upright piano or a grand piano. Ask the caller which "
        "it is: a digital piano, an upright, a large upright or player piano, a baby grand (under "
        "170 cm long), a grand (170 to 210 cm) or a concert grand (over 210 cm)."
    )
    assert caught.value.kinds == (PianoType.UPRIGHT, PianoType.GRAND)
