"""Application reconnect (issue 10 item 1): a dropped socket that Twilio opens again.

Real uvicorn, real WebSockets, real SQLite, the scripted model, the real business tools
(quote_piano_move, book_move, send_quote_sms) and respx for Twilio's Messages API. Both
readings of the unconfirmed wire behaviour (notes §0.2) are driven: a new socket that starts
with a fresh ``setup``, and one that goes straight to the replayed frames.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from sqlalchemy import func, select

from relay.call import reconnect
from relay.storage import repository
from relay.storage.models import Booking, SideEffect
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from relay.testing.scripted import Stall

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 19, 10, 0, tzinfo=ZoneInfo("Australia/Melbourne"))
TUESDAY = "2026-11-24"
TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"


@contextmanager
def twilio_sms() -> Iterator[respx.Route]:
    """Twilio's Messages API mocked (queued), everything on 127.0.0.1 passed through; yields
    the Messages route."""
    with respx.mock(assert_all_mocked=False, assert_all_called=False) as twilio:
        twilio.route(host="127.0.0.1").pass_through()
        yield twilio.post(MESSAGES_URL).mock(
            return_value=httpx.Response(201, json={"sid": "SM" + "1" * 32, "status": "queued"})
        )


QUOTE_ARGS = {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg",
              "move_date": TUESDAY}  # fmt: skip

ASK = "How much to move my upright from Brunswick to Coburg on Tuesday?"
QUOTED = "That's $350 including GST. Shall I book it?"
BOOK = "Yes, book the morning please, name Ann Lee, and text me the quote."
BOOKED = "All booked for Tuesday morning, and I've sent the quote to your phone. Anything else?"
THANKS = "No, that's all, thanks."
BYE = "You're welcome, Ann. Bye for now!"
FREE = "Yes, Tuesday morning is free. Would you like me to hold it for you, Ann?"


def reconnect_prompts(root: Path, *, on: bool = True) -> Path:
    """The shipped piano agent, with ``application_reconnect = true`` in its ``[relay]``."""
    text = (REPO / "prompts" / "piano-removals.toml").read_text(encoding="utf-8")
    if on:
        text, n = re.subn(r"^\[relay\]\n", "[relay]\napplication_reconnect = true\n", text,
                          flags=re.M)  # fmt: skip
        assert n == 1
    prompts = root / "reconnect-prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "piano-removals.toml").write_text(text, encoding="utf-8")
    return prompts


@pytest.fixture
def reconnecting(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]], tmp_path: Path
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def start(llm: ScriptedLLM, **settings: Any) -> AsyncIterator[Any]:
        def configure(runtime: Any) -> None:
            runtime.deps.now = lambda: NOW

        async with start_relay(
            llm, configure=configure, RELAY_PROMPTS_DIR=str(reconnect_prompts(tmp_path)),
            TWILIO_ACCOUNT_SID=TWILIO_SID, RELAY_SMS_FROM="+61400000999", **settings,
        ) as relay:  # fmt: skip
            yield relay

    return start


def affinity(relay: Any, call: Any) -> Any:
    """Point ``call`` at the URL relay's TwiML gives agents with application reconnect."""
    call.url = f"{relay.ws_url}/{call.call_sid}"
    return call


def quote_id(request: dict[str, Any]) -> str:
    tool = next(m for m in request["messages"] if m["role"] == "tool")
    return str(tool["content"].split(":", 1)[0].split()[-1])


