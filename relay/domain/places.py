"""The service area's suburbs and towns, and the distance between two of them.

The table (``places.csv``: ``name,postcode,state,lat,lon``) is data the business edits.
:class:`Gazetteer` finds a place from what a caller said: a suburb name in any case,
spacing or punctuation, with common abbreviations ("St Kilda" = "Saint Kilda", "Mt Eliza" =
"Mount Eliza"), either word order for compass points ("East Brunswick" = "Brunswick East"),
optionally followed by a state or postcode ("Richmond, VIC 3121"), or a postcode alone.

Lookup failures raise :class:`PlaceError` subclasses whose messages are written for the
model; a broken table raises :class:`GazetteerFileError` (a :class:`~relay.errors.ConfigError`).
"""

from __future__ import annotations

import csv
import difflib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from relay.errors import ConfigError, ToolError

__all__ = [
    "AmbiguousPlace",
    "Gazetteer",
    "GazetteerFileError",
    "Place",
    "PlaceError",
    "UnknownPlace",
    "distance_km",
]

# Mean Earth radius (IUGG); good to about 0.5 % for a haversine distance.
EARTH_RADIUS_KM: Final = 6371.0088

_COLUMNS: Final = ("name", "postcode", "state", "lat", "lon")
_STATES: Final = frozenset({"VIC", "NSW", "SA", "ACT", "QLD", "TAS", "WA", "NT"})

# Spoken and written abbreviations, expanded so both forms share one key.
_ABBREVIATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "st": "saint",
        "mt": "mount",
        "pt": "point",
        "nth": "north",
        "sth": "south",
        "melb": "melbourne",
        "upr": "upper",
    }
)
# Words that add nothing to a suburb name when a caller says them.
_NOISE: Final = frozenset({"vic", "victoria", "australia", "aus"})
_COMPASS: Final = frozenset({"north", "south", "east", "west", "central", "upper", "lower"})
_POSTCODE: Final = re.compile(r"(?<!\d)(\d{4})(?!\d)")


class PlaceError(ToolError):
    """A place could not be found. The message tells the model what to ask the caller."""


class UnknownPlace(PlaceError):
    """Nothing in the service area matches; ``suggestions`` holds up to 3 close names."""

    def __init__(self, text: str, suggestions: tuple[str, ...] = ()) -> None:
        what = f"postcode {text}" if text.isdigit() else repr(text)
        message = (
            f"I couldn't find {what} in our service area. "
            "Ask the caller for the suburb name or postcode."
        )
        if suggestions:
            message += f" Close matches: {_join_or(suggestions)}."
        super().__init__(message)
        self.text = text
        self.suggestions = suggestions


class AmbiguousPlace(PlaceError):
    """Several places share the name; ``options`` lists them. Ask for the postcode."""

    def __init__(self, text: str, options: tuple[Place, ...]) -> None:
        super().__init__(
            f"There is more than one {text!r} in our service area: "
            f"{_join_or(tuple(p.label for p in options))}. "
            "Ask the caller which one, or for the postcode."
        )
        self.text = text
        self.options = options


class GazetteerFileError(ConfigError):
    """``places.csv`` is missing or has a bad row; the message names the file and line."""


@dataclass(frozen=True)
class Place:
    """A suburb or town: name, postcode, state and approximate centre (degrees)."""

    name: str
    postcode: str
    state: str
    lat: float
    lon: float

    @property
    def label(self) -> str:
        """How the agent names it: ``"Brunswick VIC 3056"``."""
        return f"{self.name} {self.state} {self.postcode}"


