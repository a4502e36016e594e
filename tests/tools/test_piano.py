"""The piano-removal tools through the real tool framework, on a real SQLite database."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from sqlalchemy import func, select

from relay.services import messaging
from relay.storage.models import Booking, Message, Quote, SideEffect

MEL = ZoneInfo("Australia/Melbourne")
TUESDAY = "2026-11-24"  # an ordinary weekday, five days after "now" (Thursday 19 November)
FRIDAY = "2026-11-20"  # tomorrow: the next-day surcharge
SATURDAY = "2026-11-28"  # the Saturday surcharge

# (arguments, expected line amounts in cents, expected total) against data/piano-removals/pricing.toml.
# Road km: straight line x 1.3 (Brunswick-Coburg 3.4, Brunswick-Richmond 9.2,
# Brunswick-Geelong 87.6, Fitzroy-Box Hill 16.7); the first 10 km are included.
QUOTES = [
    pytest.param(
        {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg", "move_date": TUESDAY},
        [35000],
        "$350",
        id="upright-local",
    ),
    pytest.param(
        {"piano_type": "baby grand", "pickup": "Brunswick", "dropoff": "Geelong 3220", "move_date": TUESDAY,
         "pickup_steps": 10, "dropoff_floors": 2},
        # base 650; 77.6 km x $2.50; 10 steps x $10; 2 floors = 28 steps x $10
        [65000, 19400, 10000, 28000],
        "$1,224",
        id="both-ends-without-lift",
    ),
    pytest.param(
        {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg", "move_date": FRIDAY},
        [35000, 7000],  # next day: 20 % of 350
        "$420",
        id="next-day",
    ),
    pytest.param(
        {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Richmond", "move_date": "tomorrow",
         "pickup_steps": 5, "dropoff_steps": 8},
        # base 350; no distance (9.2 km); 5 x $6; 8 x $6; next day 20 % of 428
        [35000, 3000, 4800, 8560],
        "$513.60",
        id="both-ends-without-lift-next-day",
    ),
    pytest.param(
        {"piano_type": "grand", "pickup": "Fitzroy", "dropoff": "Box Hill", "move_date": SATURDAY,
         "pickup_floors": 3, "pickup_has_lift": True, "dropoff_floors": 1, "dropoff_has_lift": True},
        # base 800; 6.7 km x $2.50; a lift at each end $25; Saturday $80 flat
        [80000, 1675, 2500, 2500, 8000],
        "$946.75",
        id="lifts-saturday",
    ),
    pytest.param(
        {"piano_type": "Clavinova", "pickup": "Carlton", "dropoff": "Carlton", "move_date": TUESDAY},
        [22000, 3000],  # topped up to the $250 minimum
        "$250",
        id="minimum-charge",
    ),
    pytest.param(
        {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg", "move_date": TUESDAY,
         "storage_weeks": 2},
        [35000, 12000],
        "$470",
        id="storage",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "lines", "total"), QUOTES)
async def test_quote_arithmetic_and_saved_quote(
    phone: Callable[..., Any], arguments: dict[str, Any], lines: list[int], total: str
) -> None:
    call = phone()
    result = await call("quote_piano_move", **arguments)

    assert result.data is not None and "error" not in result.data, result.content
    assert [line["amount"] for line in result.data["lines"]] == [_money(c) for c in lines]
    assert result.data["total"] == total
    assert f"The total is {total} including GST" in result.content
    quote_id = result.data["quote_id"]
    assert quote_id in result.content
    async with call.db.session() as session:
        row = await session.get(Quote, quote_id)
    assert row is not None
    assert row.total_cents == sum(lines)
    assert [item["amount_cents"] for item in row.breakdown] == lines
    assert (
        row.agent == "piano-removals"
        and row.caller == call.caller
        and row.call_sid == call.call_sid
    )
    assert row.valid_until == date(2026, 12, 19)  # 30 days from 19 November
    assert row.inputs["pickup"] == arguments["pickup"] and row.status == "quoted"


def _money(cents: int) -> str:
    dollars, rest = divmod(cents, 100)
    return f"${dollars:,}" if rest == 0 else f"${dollars:,}.{rest:02d}"


async def test_unknown_place_saves_no_quote(phone: Callable[..., Any]) -> None:
    call = phone()
    result = await call(
        "quote_piano_move",
        piano_type="upright",
        pickup="Atlantis",
        dropoff="Coburg",
        move_date=TUESDAY,
    )
    assert result.content.startswith("Error: The pick-up place: I couldn't find 'Atlantis'")
    assert await _count(call, Quote) == 0


@pytest.mark.parametrize(
    ("day", "words"),
    [("2026-12-25", "Christmas Day"), ("2026-11-22", "closed on Sundays"), ("2026-11-19", "")],
)
async def test_days_we_do_not_move(phone: Callable[..., Any], day: str, words: str) -> None:
    call = phone()
    result = await call(
        "quote_piano_move",
        piano_type="upright",
        pickup="Brunswick",
        dropoff="Coburg",
        move_date=day,
    )
    assert result.content.startswith("No quote yet.") and words in result.content
    assert result.data is not None and result.data["alternatives"], "free days are offered instead"
    assert await _count(call, Quote) == 0


async def test_a_full_day_is_still_quoted_with_a_warning(phone: Callable[..., Any]) -> None:
    call = phone()
    for window in ("morning", "morning", "afternoon", "afternoon"):
        await _booked_move(call, TUESDAY, window)
    result = await call(
        "quote_piano_move",
        piano_type="upright",
        pickup="Brunswick",
        dropoff="Coburg",
        move_date=TUESDAY,
    )
    assert "$350" in result.content and "fully booked" in result.content


async def test_find_move_dates(phone: Callable[..., Any]) -> None:
    call = phone()
    result = await call("find_move_dates", date=TUESDAY)
    assert "Tuesday the 24th of November" in result.content
    assert [w["window"] for w in result.data["windows"]] == ["morning", "afternoon"]  # type: ignore[index]
    assert "2026-11-24 morning" in result.content

    for window in ("morning", "morning"):
        await _booked_move(call, TUESDAY, window)
    result = await call("find_move_dates", date=TUESDAY)
    assert [w["window"] for w in result.data["windows"]] == ["afternoon"]  # type: ignore[index]

    result = await call("find_move_dates")
    assert result.data["windows"][0]["start"].startswith("2026-11-20T08:00")  # type: ignore[index]


async def test_book_move_only_after_confirmation(phone: Callable[..., Any]) -> None:
    call = phone()
    quote_id = await _quote(call)
    result = await call(
        "book_move",
        quote_id=quote_id,
        date=TUESDAY,
        window="morning",
        confirmed=False,
        name="Priya Sharma",
    )
    assert result.content.startswith("Not booked yet") and "confirmed=true" in result.content
    assert (
        "$350" in result.content
        and "morning window on Tuesday the 24th of November" in result.content
    )
    assert await _count(call, Booking) == 0

    result = await call("book_move", quote_id=quote_id, date=TUESDAY, window="morning", confirmed=True,
                        name="Priya Sharma", pickup_address="12 Albert St")  # fmt: skip
    assert result.content.startswith("Booked. Reference")
    ref = result.data["booking_ref"]  # type: ignore[index]
    async with call.db.session() as session:
        booking = await session.get(Booking, ref)
        quote = await session.get(Quote, quote_id)
    assert booking is not None and quote is not None
    assert booking.kind == "move" and booking.quote_id == quote_id and booking.phone == call.caller
    # 8 am to midday in Melbourne (UTC+11) stored as UTC.
    assert (booking.starts_at, booking.ends_at) == (
        datetime(2026, 11, 23, 21, 0),
        datetime(2026, 11, 24, 1, 0),
    )
    assert "12 Albert St" in (booking.notes or "")
    assert quote.status == "booked"


async def test_book_move_refuses_a_day_the_quote_is_not_for(phone: Callable[..., Any]) -> None:
    call = phone()
    quote_id = await _quote(call)
    result = await call(
        "book_move",
        quote_id=quote_id,
        date="2026-11-25",
        window="morning",
        confirmed=True,
        name="Priya",
    )
    assert result.content.startswith("Error: Quote") and "Quote again" in result.content
    assert await _count(call, Booking) == 0


async def test_the_same_booking_twice_books_once(phone: Callable[..., Any]) -> None:
    call = phone()
    quote_id = await _quote(call)
    arguments = {
        "quote_id": quote_id,
        "date": TUESDAY,
        "window": "afternoon",
        "confirmed": True,
        "name": "Tom Nguyen",
    }
    first = await call("book_move", **arguments)
    second = await call("book_move", **arguments)
    assert first.content.startswith("Booked.")
    assert second.content == f"{first.content} (Already done earlier in this call; not repeated.)"
    assert await _count(call, Booking) == 1
    # A different wording of the same request (a new key) still cannot book the quote twice.
    third = await call("book_move", **{**arguments, "name": "Tom"})
    assert "already booked" in third.content
    assert await _count(call, Booking) == 1


async def test_two_callers_race_for_the_last_crew(phone: Callable[..., Any]) -> None:
    first, second = phone(), phone(caller="+61412000222").another()
    await _booked_move(first, TUESDAY, "morning")  # two crews: one left
    quotes = [await _quote(first), await _quote(second)]

    results = await asyncio.gather(
        *(
            call("book_move", quote_id=q, date=TUESDAY, window="morning", confirmed=True, name=name)
            for call, q, name in ((first, quotes[0], "Ann"), (second, quotes[1], "Bo"))
        )
    )

    won = [r for r in results if r.content.startswith("Booked.")]
    lost = [r for r in results if not r.content.startswith("Booked.")]
    assert len(won) == 1 and len(lost) == 1, [r.content for r in results]
    assert lost[0].content.startswith("Not booked. That time is fully booked.")
    assert lost[0].data is not None and lost[0].data["error"] == "full"
    assert lost[0].data["alternatives"][0]["window"] == "afternoon"
    async with first.db.session() as session:
        morning = await session.scalar(
            select(func.count())
            .select_from(Booking)
            .where(Booking.starts_at == datetime(2026, 11, 23, 21, 0))
        )
        ledger = (await session.scalars(select(SideEffect.status))).all()
    assert morning == 2
    assert sorted(ledger) == ["done", "failed"]  # the loser may try another window


TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


async def test_send_quote_sms_through_twilio(phone: Callable[..., Any]) -> None:
    creds = messaging.TwilioCredentials(TWILIO_SID, "secret-token", "+61400000999")
    call = phone()
    call.services = {**call.services, "twilio": creds}
    quote_id = await _quote(call)
    with respx.mock(assert_all_called=True) as twilio:
        route = twilio.post(MESSAGES_URL).mock(
            return_value=httpx.Response(201, json={"sid": "SM" + "1" * 32, "status": "queued"})
        )
        result = await call("send_quote_sms", quote_id=quote_id)

    assert result.content.startswith(f"Texted quote {quote_id}")
    request = route.calls.last.request
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"{TWILIO_SID}:secret-token".encode()).decode()
    )
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs(request.content.decode())
    assert form["To"] == [call.caller] and form["From"] == ["+61400000999"]
    body = form["Body"][0]
    assert body.startswith(
        f"Keystone Piano Movers quote {quote_id}\nUpright piano, Brunswick VIC 3056 to Coburg VIC 3058, Tue 24 Nov 2026."
    )
    assert (
        "Total: $350 incl. GST" in body
        and "Valid until 19 Dec 2026. To book, call +61390001234." in body
    )
    async with call.db.session() as session:
        row = await session.scalar(select(Message))
    assert row is not None and row.twilio_sid == "SM" + "1" * 32 and row.status == "queued"
    assert row.to_number == call.caller and row.body == body


async def test_send_quote_sms_reports_twilio_errors(phone: Callable[..., Any]) -> None:
    call = phone()
    call.services = {**call.services, "twilio": messaging.TwilioCredentials(TWILIO_SID, "t")}
    quote_id = await _quote(call)
    with respx.mock() as twilio:
        twilio.post(MESSAGES_URL).mock(
            return_value=httpx.Response(
                400, json={"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}
            )
        )
        result = await call("send_quote_sms", quote_id=quote_id)
    assert result.content.startswith("The text could not be sent")
    assert result.data is not None and "21211" in result.data["error"]
    async with call.db.session() as session:
        row = await session.scalar(select(Message))
    assert row is not None and row.status == "failed" and row.from_number == "+61390001234"


async def test_send_quote_sms_without_twilio(phone: Callable[..., Any]) -> None:
    call = phone()
    quote_id = await _quote(call)
    result = await call("send_quote_sms", quote_id=quote_id)
    assert result.content.startswith("SMS is not set up")
    assert await _count(call, Message) == 0


async def test_take_message(phone: Callable[..., Any]) -> None:
    from relay.storage.models import Ticket

    call = phone()
    result = await call(
        "take_message", name="Gianni Rossi", phone="0412 345 678", reason="Wants a crane quote"
    )
    assert result.content.startswith("Message taken")
    same = await call("take_message", name="Gianni Rossi", phone="this number", reason="Call back")
    async with call.db.session() as session:
        tickets = (await session.scalars(select(Ticket).order_by(Ticket.id))).all()
    assert [(t.name, t.phone) for t in tickets] == [
        ("Gianni Rossi", "+61412345678"),
        ("Gianni Rossi", call.caller),
    ]
    assert same.data is not None and same.data["ticket_id"] == tickets[1].id
    bad = await call("take_message", name="Gianni", phone="twelve", reason="x")
    assert bad.data == {"error": "bad phone"}


class _Hit:
    def __init__(self, source: str, text: str, score: float) -> None:
        self.source, self.text, self.score = source, text, score


class _Knowledge:
    def __init__(self, hits: list[_Hit] | Exception) -> None:
        self.hits = hits
        self.asked: list[tuple[str, str, int]] = []

    async def search(self, collection: str, query: str, k: int = 4) -> list[_Hit]:
        self.asked.append((collection, query, k))
        if isinstance(self.hits, Exception):
            raise self.hits
        return self.hits[:k]


async def test_search_knowledge(phone: Callable[..., Any]) -> None:
    store = _Knowledge(
        [
            _Hit("insurance.md", "Every move is insured  for up to $50,000.", 0.71),
            _Hit("faq.csv", "Yes, we store pianos.", 0.4),
        ]
    )
    call = phone()
    call.services = {**call.services, "knowledge": store}
    result = await call("search_knowledge", query="insurance")
    assert store.asked == [("piano-removals", "insurance", 3)]
    assert "[1] From insurance.md: Every move is insured for up to $50,000." in result.content
    assert "[2] From faq.csv: Yes, we store pianos." in result.content

    call.services = {**call.services, "knowledge": _Knowledge(RuntimeError("chroma down"))}
    failed = await call("search_knowledge", query="insurance")
    assert failed.content.startswith("The documents can't be searched just now")

    call.services = {k: v for k, v in call.services.items() if k != "knowledge"}
    missing = await call("search_knowledge", query="insurance")
    assert missing.content.startswith("There are no documents to search")


# -- helpers ---------------------------------------------------------------------------------


async def _quote(call: Any, day: str = TUESDAY) -> str:
    result = await call(
        "quote_piano_move",
        piano_type="upright",
        pickup="Brunswick",
        dropoff="Coburg",
        move_date=day,
    )
    assert result.data is not None and "quote_id" in result.data, result.content
    return str(result.data["quote_id"])


WINDOWS = {"morning": (time(8), time(12)), "afternoon": (time(12, 30), time(16, 30))}


async def _booked_move(call: Any, day: str, window: str) -> None:
    """A move booked by someone else, straight into the table (times in UTC, as stored)."""
    opens, closes = WINDOWS[window]
    start = datetime.combine(date.fromisoformat(day), opens, tzinfo=MEL).astimezone(UTC)
    end = datetime.combine(date.fromisoformat(day), closes, tzinfo=MEL).astimezone(UTC)
    async with call.db.session() as session, session.begin():
        session.add(Booking(id=uuid.uuid4().hex[:12], agent="piano-removals", kind="move",
                            phone="+61400000000", name="Someone", starts_at=start, ends_at=end,
                            status="booked", created_at=start, updated_at=start))  # fmt: skip


async def _count(call: Any, model: type[Any]) -> int:
    async with call.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)
