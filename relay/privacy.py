"""Personal data in text: one masker for logs, exports and the console; phone numbers in E.164.

Phone numbers are found and parsed with ``phonenumbers`` (Google's libphonenumber) in a region,
the agent's (taken from its own number), Australia by default:

* :func:`normalise_phone` turns what a caller says or types into E.164, or None when it is not a
  valid number (``"0412 345 678"`` -> ``"+61412345678"``);
* :class:`Redactor` finds numbers in every format (``+61 412 345 678``, ``(03) 9123 4567``,
  ``0412-345-678``, ``555-555-0123``, ``5555550123``), e-mail addresses, street addresses
  (a house number, a street name and a street type, Australian and US types) and the names it
  is given, and masks them. A number keeps its country code and last two digits
  (``+61*******78``, ``**** *** *78``): enough to tell calls apart, not to dial. Masking is
  deterministic and idempotent, so a masked recording masks to itself and still replays.

Numbers are found twice: the matcher's valid numbers, then whatever has the shape of a number
(8 to 15 digits, as a possible number in the region) outside words, decimals, dates and times,
so a number no plan has issued yet (a made-up ``555`` one) is masked too. Short references
(six-digit bookings, ``Q482913`` quotes), ids (``CA0123...``), ISO dates and timestamps stay.

Imports nothing of relay: logging sits on it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import phonenumbers
from phonenumbers import Leniency, NumberParseException, PhoneNumberFormat, PhoneNumberMatcher

__all__ = [
    "ADDRESS_MASK",
    "DEFAULT_REGION",
    "EMAIL_MASK",
    "NAME_MASK",
    "Redactor",
    "is_e164",
    "mask_number",
    "mask_text",
    "normalise_phone",
    "region_of",
]

DEFAULT_REGION = "AU"
NAME_MASK = "[name]"
EMAIL_MASK = "[email]"
ADDRESS_MASK = "[address]"

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SEPARATORS = re.compile(r"[\s\-().]")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}|^\d{1,2}[/.]\d{1,2}[/.]\d{2,4}$")
#: Characters that, next to a run of digits, make it part of something else (an id, a decimal,
#: a time, a date, a URL's port).
_GLUED = frozenset("_:/-+*#@=")

_STREET_TYPES = (
    # Australian and US street types, long and short forms.
    "street|st|road|rd|avenue|ave|av|drive|dr|court|ct|place|pl|lane|ln|crescent|cres|cr|"
    "boulevard|blvd|parade|pde|terrace|tce|highway|hwy|way|close|cl|grove|gr|circuit|cct|"
    "square|sq|parkway|pkwy|esplanade|esp|row|walk|track|trail|rise|mews|alley|plaza|plz|"
    "expressway|freeway|fwy|circle|cir|loop|promenade|quay|strand|glade|vista|wynd"
)
_NOT_A_STREET_WORD = (
    "a|an|the|at|in|on|of|to|for|and|or|my|our|your|his|her|their|its|per|each|every|this|"
    "that|these|those|some|more|less|than|with|from|by|is|are|was|were|be|am|pm|hours?|"
    "minutes?|days?|weeks?|months?|years?|times?|people|men|women|steps|stairs|floors?"
)
_ADDRESS = re.compile(
    r"(?<![\w/])"
    r"(?:(?:unit|apt|apartment|suite|flat|shop|lot)\s*\d+[a-z]?\s*,?\s*)?"  # unit 3,
    r"\d{1,5}[a-z]?(?:\s*[-/]\s*\d{1,5}[a-z]?)?"  # 12, 12a, 3/45, 10-12
    rf"\s+(?:(?!(?:{_NOT_A_STREET_WORD})\b)[a-z][a-z'\u2019-]*\.?\s+){{1,3}}"  # the street's name
    rf"(?:{_STREET_TYPES})\b",
    re.IGNORECASE,
)


def region_of(number: str | None, default: str = DEFAULT_REGION) -> str:
    """The region (``AU``, ``US``...) of an E.164 number, e.g. an agent's own line."""
    if number:
        try:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
        except NumberParseException:
            region = None
        if region and region != "ZZ":
            return str(region)
    return default


def normalise_phone(text: str | None, *, region: str = DEFAULT_REGION) -> str | None:
    """A valid phone number in E.164, or None if it cannot be one.

    Takes what a caller says or types: ``"0412 345 678"``, ``"(03) 9000 1234"``,
    ``"+61 412 345 678"``, ``"0061412345678"``, ``"61412345678"``; national numbers are read in
    ``region``.
    """
    if not text:
        return None
    raw = _SEPARATORS.sub("", text)
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    candidates = [raw]
    if raw[:1].isdigit() and not raw.startswith("0"):
        candidates.append("+" + raw)  # the country code said without the plus
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    return None


def is_e164(number: str) -> bool:
    """``+`` then 7 to 15 digits, the first not 0 (the shape; see :func:`normalise_phone`)."""
    return bool(_E164.match(number))


def _country_code(digits: str) -> str:
    try:
        return str(phonenumbers.parse("+" + digits, None).country_code)
    except NumberParseException:
        return digits[:1]


def mask_number(number: str) -> str:
    """``+61412345678`` -> ``+61*******78``; ``0412 345 678`` -> ``**** *** *78``."""
    digits = re.sub(r"\D", "", number)
    if number.startswith("+"):
        cc = _country_code(digits)
        return "+" + cc + "*" * max(0, len(digits) - len(cc) - 2) + digits[-2:]
    keep = len(digits) - 2
    out, seen = [], 0
    for char in number:
        if char.isdigit():
            out.append("*" if seen < keep else char)
            seen += 1
        else:
            out.append(char)
    return "".join(out)