def distance_km(a: Place, b: Place, road_factor: float) -> float:
    """Straight-line (haversine) distance from ``a`` to ``b`` times ``road_factor``, in km,
    rounded to 0.1 km. Pass ``rules.distance.road_factor`` for road km, 1.0 for straight."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    straight = 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
    return round(straight * road_factor, 1)


class Gazetteer:
    """An immutable index of places by normalised name and by postcode."""

    def __init__(self, places: Iterable[Place]) -> None:
        """Index ``places``. For a postcode shared by several places, the first one given
        stands for the postcode when a caller gives only the number."""
        self._places: tuple[Place, ...] = tuple(places)
        by_key: dict[str, list[Place]] = {}
        by_postcode: dict[str, list[Place]] = {}
        for place in self._places:
            by_key.setdefault(_key(_tokens(place.name)), []).append(place)
            by_postcode.setdefault(place.postcode, []).append(place)
        self._by_key: Mapping[str, tuple[Place, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in by_key.items()}
        )
        self._by_postcode: Mapping[str, tuple[Place, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in by_postcode.items()}
        )
        self._spoken_names: Mapping[str, str] = MappingProxyType(
            {" ".join(_tokens(p.name)): p.name for p in reversed(self._places)}
        )

    @classmethod
    def load(cls, path: str | Path) -> Gazetteer:
        """Read ``places.csv``. Raises :class:`GazetteerFileError` naming the bad line."""
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if header is None or tuple(h.strip() for h in header) != _COLUMNS:
                    raise GazetteerFileError(
                        f"{path}: the first line must be {','.join(_COLUMNS)} (got {header!r})"
                    )
                places = [_parse_row(path, reader.line_num, row) for row in reader if any(row)]
        except FileNotFoundError as exc:
            raise GazetteerFileError(f"{path}: place table not found") from exc
        seen: set[tuple[str, str]] = set()
        for place in places:
            ident = (_key(_tokens(place.name)), place.postcode)
            if ident in seen:
                raise GazetteerFileError(f"{path}: {place.label} is listed twice")
            seen.add(ident)
        return cls(places)

    @property
    def places(self) -> tuple[Place, ...]:
        """Every place, in file order."""
        return self._places

    def __len__(self) -> int:
        return len(self._places)

    def lookup(self, text: str) -> Place:
        """Find the place a caller means.

        ``text`` is a suburb or town name, optionally with state and postcode, or a postcode
        alone. A name shared by several places is settled by the postcode when given.
        When the name is not found but the postcode is, the postcode wins (speech-to-text
        mangles names more often than digits).

        Raises :class:`AmbiguousPlace` (with ``options``) or :class:`UnknownPlace` (with up
        to three ``suggestions``).
        """
        said = " ".join(text.split())
        postcodes = _POSTCODE.findall(said)
        postcode = postcodes[0] if postcodes else None
        name_part = _POSTCODE.sub(" ", said)
        tokens = _tokens(name_part)

        if not tokens:
            if postcode is None:
                raise UnknownPlace(said or "(nothing)")
            return self._by_postcode_only(postcode)

        for candidate in _candidates(tokens, name_part):
            matches = self._by_key.get(_key(candidate))
            if not matches:
                continue
            if len(matches) == 1:
                return matches[0]
            narrowed = tuple(p for p in matches if p.postcode == postcode)
            if len(narrowed) == 1:
                return narrowed[0]
            raise AmbiguousPlace(matches[0].name, matches)

        if postcode is not None and postcode in self._by_postcode:
            return self._by_postcode[postcode][0]
        raise UnknownPlace(said, self._suggest(tokens))

    def _by_postcode_only(self, postcode: str) -> Place:
        places = self._by_postcode.get(postcode)
        if not places:
            raise UnknownPlace(postcode)
        return places[0]

    def _suggest(self, tokens: list[str]) -> tuple[str, ...]:
        close = difflib.get_close_matches(" ".join(tokens), list(self._spoken_names), n=3)
        return tuple(self._spoken_names[c] for c in close)


def _parse_row(path: Path, line: int, row: list[str]) -> Place:
    where = f"{path}, line {line}"
    if len(row) != len(_COLUMNS):
        raise GazetteerFileError(f"{where}: expected {len(_COLUMNS)} columns, got {len(row)}")
    name, postcode, state, lat_text, lon_text = (cell.strip() for cell in row)
    if not name or not _tokens(name):
        raise GazetteerFileError(f"{where}: name is empty")
    if not re.fullmatch(r"\d{4}", postcode):
        raise GazetteerFileError(f"{where}: postcode {postcode!r} is not four digits")
    if state not in _STATES:
        raise GazetteerFileError(f"{where}: state {state!r} is not an Australian state code")
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError as exc:
        raise GazetteerFileError(f"{where}: lat/lon must be decimal degrees") from exc
    # Australia's bounding box: catches swapped columns and a dropped minus sign.
    if not (-44.0 <= lat <= -10.0 and 112.0 <= lon <= 154.0):
        raise GazetteerFileError(f"{where}: ({lat}, {lon}) is not in Australia")
    return Place(name=name, postcode=postcode, state=state, lat=lat, lon=lon)


def _tokens(text: str) -> list[str]:
    """Lower-case words without accents or punctuation, abbreviations expanded, and
    state/country words dropped: ``"St. Kilda, VIC"`` -> ``["saint", "kilda"]``."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    plain = plain.replace("&", " and ").replace("'", "")
    words = re.split(r"[^a-z0-9]+", plain)
    return [_ABBREVIATIONS.get(w, w) for w in words if w and w not in _NOISE]


def _key(tokens: list[str]) -> str:
    # Spaces dropped so "Box Hill" and "Boxhill" meet.
    return "".join(tokens)


def _candidates(tokens: list[str], raw: str) -> list[list[str]]:
    """Readings of what was said, most literal first."""
    readings = [tokens]
    if "," in raw:
        head = _tokens(raw.split(",", 1)[0])
        if head:
            readings.append(head)
    if len(tokens) > 1 and tokens[-1] == "melbourne":
        readings.append(tokens[:-1])
    for reading in list(readings):
        if len(reading) > 1 and reading[0] in _COMPASS:
            readings.append([*reading[1:], reading[0]])
        if len(reading) > 1 and reading[-1] in _COMPASS:
            readings.append([reading[-1], *reading[:-1]])
    return readings


def _join_or(items: tuple[str, ...]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} or {items[-1]}"