def users(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def count(relay: Any, model: Any, call_sid: str) -> int:
    async with relay.runtime.deps.db.session() as s:
        query = select(func.count()).select_from(model).where(model.call_sid == call_sid)
        return int(await s.scalar(query) or 0)


async def ledger_done(db: Any, call_sid: str, n: int) -> bool:
    async with db.session() as s:
        query = select(func.count()).select_from(SideEffect)
        query = query.where(SideEffect.call_sid == call_sid, SideEffect.status == "done")
        return int(await s.scalar(query) or 0) >= n


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait until the async ``check`` holds (a limit, never an expectation)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (a database row, no event to wait on)
            await asyncio.sleep(0.02)


async def kinds(relay: Any, call_sid: str) -> list[tuple[str, dict[str, Any]]]:
    events = await repository.call_events(relay.runtime.deps.db, call_sid)
    wanted = {"reconnected", "replay_skipped", "reply_cut_off", "reply_repeated"}
    return [(e.kind, e.data) for e in events if e.kind in wanted]


async def cut_off_mid_reply(relay: Any) -> Any:
    """Turn 1 answered (a quote); turn 2 books and texts, and the socket drops mid-reply."""
    first = affinity(relay, relay.call(to="+61390001234"))
    await first.connect()
    assert (await first.say(ASK)).text == QUOTED
    relay.llm.push(
        ToolCalls([
            ToolCall("book_move", {"quote_id": quote_id(relay.llm.requests[1]), "date": TUESDAY,
                                   "window": "morning", "confirmed": True, "name": "Ann Lee"}),
            ToolCall("send_quote_sms", {"quote_id": quote_id(relay.llm.requests[1])}),
        ]),
        Text(BOOKED),
    )  # fmt: skip
    relay.llm.token_delay = 0.05  # the reply streams slowly enough to be cut
    await first.prompt(BOOK)
    while True:  # until the first words of the reply (a filler line may come before)
        frame = await first.next_frame()
        assert frame is not None
        if frame["type"] == "text" and frame["token"].startswith("All"):
            break
    await first.drop()  # the network fails: no close handshake
    await relay.session_closed()  # the dropped session let its turn finish, then flushed
    relay.llm.token_delay = 0.0
    return first


async def test_the_twiml_asks_for_reconnects_on_a_url_that_names_the_call(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    async with reconnecting(ScriptedLLM()) as relay:
        response = await relay.post(
            "/twiml", {"CallSid": "CA" + "7" * 32, "From": "+61412345678", "To": "+61390001234",
                       "AccountSid": TWILIO_SID, "Direction": "inbound"},
        )  # fmt: skip
    element = ET.fromstring(response.text).find("Connect/ConversationRelay")
    assert element is not None
    assert element.attrib["applicationReconnect"] == "true"
    host = relay.base_url.removeprefix("http://")
    assert element.attrib["url"] == f"wss://{host}/ws/CA{'7' * 32}"


@pytest.mark.parametrize("reading", ["fresh-setup", "replay-only"])
async def test_a_dropped_socket_reconnects_and_the_call_goes_on_without_repeats(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]], reading: str, database_url: str
) -> None:
    """On SQLite and on PostgreSQL (the database replicas share)."""
    llm = ScriptedLLM([ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]), Text(QUOTED)])
    with twilio_sms() as sms:
        async with reconnecting(llm, DATABASE_URL=database_url) as relay:
            first = await cut_off_mid_reply(relay)
            requests_before = len(relay.llm.requests)
            dropped = await repository.get_call(relay.runtime.deps.db, first.call_sid)

            # Twilio reconnects: same CallSid and sessionId, on the URL the TwiML gave.
            second = affinity(relay, relay.call(call_sid=first.call_sid,
                                                session_id=first.session_id, to=first.to))  # fmt: skip
            await second.connect(setup=reading == "fresh-setup")
            # ... and replays the frames it had buffered: both prompts, already handled.
            await second.prompt(ASK)
            await second.prompt(BOOK)
            again = await second.reply()  # the reply the drop cut off, given again once
            relay.llm.push(Text(BYE))
            bye = await second.say(THANKS)
            await second.close()
            await relay.session_closed(2)

            db = relay.runtime.deps.db
            call = await repository.get_call(db, first.call_sid)
            events = await kinds(relay, first.call_sid)
            bookings = await count(relay, Booking, first.call_sid)
            ledger = await count(relay, SideEffect, first.call_sid)
            requests = list(relay.llm.requests)

    assert dropped is not None and dropped.status == "reconnecting"
    assert [(f["type"], f["token"], f["last"]) for f in again.frames] == [("text", BOOKED, True)]
    assert bye.text == BYE and {f["type"] for f in bye.frames} == {"text"}
    # The replayed prompts reached the model no second time: one request, for the new words.
    assert len(requests) == requests_before + 1 == 5
    assert users(requests[-1]) == [ASK, BOOK, THANKS]
    assert [m["content"] for m in requests[-1]["messages"] if m["role"] == "assistant"
            and m.get("content")][-1] == BOOKED  # fmt: skip
    assert bookings == 1 and sms.call_count == 1
    assert ledger == 2  # book_move and send_quote_sms, once each
    assert call is not None and call.reconnects == 1 and call.sessions == 2
    assert [k for k, _ in events] == [
        "reply_cut_off", "reconnected", "reply_repeated", "replay_skipped", "replay_skipped",
    ]  # fmt: skip
    cut, connected, repeated = events[0][1], events[1][1], events[2][1]
    assert cut == {"seq": repeated["seq"], "complete": True}
    assert connected["setup"] is (reading == "fresh-setup")
    assert connected["previous_status"] == "reconnecting" and connected["reconnects"] == 1
    assert [d["frame"][:2] for k, d in events if k == "replay_skipped"] == [
        ["prompt", ASK],
        ["prompt", BOOK],
    ]


