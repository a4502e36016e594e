"""Personal data in text: one masker for logs, exports and the console; phone numbers in E.164.

Phone numbers are found and parsed with ``phonenumbers`` (Google's libphonenumber) in a region,
the agent's (taken from its own number), Australia by default:

* :func:`normalise_phone` turns what a caller says or types into E.164, or None when it is not a
  valid number (``"0412 345 678"`` -> ``"+61412345678"``);
* :func:`find_number` finds one number in text however it was written (what masking the
  caller's number of an old call looks for);
* :class:`Redactor` finds numbers in every format (``+61 412 345 678``, ``(03) 9123 4567``,
  ``0412-345-678``, ``555-555-0123``, ``5555550123``), e-mail addresses, street addresses
  (a house number, a street name and a street type, Australian and US types) and the names it
  is given, and masks them. A number keeps its country code and last two digits
  (``+61*******78``, ``**** *** *78``): enough to tell calls apart, not to dial. Masking is
  deterministic and idempotent, so a masked recording masks to itself and still replays.
  With ``fake_numbers=True`` (exports) a valid number becomes instead a made-up one of the
  same kind from the ranges set aside for fiction (:func:`fake_number`), so tools still take it.

Numbers are found twice: the matcher's valid numbers, then whatever has the shape of a number
(8 to 15 digits, as a possible number in the region) outside words, decimals, dates and times,
so a number no plan has issued yet (a made-up ``555`` one) is masked too. Short references
(six-digit bookings, ``Q482913`` quotes), ids (``CA0123...``), ISO dates and timestamps stay:
no number is taken from inside an ISO date or time or from either side of a decimal point
(``...T20:10:38.130663+00:00`` holds a valid Australian 13 number, ``130663``).

Imports nothing of relay: logging sits on it.
"""

from __future__ import annotations

import functools
import hashlib
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
    "fake_number",
    "find_number",
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
#: ISO dates and times (``2026-12-07T20:10:38.130663+00:00``, ``20:10:38.1306``): never a number.
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
    r"|(?<![\d:])\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"
)

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
    ``region``. Anything else in the text makes it not a number: a caller ID with a scheme or
    letters (``"client:0412345678"``, a Twilio Client identity; ``"sip:0412345678@pbx"``) is
    no more this phone number than ``"anonymous"`` is.
    """
    if not text:
        return None
    raw = _SEPARATORS.sub("", text)
    if not re.fullmatch(r"\+?[0-9]+", raw):
        return None
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


def find_number(text: str, number: str) -> list[str]:
    """How the phone number ``number`` (E.164) is written in ``text``, in order: each number
    found there as :class:`Redactor` finds them (national numbers read in ``number``'s own
    region) that is the same number, as written (``0412 345 678``, ``0412-345-678``,
    ``+61 412 345 678``, ``61412345678``, ``0061 412 345 678``, ``+61412345678``)."""
    if sum(c.isdigit() for c in text) < 7:
        return []
    try:
        wanted = phonenumbers.parse(number, None)
    except NumberParseException:
        return []
    key = (wanted.country_code, phonenumbers.national_significant_number(wanted))
    region = region_of(number)
    found: list[str] = []
    for start, end in sorted(set(_default(region)._numbers(text))):
        raw = text[start:end]
        digits = re.sub(r"\D", "", raw)
        try:  # 0061 412 345 678: dialled from abroad, as normalise_phone reads it
            parsed = phonenumbers.parse("+" + digits[2:] if digits[:2] == "00" else raw, region)
        except NumberParseException:
            continue
        if (parsed.country_code, phonenumbers.national_significant_number(parsed)) == key:
            found.append(raw)
    return found


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


#: Numbers set aside for fiction (films, books, drama): they reach no one. Australia (ACMA):
#: thirty mobile numbers, and 5550 xxxx in each geographic area; North America: 555-0100 to
#: 555-0199 in any area code.
_AU_FICTION_MOBILES = (
    "491570006", "491570156", "491570157", "491570158", "491570159", "491570110", "491570313",
    "491570737", "491571266", "491571491", "491571804", "491572549", "491572665", "491572983",
    "491573770", "491573087", "491574118", "491574632", "491575254", "491575789", "491576398",
    "491576801", "491577426", "491577644", "491578957", "491578148", "491578888", "491579212",
    "491579760", "491579455",
)  # fmt: skip
_AU_FICTION_LANDLINE = re.compile(r"^[2378]5550\d{4}$")
_NANP_FICTION = re.compile(r"^\d{3}55501\d{2}$")


def _is_fiction(number: phonenumbers.PhoneNumber) -> bool:
    national = str(number.national_number)
    if number.country_code == 61:
        return national in _AU_FICTION_MOBILES or bool(_AU_FICTION_LANDLINE.match(national))
    return number.country_code == 1 and bool(_NANP_FICTION.match(national))


def _fake_national(number: phonenumbers.PhoneNumber) -> str | None:
    """A made-up national number of ``number``'s kind, picked by a hash of ``number``."""
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    pick = int.from_bytes(hashlib.sha256(e164.encode()).digest()[:8], "big")
    national = str(number.national_number)
    kind = phonenumbers.number_type(number)
    if number.country_code == 61:
        if kind == phonenumbers.PhoneNumberType.MOBILE:
            return _AU_FICTION_MOBILES[pick % len(_AU_FICTION_MOBILES)]
        if kind == phonenumbers.PhoneNumberType.FIXED_LINE and national[0] in "2378":
            return f"{national[0]}5550{pick % 10_000:04d}"  # same area: (03) 5550 xxxx
        return None
    if number.country_code == 1:
        return f"{national[:3]}55501{pick % 100:02d}"  # same area code: (415) 555-01xx
    return None


