"""relay.privacy: phone numbers through libphonenumber, and the one masker logs and exports share."""

from __future__ import annotations

import io
import re

import pytest
import structlog

from relay import logging as relay_logging
from relay.privacy import (
    ADDRESS_MASK,
    EMAIL_MASK,
    NAME_MASK,
    Redactor,
    mask_number,
    mask_text,
    normalise_phone,
    region_of,
)


@pytest.mark.parametrize(
    ("said", "e164"),
    [
        ("0412 345 678", "+61412345678"),
        ("0412-345-678", "+61412345678"),
        ("(03) 9000 1234", "+61390001234"),
        ("+61 412 345 678", "+61412345678"),
        ("0061412345678", "+61412345678"),
        ("61412345678", "+61412345678"),
        ("+1 415 555 2671", "+14155552671"),
    ],
)
def test_a_number_as_said_becomes_e164(said: str, e164: str) -> None:
    assert normalise_phone(said) == e164


@pytest.mark.parametrize("said", ["", None, "12345", "0412", "555-555-0123", "call me", "+61412"])
def test_what_is_not_a_valid_number_is_none(said: str | None) -> None:
    assert normalise_phone(said) is None


def test_national_numbers_are_read_in_the_region() -> None:
    assert normalise_phone("(415) 555-2671", region="US") == "+14155552671"
    assert normalise_phone("(415) 555-2671") is None  # not an Australian number
    assert region_of("+14155552671") == "US" and region_of("+61390001234") == "AU"
    assert region_of(None) == "AU" and region_of("not a number") == "AU"


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+61412345678", "+61*******78"),
        ("+14155552671", "+1********71"),
        ("+353861234567", "+353*******67"),
        ("0412 345 678", "**** *** *78"),
        ("555-555-0123", "***-***-**23"),
    ],
)
def test_a_masked_number_keeps_its_country_code_and_last_two_digits(
    number: str, masked: str
) -> None:
    assert mask_number(number) == masked


#: The caller's number, +61 412 345 678, in the ways people say and type it.
SAID = ["+61 412 345 678", "0412 345 678", "0412-345-678", "0412345678", "(04) 1234 5678"]


@pytest.mark.parametrize(
    "number", [*SAID, "555-555-0123", "5555550123", "(03) 9123 4567", "+1 (415) 555-2671"]
)
def test_numbers_in_every_format_are_masked(number: str) -> None:
    out = Redactor().text(f"You can reach me on {number}, thanks.")
    digits = re.sub(r"\D", "", number)
    assert digits[:-2] not in re.sub(r"\D", "", out), out
    assert out.startswith("You can reach me on ") and out.endswith(", thanks.")


@pytest.mark.parametrize(
    "address",
    [
        "12 Smith Street",
        "3/45 Lygon St",
        "221b Baker St",
        "Unit 4, 22 King William Rd",
        "1600 Pennsylvania Avenue",
        "7 elm court",
        "150 Flinders Lane",
        "9 Victoria Parade",
    ],
)
def test_street_addresses_are_masked(address: str) -> None:
    out = Redactor().text(f"Pick it up from {address}, Brunswick please.")
    assert out == f"Pick it up from {ADDRESS_MASK}, Brunswick please."


@pytest.mark.parametrize(
    "text",
    [
        "We need 2 men at our place by 9.",
        "It is $1,250 for 3 hours on Tuesday the 24th, quote Q482913, booking 482913.",
        "The reference is 4 8 2 9 1 3.",
        "CA0123456789abcdef on 2026-03-10T22:30:00.000000+00:00, t=2214.698529662",
        "HTTP 500 from http://127.0.0.1:8081/v1/chat/completions after 12345678 µs",
        "uuid 3f2a1b4c-1234-5678-9abc-def012345678",
    ],
)
def test_references_ids_times_and_prices_stay(text: str) -> None:
    assert Redactor().text(text) == text.replace(" 12345678 ", " ******78 ")


def test_names_emails_and_the_business_line() -> None:
    masker = Redactor(["Jane Citizen"], keep_numbers=["+61390001234"])
    out = masker.text(
        "Jane Citizen (jane.citizen@example.com) rang +61390001234 and (03) 9000 1234 from "
        "0412 345 678; Jane lives at 12 Smith Street."
    )
    assert out == (
        f"{NAME_MASK} ({EMAIL_MASK}) rang +61390001234 and (03) 9000 1234 from **** *** *78; "
        f"{NAME_MASK} lives at {ADDRESS_MASK}."
    )
    assert masker.text(out) == out  # idempotent: a masked text masks to itself