async def test_a_reply_is_given_again_once_only_and_a_new_prompt_ends_the_replay(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    llm = ScriptedLLM([ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]), Text(QUOTED)])
    with twilio_sms():
        async with reconnecting(llm) as relay:
            first = await cut_off_mid_reply(relay)
            second = affinity(relay, relay.call(call_sid=first.call_sid, to=first.to))
            await second.connect()  # a fresh setup with a new sessionId
            again = await second.reply()
            await second.drop()  # dropped again before the caller said anything
            await relay.session_closed(2)
            third = affinity(relay, relay.call(call_sid=first.call_sid, to=first.to))
            await third.connect(setup=False)
            # Replayed: the booking prompt (handled); then words relay never had; then the
            # booking prompt again, now said anew after a new prompt: a turn of its own.
            relay.llm.push(Text("Yes, Tuesday morning."), Text("Right, Tuesday morning it is."))
            await third.prompt(BOOK)
            checked = await third.say("Is that Tuesday morning?")
            booked = await third.say(BOOK)
            await third.close()
            await relay.session_closed(3)
            call = await repository.get_call(relay.runtime.deps.db, first.call_sid)
            events = await kinds(relay, first.call_sid)
            requests = list(relay.llm.requests)

    assert again.text == BOOKED
    assert checked.text == "Yes, Tuesday morning."  # no second repeat of BOOKED before it
    assert booked.text == "Right, Tuesday morning it is."
    assert call is not None and call.reconnects == 2
    assert [k for k, _ in events].count("reply_repeated") == 1
    assert users(requests[-1]) == [ASK, BOOK, "Is that Tuesday morning?", BOOK]


async def test_without_the_attribute_a_drop_still_takes_the_64105_path(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]], tmp_path: Path
) -> None:
    llm = ScriptedLLM([Text("An upright? Where from?")])
    prompts = reconnect_prompts(tmp_path, on=False)
    async with start_relay(llm, RELAY_PROMPTS_DIR=str(prompts)) as relay:
        twiml = await relay.post("/twiml", {"CallSid": "CA" + "8" * 32, "To": "+61390001234"})
        first = relay.call(to="+61390001234")
        await first.connect()
        await first.say("I'd like a quote for an upright piano")
        await first.drop()
        await relay.session_closed()
        call = await repository.get_call(relay.runtime.deps.db, first.call_sid)
        events = await kinds(relay, first.call_sid)
    element = ET.fromstring(twiml.text).find("Connect/ConversationRelay")
    assert element is not None and "applicationReconnect" not in element.attrib
    assert element.attrib["url"].endswith("/ws")
    assert call is not None and (call.status, call.reconnects) == ("completed", 0)
    assert events == []


def test_replay_matches_runs_of_recorded_frames_in_order() -> None:
    a, b, c, d = (("prompt", w, "en-AU") for w in "abcd")
    replay = reconnect.Replay([a, b, c])
    assert [replay.handled(k) for k in (b, c, d, b)] == [True, True, False, False]
    replay = reconnect.Replay([a, b, a, c])
    assert [replay.handled(k) for k in (a, c, a)] == [True, True, False]  # the run a, c
    replay = reconnect.Replay([a, b])
    assert replay.handled(None) is False and replay.active  # partials and info pass through
    assert [replay.handled(k) for k in (b, a)] == [True, False]  # b ends the recorded frames
    assert reconnect.Replay([]).handled(a) is False
    # A quiet spell ends the replay: the same words said later are a new turn.
    replay = reconnect.Replay([a, b], now=100.0)
    assert replay.handled(a, now=101.0) is True
    assert replay.handled(b, now=101.0 + reconnect.REPLAY_QUIET + 0.1) is False
    assert not replay.active


async def test_drain_hands_a_reconnectable_call_over_with_1012(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    llm = ScriptedLLM([Text("We move pianos.")])
    async with reconnecting(llm, RELAY_DRAIN_SECONDS="30") as relay:
        call = affinity(relay, relay.call(to="+61390001234"))
        await call.connect()
        assert (await call.say("What do you do?")).text == "We move pianos."
        drained = relay.runtime.drain.start()
        closed = await call.next_frame()  # None: the socket was closed, no `end` first
        await asyncio.wait_for(call._reader, 5)
        code = call._ws.close_code
        await asyncio.wait_for(drained, 10)
        await relay.session_closed()
        stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)
        handed = relay.runtime.drain.handed_over
    assert closed is None and code == reconnect.CLOSE_SERVICE_RESTART
    assert stored is not None and stored.status == "reconnecting"
    assert handed == 1


