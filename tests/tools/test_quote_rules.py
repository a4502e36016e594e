"""Whose quote it is and what it still costs: a quote is booked, texted or e-mailed only on the
call it was made on or by the number that asked for it, is never booked at a price the day has
since changed, and a booking needs a name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from sqlalchemy import func, select

from relay.services import messaging
from relay.services.email import smtp_settings
from relay.storage.models import Booking, Message, Quote
from relay.tools.ledger import MAYBE_DONE

MEL = ZoneInfo("Australia/Melbourne")
TUESDAY = "2026-11-24"
TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
SENT = {"sid": "SM" + "1" * 32, "status": "queued"}


async def _quote(call: Any, day: str = TUESDAY) -> str:
    result = await call(
        "quote_piano_move", piano_type="upright", pickup="Brunswick", dropoff="Coburg",
        move_date=day,
    )  # fmt: skip
    assert result.data is not None and "quote_id" in result.data, result.content
    return str(result.data["quote_id"])


async def _count(call: Any, model: type[Any]) -> int:
    async with call.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _with_twilio(call: Any) -> Any:
    call.services = {
        **call.services,
        "twilio": messaging.TwilioCredentials(TWILIO_SID, "t"),
        "smtp": smtp_settings("smtp://127.0.0.1:1", "office@keystone.example"),
    }
    return call


# -- whose quote -----------------------------------------------------------------------------


async def test_another_callers_quote_is_not_booked_texted_or_e_mailed(
    phone: Callable[..., Any],
) -> None:
    owner = _with_twilio(phone(caller="+61412999001"))
    quote_id = await _quote(owner)
    stranger = owner.another(caller="+61412777001")

    for confirmed in (False, True):
        booked = await stranger(
            "book_move", quote_id=quote_id, date=TUESDAY, window="morning",
            confirmed=confirmed, name="Mallory",
        )  # fmt: skip
        assert booked.content == (
            f"Error: There is no quote {quote_id} for this caller. Quote again with "
            "quote_piano_move, and use the new quote id."
        )
    with respx.mock(assert_all_called=False) as twilio:
        route = twilio.post(MESSAGES_URL)
        texted = await stranger("send_quote_sms", quote_id=quote_id)
    assert texted.content.startswith(f"Error: There is no quote {quote_id} for this caller.")
    assert not route.called
    mailed = await stranger(
        "send_quote_email", quote_id=quote_id, email="mallory@example.com", confirmed=False
    )
    assert mailed.content.startswith(f"Error: There is no quote {quote_id} for this caller.")
    assert await _count(owner, Booking) == 0 and await _count(owner, Message) == 0


async def test_the_same_number_on_a_later_call_may_book_its_quote(
    phone: Callable[..., Any],
) -> None:
    first = phone(caller="+61412999001")
    quote_id = await _quote(first)
    # Called back from the same mobile, however the caller ID is written.
    again = first.another(caller="0412 999 001")
    booked = await again(
        "book_move", quote_id=quote_id, date=TUESDAY, window="morning", confirmed=True,
        name="Priya",
    )  # fmt: skip
    assert booked.content.startswith("Booked. Reference"), booked.content


async def test_a_withheld_callers_quote_is_theirs_on_their_call_only(
    phone: Callable[..., Any],
) -> None:
    hidden = phone(caller="anonymous")
    quote_id = await _quote(hidden)
    other = hidden.another(caller="anonymous")

    refused = await other(
        "book_move", quote_id=quote_id, date=TUESDAY, window="morning", confirmed=True,
        name="Ann",
    )  # fmt: skip
    assert refused.content.startswith(f"Error: There is no quote {quote_id} for this caller.")
    booked = await hidden(
        "book_move", quote_id=quote_id, date=TUESDAY, window="morning", confirmed=True,
        name="Ann",
    )  # fmt: skip
    assert booked.content.startswith("Booked. Reference"), booked.content


# -- the price the day gives -----------------------------------------------------------------


async def test_a_quote_made_before_midnight_is_not_booked_without_the_next_day_surcharge(
    phone: Callable[..., Any],
) -> None:
    call = phone(now=datetime(2026, 11, 23, 23, 59, 30, tzinfo=MEL))  # Monday, before midnight
    quote_id = await _quote(call, "2026-11-25")  # Wednesday: not next-day yet
    async with call.db.session() as session:
        quote = await session.get(Quote, quote_id)
    assert quote is not None and quote.total_cents == 35000

    call.now = datetime(2026, 11, 24, 0, 0, 30, tzinfo=MEL)  # Tuesday: Wednesday is tomorrow
    for confirmed in (False, True):
        result = await call(
            "book_move", quote_id=quote_id, date="2026-11-25", window="morning",
            confirmed=confirmed, name="Priya",
        )  # fmt: skip
        assert result.content == (
            f"Error: Not booked. Quote {quote_id} was $350, but the move is now the next day. "
            "The total is $420 including GST: $350 for the upright piano and $70 for next-day "
            "service. Tell the caller the new total; if they want it, quote again with "
            "quote_piano_move and book with the new quote id."
        )
    assert await _count(call, Booking) == 0

    fresh = await _quote(call, "2026-11-25")
    booked = await call(
        "book_move", quote_id=fresh, date="2026-11-25", window="morning", confirmed=True,
        name="Priya",
    )  # fmt: skip
    assert booked.content.startswith("Booked.") and "$420" in booked.content


async def test_a_quote_keeps_its_price_while_the_day_still_gives_it(
    phone: Callable[..., Any],
) -> None:
    call = phone()  # Thursday 10 am
    quote_id = await _quote(call, "2026-11-20")  # Friday, tomorrow: the next-day surcharge
    call.now = datetime(2026, 11, 19, 23, 59, 30, tzinfo=MEL)  # still Thursday
    booked = await call(
        "book_move", quote_id=quote_id, date="2026-11-20", window="afternoon", confirmed=True,
        name="Priya",
    )  # fmt: skip
    assert booked.content.startswith("Booked.") and "$420" in booked.content, booked.content


# -- a name for the booking ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   ", "\u200b", ".", " - "])
async def test_a_move_is_not_booked_without_a_name(phone: Callable[..., Any], name: str) -> None:
    call = phone()
    quote_id = await _quote(call)
    for confirmed in (False, True):
        result = await call(
            "book_move", quote_id=quote_id, date=TUESDAY, window="morning",
            confirmed=confirmed, name=name,
        )  # fmt: skip
        assert result.content == (
            "Not booked. Ask for the caller's name first: the booking goes under it."
        )
        assert result.data == {"error": "no name"}
    assert await _count(call, Booking) == 0


@pytest.mark.parametrize("name", ["", "   ", "\u200b", ".", " - "])
async def test_an_appointment_is_not_booked_without_a_name(
    phone: Callable[..., Any], name: str
) -> None:
    call = phone("car-service")
    for confirmed in (False, True):
        result = await call(
            "book_appointment", service="brake inspection", start="2026-11-24T10:30",
            name=name, confirmed=confirmed,
        )  # fmt: skip
        assert result.content == (
            "Not booked. Ask for the caller's name first: the booking goes under it."
        )
        assert result.data == {"error": "no name"}
    assert await _count(call, Booking) == 0


# -- a text whose fate is unknown ------------------------------------------------------------


async def test_a_timed_out_text_is_reported_as_maybe_sent(phone: Callable[..., Any]) -> None:
    call = _with_twilio(phone())
    quote_id = await _quote(call)
    with respx.mock() as twilio:
        twilio.post(MESSAGES_URL).mock(side_effect=httpx.ReadTimeout("no answer"))
        first = await call("send_quote_sms", quote_id=quote_id)
        reworded = await call("send_quote_sms", quote_id=quote_id.lower())
        repeated = await call("send_quote_sms", quote_id=quote_id)

    assert first.content == (
        "The text may or may not have gone through (no answer came in time), so it was not sent "
        "again. Tell the caller so, and offer to read the quote so they can write it down."
    )
    assert reworded.content == (
        "That text was already tried on this call and may or may not have gone through (no "
        "answer came in time), so it was not sent again. Tell the caller so, and offer to read "
        "the quote so they can write it down."
    )
    assert repeated.content == MAYBE_DONE
    for result in (first, reworded, repeated):
        assert "arrive" not in result.content
