"""Business rules of the piano tools: crane jobs have no phone price and no booking; a text is
sent at most once, even when Twilio's answer never came."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import respx
from sqlalchemy import func, select

from relay.services import messaging
from relay.storage.models import Booking, Message, Quote
from relay.tools import default_registry

TUESDAY = "2026-11-24"
TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
CRANE_JOBS = [
    pytest.param({"piano_type": "grand", "needs_crane": True}, id="crane-asked-for"),
    pytest.param({"piano_type": "baby grand", "dropoff_floors": 4}, id="stairs-flag-a-crane"),
]


async def _count(call: Any, model: type[Any]) -> int:
    async with call.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize("extra", CRANE_JOBS)
async def test_a_crane_job_gets_no_phone_price_and_no_booking(
    phone: Callable[..., Any], extra: dict[str, Any]
) -> None:
    call = phone()
    call.services = {**call.services, "twilio": messaging.TwilioCredentials(TWILIO_SID, "t")}
    result = await call(
        "quote_piano_move", pickup="Brunswick", dropoff="Coburg", move_date=TUESDAY, **extra
    )

    assert result.content.startswith("No price over the phone for this move.")
    assert "inspection" in result.content and "take_message" in result.content
    assert "$" not in result.content
    assert result.data is not None and result.data["needs_inspection"] is True
    assert "$" not in orjson.dumps(result.data).decode()
    quote_id = result.data["quote_id"]
    async with call.db.session() as session:
        row = await session.get(Quote, quote_id)
    assert row is not None and row.status == "inspection"

    for confirmed in (False, True):
        booked = await call(
            "book_move", quote_id=quote_id, date=TUESDAY, window="morning",
            confirmed=confirmed, name="Ann Lee",
        )  # fmt: skip
        assert booked.content.startswith("Error: Quote") and "inspect" in booked.content
    assert await _count(call, Booking) == 0

    with respx.mock(assert_all_called=False) as twilio:
        route = twilio.post(MESSAGES_URL)
        texted = await call("send_quote_sms", quote_id=quote_id)
    assert texted.content.startswith("Error: Quote") and not route.called
    assert await _count(call, Message) == 0


def test_the_sms_tool_outlasts_the_http_timeout() -> None:
    tool = default_registry().get("send_quote_sms")
    assert tool is not None
    assert tool.timeout > messaging.HTTP_TIMEOUT
    assert messaging.HttpxTwilioClient(httpx.AsyncClient()).timeout == messaging.HTTP_TIMEOUT


async def _upright_quote(call: Any) -> str:
    result = await call(
        "quote_piano_move", piano_type="upright", pickup="Brunswick", dropoff="Coburg",
        move_date=TUESDAY,
    )  # fmt: skip
    assert result.data is not None
    return str(result.data["quote_id"])


async def test_a_timed_out_text_is_recorded_as_unknown_and_never_resent(
    phone: Callable[..., Any],
) -> None:
    call = phone()
    call.services = {**call.services, "twilio": messaging.TwilioCredentials(TWILIO_SID, "t")}
    quote_id = await _upright_quote(call)
    with respx.mock() as twilio:
        route = twilio.post(MESSAGES_URL).mock(side_effect=httpx.ReadTimeout("no answer"))
        first = await call("send_quote_sms", quote_id=quote_id)
        # The model asks again (the same call, or reworded): nothing is sent a second time.
        second = await call("send_quote_sms", quote_id=quote_id)
        third = await call("send_quote_sms", quote_id=quote_id.lower())

    assert route.call_count == 1
    assert first.data is not None and first.data.get("unknown") is True
    assert "may or may not have gone through" in first.content
    for again in (second, third):
        assert again.data is not None and again.data.get("unknown") is True, again.content
    async with call.db.session() as session:
        rows = (await session.scalars(select(Message))).all()
    assert [(row.status, row.twilio_sid) for row in rows] == [("unknown", None)]


async def test_a_text_that_never_left_can_be_sent_again(phone: Callable[..., Any]) -> None:
    call = phone()
    call.services = {**call.services, "twilio": messaging.TwilioCredentials(TWILIO_SID, "t")}
    quote_id = await _upright_quote(call)
    with respx.mock() as twilio:
        route = twilio.post(MESSAGES_URL).mock(
            side_effect=[
                httpx.ConnectTimeout("unreachable"),
                httpx.Response(201, json={"sid": "SM" + "2" * 32, "status": "queued"}),
            ]
        )
        failed = await call("send_quote_sms", quote_id=quote_id)
        sent = await call("send_quote_sms", quote_id=quote_id)

    assert failed.content.startswith("The text could not be sent")
    assert sent.content.startswith(f"Texted quote {quote_id}")
    assert route.call_count == 2
    async with call.db.session() as session:
        statuses = sorted((await session.scalars(select(Message.status))).all())
    assert statuses == ["failed", "queued"]


async def test_a_side_effect_whose_tool_timed_out_is_never_run_again(
    phone: Callable[..., Any],
) -> None:
    from relay.storage.models import SideEffect
    from relay.tools import ToolResult
    from relay.tools.ledger import once

    call = phone()
    runs = 0

    async def timed_out() -> ToolResult:
        nonlocal runs
        runs += 1
        return ToolResult("took too long", data={"error": "timeout"})

    first = await once(call.db, "k:1", "send_quote_sms", call.call_sid, timed_out)
    second = await once(call.db, "k:1", "send_quote_sms", call.call_sid, timed_out)

    assert runs == 1 and first.content == "took too long"
    assert second.data is not None and second.data["unknown"] is True
    async with call.db.session() as session:
        row = await session.get(SideEffect, "k:1")
    assert row is not None and row.status == "unknown"