def fake_number(raw: str, *, region: str = DEFAULT_REGION) -> str | None:
    """A made-up number of the same kind as ``raw``, written as ``raw`` is written.

    ``"0412 345 678"`` becomes one of the thirty mobile numbers Australia keeps for drama
    (``"0491 570 110"``), ``"+61 3 9123 4567"`` a ``(03) 5550 xxxx`` one, ``"(415) 555-2671"``
    a ``555-01xx`` one: valid, so tools still take it, and reaching no one. The same number,
    however written, always gets the same fake. A number already in those ranges is its own
    fake (masking is idempotent). None when ``raw`` is not a valid number or no range is kept
    for its kind (then it is masked with asterisks).
    """
    digits = re.sub(r"\D", "", raw)
    try:  # 0061 412 345 678: dialled from abroad, as normalise_phone reads it
        number = phonenumbers.parse("+" + digits[2:] if digits[:2] == "00" else raw, region)
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    if _is_fiction(number):
        return raw
    fake = _fake_national(number)
    national = str(number.national_number)
    if fake is None or len(fake) != len(national):
        return None
    # Put the fake's digits where the national number's were, keeping the prefix (+61, 0,
    # 0061) and the separators as they were written.
    positions = [i for i, c in enumerate(raw) if c.isdigit()][-len(national) :]
    if len(positions) < len(national):
        return None
    out = list(raw)
    for at, digit in zip(positions, fake, strict=True):
        out[at] = digit
    return "".join(out)


class Redactor:
    """Masks phone numbers, e-mail addresses, street addresses and the given names in text.

    ``keep_numbers`` are left as they are (the business's own line, so a masked recording still
    reaches the same agent); ``region`` is where national numbers are read. With
    ``fake_numbers`` a valid number becomes a made-up one of its kind (:func:`fake_number`)
    rather than asterisks, so that tools given it in a replayed recording still take it.

    Names are found whole-word in any case (``jane citizen``, ``JANE CITIZEN``); a single part
    of a name (``Jane``) only as given or in capitals, since in lower case it may be a word
    (``will``, ``grace``).
    """

    def __init__(
        self,
        names: Iterable[str] = (),
        keep_numbers: Iterable[str] = (),
        *,
        region: str = DEFAULT_REGION,
        addresses: bool = True,
        fake_numbers: bool = False,
    ) -> None:
        self.region = region
        self.addresses = addresses
        self.fake_numbers = fake_numbers
        self.keep = {re.sub(r"[^\d]", "", n) for n in keep_numbers if n}
        whole: set[str] = set()
        parts: set[str] = set()
        for name in names:
            name = " ".join(name.split())
            if len(name) < 2:
                continue
            whole.add(name.casefold())
            for part in name.split():
                if len(part) >= 2 and part[0].isupper():
                    parts.update((part, part.upper()))
        parts -= {p for p in parts if p.casefold() in whole}
        alternatives = [
            *("(?i:" + r"\s+".join(map(re.escape, n.split())) + ")" for n in whole),
            *map(re.escape, parts),
        ]
        # The longest first, so that "Jane Citizen" is masked whole rather than as "Jane".
        alternatives.sort(key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(alternatives) + r")\b") if alternatives else None
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
                raw = text[start:end]
                fake = fake_number(raw, region=self.region) if self.fake_numbers else None
                add(start, end, fake or mask_number(raw))
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
        # Nothing inside an ISO date or time is a number: blank them out first.
        text = _ISO_TIME.sub(lambda m: "|" * len(m.group()), text)
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
                if _in_a_decimal(text, start, end) or (
                    leniency is Leniency.POSSIBLE and not self._number_shaped(text, start, end)
                ):
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


def _in_a_decimal(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is a decimal's fraction or whole part (``54273.131450``)."""
    before = text[max(0, start - 2) : start].rjust(2)
    after = text[end : end + 2].ljust(2)
    return (before[1] == "." and before[0].isdigit()) or (after[0] == "." and after[1].isdigit())


@functools.lru_cache(maxsize=8)
def _default(region: str) -> Redactor:
    return Redactor(region=region)


def mask_text(text: str, *, region: str = DEFAULT_REGION) -> str:
    """``text`` with phone numbers, e-mail and street addresses masked (what logs show)."""
    if "@" not in text and not any(c.isdigit() for c in text):
        return text
    return _default(region).text(text)
