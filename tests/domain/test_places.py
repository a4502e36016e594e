"""Finding suburbs from what callers say, and distances between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.domain.places import (
    AmbiguousPlace,
    Gazetteer,
    GazetteerFileError,
    Place,
    PlaceError,
    UnknownPlace,
    distance_km,
)
from relay.errors import ConfigError, ToolError

PLACES_CSV = Path(__file__).resolve().parents[2] / "data" / "piano-removals" / "places.csv"


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load(PLACES_CSV)


@pytest.mark.parametrize(
    "said, name, postcode",
    [
        ("Brunswick", "Brunswick", "3056"),
        ("  bRUNSWICK  ", "Brunswick", "3056"),
        ("Brunswick 3056", "Brunswick", "3056"),
        ("Brunswick, VIC", "Brunswick", "3056"),
        ("Brunswick VIC 3056", "Brunswick", "3056"),
        ("Brunswick, Victoria", "Brunswick", "3056"),
        ("3056 Brunswick", "Brunswick", "3056"),
        ("Brunswick West", "Brunswick West", "3055"),
        ("West Brunswick", "Brunswick West", "3055"),
        ("East Brunswick", "Brunswick East", "3057"),
        ("St Kilda", "St Kilda", "3182"),
        ("Saint Kilda", "St Kilda", "3182"),
        ("st. kilda", "St Kilda", "3182"),
        ("East St Kilda", "St Kilda East", "3183"),
        ("Mt Eliza", "Mount Eliza", "3930"),
        ("Mount Eliza", "Mount Eliza", "3930"),
        ("Mt. Waverley", "Mount Waverley", "3149"),
        ("Pt Cook", "Point Cook", "3030"),
        ("Box Hill", "Box Hill", "3128"),
        ("boxhill", "Box Hill", "3128"),
        ("Box-Hill North", "Box Hill North", "3129"),
        ("Richmond 3121", "Richmond", "3121"),
        ("Richmond, Melbourne", "Richmond", "3121"),
        ("Richmond Melbourne", "Richmond", "3121"),
        ("Melbourne", "Melbourne", "3000"),
        ("North Melbourne", "North Melbourne", "3051"),
        ("Port Melbourne", "Port Melbourne", "3207"),
        ("Geelong", "Geelong", "3220"),
        ("Ballarat", "Ballarat", "3350"),
        ("Wodonga VIC 3690", "Wodonga", "3690"),
    ],
)
def test_lookup_variants(gazetteer: Gazetteer, said: str, name: str, postcode: str) -> None:
    place = gazetteer.lookup(said)

    assert (place.name, place.postcode) == (name, postcode)


@pytest.mark.parametrize(
    "said, name",
    [("3056", "Brunswick"), ("3121", "Richmond"), ("3220", "Geelong"), (" 3199 ", "Frankston")],
)
def test_postcode_alone(gazetteer: Gazetteer, said: str, name: str) -> None:
    assert gazetteer.lookup(said).name == name


def test_misheard_name_with_a_known_postcode_goes_by_the_postcode(gazetteer: Gazetteer) -> None:
    assert gazetteer.lookup("Brunswik 3056").name == "Brunswick"


def test_ambiguous_name_lists_the_options(gazetteer: Gazetteer) -> None:
    with pytest.raises(AmbiguousPlace) as info:
        gazetteer.lookup("Newtown")

    assert sorted(p.postcode for p in info.value.options) == ["3220", "3351"]
    assert str(info.value) == (
        "There is more than one 'Newtown' in our service area: Newtown VIC 3220 or "
        "Newtown VIC 3351. Ask the caller which one, or for the postcode."
    )


@pytest.mark.parametrize(
    "said, postcode", [("Newtown 3351", "3351"), ("newtown, VIC 3220", "3220")]
)
def test_ambiguous_name_settled_by_postcode(gazetteer: Gazetteer, said: str, postcode: str) -> None:
    assert gazetteer.lookup(said).postcode == postcode


def test_ambiguous_name_with_a_postcode_of_neither_stays_ambiguous(gazetteer: Gazetteer) -> None:
    with pytest.raises(AmbiguousPlace):
        gazetteer.lookup("Newtown 3000")


def test_unknown_place_message_for_the_model(gazetteer: Gazetteer) -> None:
    with pytest.raises(UnknownPlace) as info:
        gazetteer.lookup("Xyz")

    assert str(info.value) == (
        "I couldn't find 'Xyz' in our service area. Ask the caller for the suburb name or postcode."
    )
    assert info.value.suggestions == ()


@pytest.mark.parametrize(
    "said, expected",
    [
        ("Brunswik", "Brunswick"),
        ("Frankstone", "Frankston"),
        ("Morington", "Mornington"),
        ("Warnambool", "Warrnambool"),
        ("Saint Kilder", "St Kilda"),
    ],
)
def test_unknown_place_suggests_close_names(gazetteer: Gazetteer, said: str, expected: str) -> None:
    with pytest.raises(UnknownPlace) as info:
        gazetteer.lookup(said)

    assert 1 <= len(info.value.suggestions) <= 3
    assert info.value.suggestions[0] == expected
    assert f"Close matches: {expected}" in str(info.value)


@pytest.mark.parametrize("said", ["2000", "Sydney", "", "   "])
def test_outside_the_service_area(gazetteer: Gazetteer, said: str) -> None:
    with pytest.raises(UnknownPlace, match="Ask the caller for the suburb name or postcode"):
        gazetteer.lookup(said)


def test_unknown_postcode_is_named_as_a_postcode(gazetteer: Gazetteer) -> None:
    with pytest.raises(UnknownPlace, match="I couldn't find postcode 2000 in our service area"):
        gazetteer.lookup("2000")


def test_lookup_errors_are_tool_errors() -> None:
    assert issubclass(UnknownPlace, PlaceError)
    assert issubclass(AmbiguousPlace, PlaceError)
    assert issubclass(PlaceError, ToolError)
    assert issubclass(GazetteerFileError, ConfigError)


# --------------------------------------------------------------------------- distances


def test_brunswick_to_geelong(gazetteer: Gazetteer) -> None:
    brunswick, geelong = gazetteer.lookup("Brunswick"), gazetteer.lookup("Geelong")

    # Straight line, checked by hand: 0.38 deg of latitude (42.3 km) and 0.60 deg of
    # longitude at 38 deg S (52.5 km) -> about 67 km. By road it is about 80 km.
    straight = distance_km(brunswick, geelong, 1.0)
    assert straight == pytest.approx(67.4, abs=1.0)
    assert distance_km(brunswick, geelong, 1.3) == round(straight * 1.3, 1)


@pytest.mark.parametrize(
    "a, b, km",
    [
        ("Melbourne", "Frankston", 41),
        ("Melbourne", "Ballarat", 102),
        ("Melbourne", "Bendigo", 132),
        ("Melbourne", "Traralgon", 145),
        ("Melbourne", "Wodonga", 254),
        ("Brunswick", "Coburg", 2.6),
    ],
)
def test_known_straight_line_distances(gazetteer: Gazetteer, a: str, b: str, km: float) -> None:
    assert distance_km(gazetteer.lookup(a), gazetteer.lookup(b), 1.0) == pytest.approx(km, rel=0.05)


def test_distance_is_symmetric_rounded_and_zero_to_itself(gazetteer: Gazetteer) -> None:
    a, b = gazetteer.lookup("Kew"), gazetteer.lookup("Sorrento")

    assert distance_km(a, b, 1.3) == distance_km(b, a, 1.3)
    assert distance_km(a, b, 1.3) == round(distance_km(a, b, 1.3), 1)
    assert distance_km(a, a, 1.3) == 0.0


# --------------------------------------------------------------------------- the table


def test_shipped_table_is_sane(gazetteer: Gazetteer) -> None:
    melbourne = gazetteer.lookup("3000")
    assert len(gazetteer) >= 150
    assert {p.state for p in gazetteer.places} == {"VIC"}
    for place in gazetteer.places:
        # Catches a slipped digit: 3000-3209 postcodes (the city out to the Yarra Valley's
        # 3139) sit within 60 km, and nothing in Victoria is more than about 500 km away.
        limit = 60 if place.postcode < "3210" else 500
        assert distance_km(melbourne, place, 1.0) < limit, place
    for name in [
        "Geelong",
        "Frankston",
        "Mornington",
        "Sorrento",
        "Healesville",
        "Lilydale",
        "Belgrave",
        "Olinda",
        "Bendigo",
        "Shepparton",
        "Warrnambool",
        "Traralgon",
        "Sale",
        "Wodonga",
    ]:
        gazetteer.lookup(name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "places.csv"
    path.write_text(text)
    return path


def test_gazetteer_from_places() -> None:
    gazetteer = Gazetteer([Place("Brunswick", "3056", "VIC", -37.767, 144.96)])

    assert gazetteer.lookup("brunswick").label == "Brunswick VIC 3056"


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,postcode,lat,lon\n", "the first line must be"),
        ("name,postcode,state,lat,lon\nBrunswick,3056,VIC,-37.767\n", "line 2: expected 5"),
        ("name,postcode,state,lat,lon\nBrunswick,305,VIC,-37.767,144.96\n", "line 2: postcode"),
        ("name,postcode,state,lat,lon\nBrunswick,3056,Vic.,-37.767,144.96\n", "line 2: state"),
        ("name,postcode,state,lat,lon\nBrunswick,3056,VIC,37.767,144.96\n", "not in Australia"),
        ("name,postcode,state,lat,lon\nBrunswick,3056,VIC,144.96,-37.767\n", "not in Australia"),
        ("name,postcode,state,lat,lon\nBrunswick,3056,VIC,abc,144.96\n", "decimal degrees"),
        (
            "name,postcode,state,lat,lon\nBrunswick,3056,VIC,-37.767,144.96\n"
            "brunswick,3056,VIC,-37.767,144.96\n",
            "listed twice",
        ),
    ],
)
def test_broken_table_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GazetteerFileError, match=message):
        Gazetteer.load(_write(tmp_path, text))


def test_missing_table(tmp_path: Path) -> None:
    with pytest.raises(GazetteerFileError, match="not found"):
        Gazetteer.load(tmp_path / "none.csv")