class Redactor:
    """Masks phone numbers, e-mail addresses, street addresses and the given names in text.

    ``keep_numbers`` are left as they are (the business's own line, so a masked recording still
    reaches the same agent); ``region`` is where national numbers are read.
    """

    def __init__(
        self,
        names: Iterable[str] = (),
        keep_numbers: Iterable[str] = (),
        *,
        region: str = DEFAULT_REGION,
        addresses: bool = True,
    ) -> None:
        self.region = region
        self.addresses = addresses
        self.keep = {re.sub(r"[^\d]", "", n) for n in keep_numbers if n}
        words: set[str] = set()
        for name in names:
            name = " ".join(name.split())
            if len(name) < 2:
                continue
            words.add(name)
            words.update(part for part in name.split() if len(part) >= 2 and part[0].isupper())
        ordered = sorted(words, key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, ordered)) + r")\b") if ordered else None
        )

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """What to mask in ``text``: (start, end, replacement), in order, never overlapping."""
        found: list[tuple[int, int, str]] = []

        def add(start: int, end: int, replacement: str) -> None:
            if all(end <= s or start >= e for s, e, _ in found):
                found.append((start, end, replacement))

        for match in _EMAIL.finditer(text):
            add(match.start(), match.end(), EMAIL_MASK)
        if sum(c.isdigit() for c in text) >= 7:
            for start, end in self._numbers(text):
                add(start, end, mask_number(text[start:end]))
        if self.addresses:
            for match in _ADDRESS.finditer(text):
                add(match.start(), match.end(), ADDRESS_MASK)
        if self._names is not None:
            for match in self._names.finditer(text):
                add(match.start(), match.end(), NAME_MASK)
        return sorted(found)

    def _numbers(self, text: str) -> list[tuple[int, int]]:
        """Every number's span. The matcher takes a run of digit groups as one candidate
        (``0412 345 678 555-555-0123``) and may find only part of it: look again with what
        was found blanked out, until nothing new turns up."""
        spans: list[tuple[int, int]] = []
        for _ in range(4):
            found = [
                (start, end)
                for start, end in self._numbers_once(text)
                if all(end <= s or start >= e for s, e in spans)
            ]
            if not found:
                break
            spans.extend(found)
            for start, end in found:
                text = text[:start] + "|" * (end - start) + text[end:]
        return spans

    def _numbers_once(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for leniency in (Leniency.VALID, Leniency.POSSIBLE):
            for match in PhoneNumberMatcher(text, self.region, leniency=leniency):
                start, end = match.start, match.end
                raw = match.raw_string
                digits = re.sub(r"\D", "", raw)
                if leniency is Leniency.POSSIBLE and not self._number_shaped(text, start, end):
                    continue
                national = str(match.number.national_number)
                if digits in self.keep or any(
                    k.endswith(national) and len(national) >= 7 for k in self.keep
                ):
                    continue
                spans.append((start, end))
        return spans

    @staticmethod
    def _number_shaped(text: str, start: int, end: int) -> bool:
        raw = text[start:end]
        digits = sum(c.isdigit() for c in raw)
        if not 8 <= digits <= 15 or _DATE.match(raw):
            return False
        before = text[start - 2 : start].rjust(2)
        after = text[end : end + 2].ljust(2)
        glued = (
            before[1].isalnum()
            or after[0].isalnum()
            or before[1] in _GLUED
            or after[0] in _GLUED
            or (before[1] == "." and before[0].isdigit())  # a decimal's fraction
            or (after[0] == "." and after[1].isdigit())  # a decimal's whole part
        )
        return not glued and "." not in raw.strip(".")

    def text(self, value: str) -> str:
        return "".join(self.pieces([value]))

    def pieces(self, pieces: Sequence[str]) -> list[str]:
        """Mask text that was streamed in pieces, as one text, keeping the pieces apart.

        A number or a name cut across pieces (" 0412", " 345", " 678") is masked as a whole;
        its replacement goes in the piece where it starts. The pieces join to ``text(joined)``.
        """
        joined = "".join(pieces)
        spans = self.spans(joined)
        if not spans:
            return list(pieces)
        out: list[str] = []
        start = at = index = 0  # the piece's start, the next character to copy, the next span
        for piece in pieces:
            end = start + len(piece)
            part: list[str] = []
            while at < end:  # a span running past ``end`` leaves the next pieces (partly) empty
                if index < len(spans) and spans[index][0] == at:
                    part.append(spans[index][2])
                    at = spans[index][1]
                    index += 1
                else:
                    stop = min(end, spans[index][0]) if index < len(spans) else end
                    part.append(joined[at:stop])
                    at = stop
            out.append("".join(part))
            start = end
        return out

    def value(self, value: Any) -> Any:
        """``value`` with every string in it masked (lists and dicts walked, keys kept)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


@functools.lru_cache(maxsize=8)
def _default(region: str) -> Redactor:
    return Redactor(region=region)


def mask_text(text: str, *, region: str = DEFAULT_REGION) -> str:
    """``text`` with phone numbers, e-mail and street addresses masked (what logs show)."""
    if "@" not in text and not any(c.isdigit() for c in text):
        return text
    return _default(region).text(text)