async def test_a_reconnect_at_once_waits_for_the_dropped_socket_and_a_plain_url_is_adopted(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    """The new socket comes before the server has finished with the old one (same process),
    and names no call: it sends no setup, on plain ``/ws`` (the one call awaiting a reconnect
    is adopted)."""
    llm = ScriptedLLM([ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]), Text(QUOTED)])
    with twilio_sms():
        async with reconnecting(llm) as relay:
            first = affinity(relay, relay.call(to="+61390001234"))
            await first.connect()
            assert (await first.say(ASK)).text == QUOTED
            relay.llm.push(Text(FREE))
            relay.llm.token_delay = 0.05
            await first.prompt("Is the morning free?")
            frame = await first.next_frame()
            assert frame is not None and frame["type"] == "text"
            await first.drop()
            second = relay.call(call_sid=first.call_sid, session_id=first.session_id)
            await second.connect()  # at once, with a setup: waits for the old session
            again = await second.reply()
            await second.drop()  # and dropped again
            await relay.session_closed(2)
            relay.llm.token_delay = 0.0

            third = relay.call(call_sid=first.call_sid)  # plain /ws, no setup
            relay.llm.push(Text(BYE))
            await third.connect(setup=False)
            await third.prompt("Is the morning free?")  # replayed: already answered
            bye = await third.say(THANKS)
            await third.close()
            await relay.session_closed(3)
            call = await repository.get_call(relay.runtime.deps.db, first.call_sid)
            requests = list(relay.llm.requests)

    assert again.text == FREE  # the whole reply: the old turn finished before the repeat
    assert bye.text == BYE
    assert users(requests[-1]) == [ASK, "Is the morning free?", THANKS]
    assert len(requests) == 4
    assert call is not None and call.reconnects == 2


async def test_when_twilio_gives_up_the_64105_action_still_reconnects_the_call(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    async with reconnecting(ScriptedLLM([Text("Hello there.")])) as relay:
        first = affinity(relay, relay.call(to="+61390001234"))
        await first.connect()
        await first.say("Hi")
        await first.drop()
        await relay.session_closed()
        response = await relay.post(
            "/handoff",
            {"AccountSid": TWILIO_SID, "CallSid": first.call_sid, "SessionId": first.session_id,
             "From": first.from_, "To": first.to, "SessionStatus": "failed", "ErrorCode": "64105",
             "CallStatus": "in-progress"},
        )  # fmt: skip
    element = ET.fromstring(response.text).find("Connect/ConversationRelay")
    assert element is not None and element.attrib["applicationReconnect"] == "true"
    assert element.attrib["url"].endswith(f"/ws/{first.call_sid}")
    params = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
    assert params["resumed"] == "1"


async def test_a_reply_cut_off_unfinished_is_asked_again_and_the_ledger_stops_a_second_booking(
    reconnecting: Callable[..., AbstractAsyncContextManager[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dropped socket's turn cannot finish in time: the new socket asks the model again
    for that same user message (once); its repeated book_move and send_quote_sms calls are
    answered from the idempotency ledger, not run again."""
    monkeypatch.setattr(reconnect, "FINISH_TURN_SECONDS", 0.2)
    llm = ScriptedLLM([ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]), Text(QUOTED)])
    with twilio_sms() as sms:
        async with reconnecting(llm) as relay:
            first = affinity(relay, relay.call(to="+61390001234"))
            await first.connect()
            assert (await first.say(ASK)).text == QUOTED
            qid = quote_id(relay.llm.requests[1])
            calls = ToolCalls([
                ToolCall("book_move", {"quote_id": qid, "date": TUESDAY, "window": "morning",
                                       "confirmed": True, "name": "Ann Lee"}),
                ToolCall("send_quote_sms", {"quote_id": qid}),
            ])  # fmt: skip
            relay.llm.push(calls, Stall(30.0, then=Text(BOOKED)))  # no words come in time
            await first.prompt(BOOK)
            db = relay.runtime.deps.db
            await until(lambda: ledger_done(db, first.call_sid, 2))  # booked and texted
            frame = await first.next_frame()  # a filler line while the model says nothing
            assert frame is not None and frame["type"] == "text"
            await first.drop()
            await relay.session_closed()
            relay.llm.push(calls, Text(BOOKED))  # the model, asked again, books again
            second = affinity(relay, relay.call(call_sid=first.call_sid, to=first.to))
            await second.connect()
            await second.prompt(BOOK)  # replayed
            again = await second.reply()
            await second.close()
            await relay.session_closed(2)
            bookings = await count(relay, Booking, first.call_sid)
            events = await kinds(relay, first.call_sid)
            requests = list(relay.llm.requests)

    assert again.text.endswith(BOOKED)
    assert bookings == 1 and sms.call_count == 1
    tool_answers = [m["content"] for m in requests[-1]["messages"] if m["role"] == "tool"]
    assert sum("Already done earlier in this call" in a for a in tool_answers) == 2
    assert users(requests[-1]) == [ASK, BOOK]
    assert len(requests) == 6  # 2 + 2, and the cut-off turn asked again once (2 rounds)
    cut = next(d for k, d in events if k == "reply_cut_off")
    assert cut["complete"] is False
    assert [k for k, _ in events].count("replay_skipped") == 1