def test_a_number_cut_across_streamed_pieces_is_masked_as_a_whole() -> None:
    pieces = ["Call me on 04", "12 345", " 678 or at 12 Smith", " Street."]
    masked = Redactor().pieces(pieces)
    assert len(masked) == len(pieces)
    assert "".join(masked) == f"Call me on **** *** *78 or at {ADDRESS_MASK}."


def test_logs_use_the_same_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    relay_logging.configure("info", "json")
    try:
        log = structlog.get_logger("relay.test")
        line = (
            "caller 555-555-0123 / 5555550123 / 0412 345 678 at 12 Smith Street, jane@example.com"
        )
        log.info("caller_said", text=line, call_sid="CA0123456789")
        log.debug("caller_said_debug", text="0412 345 678")  # debug is below the level anyway
    finally:
        structlog.reset_defaults()
    out = err.getvalue()
    assert mask_text(line) in out and "CA0123456789" in out
    for secret in ("555-555-0123", "5555550123", "0412 345 678", "Smith", "jane@example.com"):
        assert secret not in out


def test_a_number_at_the_end_of_a_sentence_is_masked() -> None:
    assert Redactor().text("Call 5555550123. Or 0412345678!") == "Call ********23. Or ********78!"


def test_two_numbers_side_by_side_are_both_masked() -> None:
    out = Redactor().text("I have 0412 345 678 555-555-0123, thanks.")
    assert out == "I have **** *** *78 ***-***-**23, thanks."


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-07T20:10:38.130663+00:00",  # 130663: an Australian 13 number, 6 digits
        "created 2026-12-07 20:10:38.131450, t=54273.131450",
        "at 20:10:38.130663 and 54273.131450 s",
    ],
)
def test_no_number_is_taken_from_a_timestamp_or_a_decimal(text: str) -> None:
    assert Redactor().text(text) == text
    assert Redactor().text(f"{text} 0412 345 678") == f"{text} **** *** *78"


def test_names_are_masked_in_any_case_and_their_parts_only_as_names() -> None:
    masker = Redactor(["Jane Citizen", "Will Grace"])
    out = masker.text("jane citizen, JANE CITIZEN, Jane  Citizen; Jane, JANE; I will, Will.")
    assert out == "[name], [name], [name]; [name], [name]; I will, [name]."


@pytest.mark.parametrize(
    ("number", "fake"),
    [
        ("+61412345678", "+61491570158"),
        ("0412 345 678", "0491 570 158"),  # the same number, however written: the same fake
        ("0061 412 345 678", "0061 491 570 158"),
        ("(04) 1234 5678", "(04) 9157 0158"),
        ("(03) 9123 4567", "(03) 5550 5651"),  # a landline: 5550 xxxx in the same area
        ("+1 (415) 555-2671", "+1 (415) 555-0107"),  # North America: 555-01xx
        ("+353861234567", "+353*******67"),  # no range kept for it: asterisks
        ("555-555-0123", "***-***-**23"),  # not a valid number
    ],
)
def test_exports_replace_numbers_by_made_up_ones_of_the_same_kind(number: str, fake: str) -> None:
    masker = Redactor(fake_numbers=True)
    out = masker.text(f"Call {number} please.")
    assert out == f"Call {fake} please."
    assert masker.text(out) == out  # a fake is its own fake
    e164 = normalise_phone(fake, region="US" if number.startswith("+1") else "AU")
    assert (e164 is not None) == ("*" not in fake)  # tools still take it


def test_fake_numbers_come_from_the_ranges_kept_for_fiction() -> None:
    masker = Redactor(fake_numbers=True)
    mobiles = {masker.text(f"04{n:08d}") for n in range(12_000_000, 12_000_400)}
    assert len(mobiles) == 30  # ACMA's thirty drama mobiles, and nothing else
    assert all(m.startswith("049157") for m in mobiles)
    assert masker.text("+61390001234 or 0390001234") == "+61355502532 or 0355502532"
    kept = Redactor(keep_numbers=["+61390001234"], fake_numbers=True)
    assert kept.text("+61390001234, (03) 9000 1234") == "+61390001234, (03) 9000 1234"
