"""One call session, turn by turn: streaming, partial prompts, interruptions, superseding
prompts, LLM failures, malformed frames and the keypad, over a real WebSocket to real uvicorn.

Waiting is always for a frame or an event, never for time: slow token pacing is used only to
make sure an interruption lands while a reply is still streaming.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from relay.llm.types import ChatRequest, Done, TextDelta
from relay.storage import repository
from relay.storage.models import Event
from relay.testing import Break, Fail, ScriptedLLM, Stall, Text, ToolCall, ToolCalls
from tests.conftest import strip

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module

GREETING = "Thanks for calling Keystone Piano Movers, this is Kerry. Are you after a quote for a piano move, or can I help with something else?"
APOLOGY = "Sorry, I've hit a snag on my end. Could you say that again for me?"
LAST = {"type": "text", "token": "", "last": True}
LONG = (
    "Grand pianos are the largest pianos we move, and they need a special board, three movers "
    "and a padded cover, so the price depends on the length of the piano and the stairs."
)


def tokens(frames: list[dict[str, Any]]) -> list[str]:
    """The text tokens of ``frames``, leaving out the empty closing one."""
    return [
        f["token"]
        for f in frames
        if f["type"] == "text" and not (f.get("last") and f["token"] == "")
    ]


def conversation(request: dict[str, Any]) -> list[tuple[str, str]]:
    """A request's messages between the opening system messages (the agent's prompt, then the
    call's facts) and the per-turn system message (the time, the language, the retrieved
    passages: always last, issue 15), as (role, content)."""
    messages = request["messages"]
    assert messages[0]["role"] == "system"
    assert messages[-1]["role"] == "system" and messages[-1]["content"].startswith(
        "Current date and time: "
    )
    opening = 2 if messages[1]["role"] == "system" and messages[1] is not messages[-1] else 1
    return [(m["role"], m.get("content") or "") for m in messages[opening:-1]]


def facts(request: dict[str, Any]) -> str:
    """The call's facts: the system message after the agent's prompt ("" when none)."""
    second = request["messages"][1]
    return second["content"] if second["role"] == "system" and len(request["messages"]) > 2 else ""


async def read_until_last(call: Any) -> list[dict[str, Any]]:
    """Frames up to and including the next ``text`` frame with ``last: true``."""
    frames = []
    while True:
        frame = await call.next_frame()
        assert frame is not None, "the socket closed"
        frames.append(frame)
        if frame["type"] == "text" and frame.get("last"):
            return frames


async def read_tokens(call: Any, count: int) -> list[dict[str, Any]]:
    frames = []
    while len(tokens(frames)) < count:
        frame = await call.next_frame()
        assert frame is not None and not frame.get("last"), frame
        frames.append(frame)
    return frames


# -- a reply ----------------------------------------------------------------------------------


async def test_a_prompt_is_answered_token_by_token_then_closed_with_last(relay: Any) -> None:
    relay.llm.push(Text("Hello there, how can I help?"))
    call = relay.call()
    await call.connect()

    reply = await call.say("hi")

    # Token by token until the reply has said a clause's end; then what one read of the stream
    # brings (here: the rest) is one piece (RELAY_LLM_READ_INTERVAL, relay.llm), which the
    # speech filter sends on word by word as words complete (the last one at the end).
    assert strip(reply.frames) == [
        {"type": "text", "token": "Hello", "last": False},
        {"type": "text", "token": " there, how can I", "last": False},
        {"type": "text", "token": " help?", "last": False},
        LAST,
    ]
    [request] = relay.llm.requests
    assert request["model"] == "gpt-4o-mini"
    assert request["stream"] is True
    assert conversation(request) == [("assistant", GREETING), ("user", "hi")]
    # The agent's prompt alone first (a chat template puts the tool schemas right after it: one
    # prefix for every caller), then the call's facts.
    assert "Keystone Piano Movers" in request["messages"][0]["content"]
    assert "+61412345678" not in request["messages"][0]["content"]
    assert facts(request) == "Caller ID: +61412345678."
    assert {t["function"]["name"] for t in request["tools"]} == {
        "transfer_to_person", "end_call", "switch_language", "send_digits", "collect_digits",
    }  # fmt: skip


async def test_tokens_are_sent_exactly_as_streamed(relay: Any) -> None:
    chunks = ["  Sure", ",", "   the", " piano", "\n", "is", " ", "fine", " .  "]
    relay.llm.push(Text("".join(chunks), chunks=chunks))
    call = relay.call()
    await call.connect()

    reply = await call.say("Is my piano okay?")

    # Word by word through the speech filter (issue 15): each word once it is complete (the
    # reply's first word as it is written), the line break a sentence end, spaces normalised.
    # After the first clause's end, the rest of the read is one piece (the paced stream).
    assert tokens(reply.frames) == ["Sure", ", the piano. is fine ."]
    assert strip(reply.frames)[-1] == LAST


async def test_the_history_grows_turn_by_turn(relay: Any) -> None:
    relay.llm.push(Text("A grand or an upright?"), Text("Lovely. Where from?"))
    call = relay.call()
    await call.connect()

    await call.say("I need a quote")
    await call.say("  A grand.  ")

    assert conversation(relay.llm.requests[1]) == [
        ("assistant", GREETING),
        ("user", "I need a quote"),
        ("assistant", "A grand or an upright?"),
        ("user", "  A grand.  "),
    ]


async def test_partial_prompts_are_recorded_but_not_answered(relay: Any) -> None:
    relay.llm.push(Text("Happy to help."))
    call = relay.call()
    await call.connect()

    await call.prompt("I'd", last=False)
    await call.prompt("I'd like a", last=False)
    reply = await call.say("I'd like a quote")
    await call.close()
    await relay.session_closed()

    assert tokens(reply.frames) == ["Happy", " to", " help."]
    [request] = relay.llm.requests
    assert conversation(request)[-1] == ("user", "I'd like a quote")
    events = await repository.call_events(relay.runtime.deps.db, call.call_sid)
    prompts = [
        orjson.loads(e.data["raw"])
        for e in events
        if e.kind == "frame_in" and '"prompt"' in e.data["raw"]
    ]
    assert [(p["voicePrompt"], p["last"]) for p in prompts] == [
        ("I'd", False), ("I'd like a", False), ("I'd like a quote", True),
    ]  # fmt: skip


async def test_an_empty_prompt_is_not_answered(relay: Any) -> None:
    relay.llm.push(Text("Yes?"))
    call = relay.call()
    await call.connect()

    await call.prompt("   ")
    reply = await call.say("Hello?")

    assert tokens(reply.frames) == ["Yes", "?"]  # the first word as written
    assert len(relay.llm.requests) == 1
    assert conversation(relay.llm.requests[0]) == [("assistant", GREETING), ("user", "Hello?")]


async def test_frames_before_setup_are_recorded_and_ignored(relay: Any) -> None:
    relay.llm.push(Text("Hi!"))
    call = relay.call()
    await call.connect(setup=False)

    await call.prompt("too early")
    await call.send_setup()
    reply = await call.say("now")
    await call.close()
    await relay.session_closed()

    assert tokens(reply.frames) == ["Hi", "!"]
    assert conversation(relay.llm.requests[0]) == [("assistant", GREETING), ("user", "now")]
    events = await repository.call_events(relay.runtime.deps.db, call.call_sid)
    assert [e.data["raw"] for e in events if e.kind == "frame_in"] == call.sent


async def test_a_session_closed_before_setup_is_still_recorded(relay: Any) -> None:
    call = relay.call()
    await call.connect(setup=False)
    garbage = f"not json {call.call_sid}"
    await call.send(garbage)
    await call.close()
    await relay.session_closed()
    await relay.runtime.deps.recorder.flush()  # (a session without setup does not flush itself)

    async with relay.runtime.deps.db.session() as session:
        rows = (await session.scalars(select(Event).where(Event.call_sid.like("unknown-%")))).all()
    [event] = [e for e in rows if e.data["raw"] == garbage]
    assert event.kind == "frame_in_invalid"
    assert "not JSON" in event.data["error"]


# -- interruptions and superseding prompts ------------------------------------------------------


async def test_an_interrupt_keeps_only_what_the_caller_heard(relay: Any) -> None:
    llm = relay.use(ScriptedLLM([Text(LONG), Text("It depends on the stairs.")], token_delay=0.03))
    call = relay.call()
    await call.connect()

    await call.prompt("Tell me about grand pianos")
    streamed = await read_tokens(call, 3)
    heard = "Grand pianos"
    await call.interrupt(heard, duration_ms=900)
    rest = await read_until_last(call)

    reply = await call.say("How much is it?")
    await call.close()
    await relay.session_closed()
    _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    said = tokens(streamed + rest)
    assert "".join(said) != LONG  # the interrupt landed mid-stream
    assert LONG.startswith("".join(said))
    assert strip(rest)[-1] == LAST  # the cancelled talk cycle is closed
    assert tokens(reply.frames) == ["It", " depends", " on", " the", " stairs."]
    assert conversation(llm.requests[-1]) == [
        ("assistant", GREETING),
        ("user", "Tell me about grand pianos"),
        ("assistant", heard),
        ("user", "How much is it?"),
    ]
    cut = turns[2]
    assert (cut.role, cut.content, cut.heard_text, cut.interrupted) == (
        "assistant",
        heard,
        heard,
        True,
    )
    assert LONG.startswith(cut.spoken_text) and len(cut.spoken_text) >= len(heard)


async def test_an_interrupt_with_nothing_heard_drops_the_reply_from_the_history(relay: Any) -> None:
    llm = relay.use(ScriptedLLM([Text(LONG), Text("Sorry, go on.")], token_delay=0.03))
    call = relay.call()
    await call.connect()

    await call.prompt("Tell me about grand pianos")
    await read_tokens(call, 1)
    await call.interrupt("", duration_ms=0)
    await read_until_last(call)
    await call.say("Wait, actually")

    assert conversation(llm.requests[-1]) == [
        ("assistant", GREETING),
        ("user", "Tell me about grand pianos"),
        ("user", "Wait, actually"),
    ]


async def test_an_interrupt_after_the_reply_was_sent_cuts_it_to_what_was_heard(relay: Any) -> None:
    relay.llm.push(Text("We move pianos. We also store them."), Text("Yes, we store them."))
    call = relay.call()
    await call.connect()

    await call.say("What do you do?")  # all sent; Twilio is still playing it
    await call.interrupt("We move pianos.")
    await call.say("Do you store them too?")

    assert conversation(relay.llm.requests[-1])[-2:] == [
        ("assistant", "We move pianos."),
        ("user", "Do you store them too?"),
    ]


KEYPAD_NINE = "To speak with our office, press zero. For a quote, press one, or just tell me about your piano."


async def test_a_second_interrupt_cuts_only_the_line_it_interrupted(relay: Any) -> None:
    """A barge-in on a line relay said on its own (the keypad's) cuts that line alone: the
    answer an earlier interrupt cut keeps what that interrupt said the caller heard, and an
    answer that played out keeps all of it."""
    relay.llm.push(Text("We move pianos. We also store them."), Text("Sure."))
    call = relay.call()
    await call.connect()

    await call.say("What do you do?")
    await call.interrupt("We move")
    await call.dtmf("9")
    assert tokens([await call.next_frame()]) == [KEYPAD_NINE]
    await call.interrupt("To speak with our")
    await call.say("A quote please")

    assert conversation(relay.llm.requests[-1])[-4:] == [
        ("user", "What do you do?"),
        ("assistant", "We move"),
        ("assistant", "To speak with our"),
        ("user", "A quote please"),
    ]
    await call.close()
    await relay.session_closed()
    _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)
    assert [(t.content, t.heard_text, t.interrupted) for t in turns if t.role == "assistant"][
        1:3
    ] == [("We move", "We move", True), ("To speak with our", "To speak with our", True)]


async def test_an_interrupt_of_a_keypad_line_leaves_the_answer_before_it_whole(
    relay: Any,
) -> None:
    relay.llm.push(Text("We move pianos."), Text("Sure."))
    call = relay.call()
    await call.connect()

    await call.say("What do you do?")  # played out: no interrupt
    await call.dtmf("9")
    assert tokens([await call.next_frame()]) == [KEYPAD_NINE]
    await call.interrupt("To speak")
    await call.say("A quote please")

    assert conversation(relay.llm.requests[-1])[-4:] == [
        ("user", "What do you do?"),
        ("assistant", "We move pianos."),
        ("assistant", "To speak"),
        ("user", "A quote please"),
    ]


async def test_a_newer_final_prompt_supersedes_the_running_turn(relay: Any) -> None:
    llm = relay.use(
        ScriptedLLM([Text(LONG), Text("Bravo reply."), Text("Charlie reply.")], token_delay=0.03)
    )
    call = relay.call()
    await call.connect()

    await call.prompt("Tell me about grand pianos")
    old = await read_tokens(call, 2)
    await call.prompt("Actually, what about uprights?")
    old += await read_until_last(call)
    new = await read_until_last(call)
    last = await call.say("And spinets?")

    assert strip(old)[-1] == LAST  # the old talk cycle is closed...
    assert LONG.startswith("".join(tokens(old)))
    assert "".join(tokens(old)) != LONG  # ...before the old reply was finished
    assert tokens(new) == ["Bravo", " reply."]
    assert tokens(last.frames) == ["Charlie", " reply."]  # nothing more of the old stream
    assert len(llm.requests) == 3
    history = conversation(llm.requests[1])
    assert [m for m in history if m[0] == "user"] == [
        ("user", "Tell me about grand pianos"),
        ("user", "Actually, what about uprights?"),
    ]
    assert history[-1] == ("user", "Actually, what about uprights?")


# -- failures -----------------------------------------------------------------------------------


async def test_an_llm_error_before_the_first_token_is_retried(relay: Any) -> None:
    relay.llm.push(Fail(500), Text("Got there in the end."))
    call = relay.call()
    await call.connect()

    reply = await call.say("Hello?")

    assert "".join(tokens(reply.frames)) == "Got there in the end."
    assert strip(reply.frames)[-1] == LAST
    assert len(relay.llm.requests) == 2
    assert relay.llm.requests[0]["messages"] == relay.llm.requests[1]["messages"]


async def test_an_llm_failure_mid_stream_ends_with_an_apology_and_the_call_goes_on(
    relay: Any,
) -> None:
    relay.llm.push(Break("Let me check the price for you.", after_chunks=3), Text("Sure thing."))
    call = relay.call()
    await call.connect()

    broken = await call.say("How much for a grand?")
    after = await call.say("A grand piano, please.")

    assert strip(broken.frames) == [
        {"type": "text", "token": "Let", "last": False},
        {"type": "text", "token": " me", "last": False},  # " check" was still being written
        {"type": "text", "token": " " + APOLOGY, "last": True},
    ]
    assert tokens(after.frames) == ["Sure", " thing."]
    assert len(relay.llm.requests) == 2  # a stream that had started is not retried
    assert conversation(relay.llm.requests[1])[-2:] == [
        ("assistant", "Let me " + APOLOGY),
        ("user", "A grand piano, please."),
    ]


async def test_an_llm_that_keeps_failing_gets_an_apology(start_relay: Any) -> None:
    llm = ScriptedLLM([Fail(503), Fail(503), Text("Back now.")])
    async with start_relay(llm, RELAY_LLM_MAX_RETRIES="1") as relay:
        call = relay.call()
        await call.connect()
        failed = await call.say("Hello?")
        after = await call.say("Hello again?")

    assert strip(failed.frames) == [{"type": "text", "token": APOLOGY, "last": True}]
    assert tokens(after.frames) == ["Back", " now."]
    assert conversation(llm.requests[-1])[-2:] == [("assistant", APOLOGY), ("user", "Hello again?")]


async def test_a_first_token_timeout_gets_an_apology(start_relay: Any) -> None:
    llm = ScriptedLLM([Stall(30, then=Text("Far too late.")), Text("I'm back.")])
    async with start_relay(
        llm, RELAY_LLM_FIRST_TOKEN_TIMEOUT="0.3", RELAY_LLM_MAX_RETRIES="0"
    ) as relay:
        call = relay.call()
        await call.connect()
        stalled = await call.say("Hello?")
        after = await call.say("Are you there?")
        await call.close()
        await relay.session_closed()
        _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    assert strip(stalled.frames) == [{"type": "text", "token": APOLOGY, "last": True}]
    assert "".join(tokens(after.frames)) == "I'm back."
    [apology] = [t for t in turns if t.error]
    assert (apology.role, apology.content) == ("assistant", APOLOGY)
    assert "no first token" in apology.error


@pytest.mark.parametrize(
    "bad",
    [
        "this is not JSON",
        "[1, 2, 3]",
        '{"type": "prompt", "lang": "en-AU", "last": true}',
        '{"type": "dtmf", "digit": "x"}',
        '{"type": "interrupt", "durationUntilInterruptMs": "soon"}',
        '{"type": "turnState", "state": "listening"}',
        '{"no": "type"}',
        "",
    ],
)
async def test_a_malformed_frame_mid_call_is_skipped_and_the_call_goes_on(
    relay: Any, bad: str
) -> None:
    relay.llm.push(Text("First."), Text("Still here."))
    call = relay.call()
    await call.connect()

    await call.say("one")
    await call.send(bad)
    reply = await call.say("two")

    assert tokens(reply.frames) == ["Still", " here."]
    assert conversation(relay.llm.requests[-1])[-1] == ("user", "two")


async def test_a_twilio_error_frame_does_not_end_the_call(relay: Any) -> None:
    relay.llm.push(Text("Okay."))
    call = relay.call()
    await call.connect()

    await call.send({"type": "error", "description": "Invalid message received, code: 64107"})
    reply = await call.say("Hello")

    assert tokens(reply.frames) == ["Okay", "."]


# -- the keypad -------------------------------------------------------------------------------


async def test_keypad_say_option(relay: Any) -> None:
    call = relay.call()
    await call.connect()

    await call.dtmf("9")
    frame = await call.next_frame()

    assert frame is not None
    assert strip([frame]) == [{
        "type": "text", "last": True,
        "token": "To speak with our office, press zero. For a quote, press one, or just tell me about your piano.",
    }]  # fmt: skip
    assert relay.llm.requests == []


async def test_keypad_prompt_option_starts_a_turn(relay: Any) -> None:
    relay.llm.push(Text("What kind of piano?"))
    call = relay.call()
    await call.connect()

    await call.dtmf("1")
    reply = await call.reply()

    assert tokens(reply.frames) == ["What", " kind", " of", " piano?"]
    assert conversation(relay.llm.requests[0])[-1] == (
        "user",
        "I'd like a quote for moving a piano.",
    )


async def test_an_unmapped_key_is_ignored(relay: Any) -> None:
    relay.llm.push(Text("Hi."))
    call = relay.call()
    await call.connect()

    await call.dtmf("7")
    reply = await call.say("hello")

    assert tokens(reply.frames) == ["Hi", "."]
    assert len(relay.llm.requests) == 1


@pytest.mark.parametrize(
    ("keys", "max_digits", "typed"), [("4821#", 6, "4821"), ("4827", 3, "482")]
)
async def test_collect_digits_hands_the_typed_digits_to_the_model(
    relay: Any, keys: str, max_digits: int, typed: str
) -> None:
    relay.llm.push(
        ToolCalls(
            [
                ToolCall(
                    "collect_digits", {"purpose": "booking reference", "max_digits": max_digits}
                )
            ],
            text="Please type it now.",
        ),
        Text("Found it."),
    )
    call = relay.call()
    await call.connect()

    asked = await call.say("I have a booking reference")
    for digit in keys:
        await call.dtmf(digit)
    reply = await call.reply()

    assert "".join(tokens(asked.frames)) == "Please type it now."
    assert strip(asked.frames)[-1] == LAST
    assert "".join(tokens(reply.frames)) == "Found it."
    assert (
        len(relay.llm.requests) == 2
    )  # a key after the last wanted digit is no digit (7 is unmapped)
    assert conversation(relay.llm.requests[-1])[-1] == (
        "user",
        f"(Typed on the keypad for booking reference: {typed})",
    )
    tool_messages = [m for m in relay.llm.requests[-1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1


async def test_send_digits_tool_sends_a_send_digits_frame(relay: Any) -> None:
    relay.llm.push(ToolCalls([ToolCall("send_digits", {"digits": "ww123#"})]), Text("Done."))
    call = relay.call()
    await call.connect()

    reply = await call.say("Press 123 hash for me")

    assert strip(reply.frames) == [
        {"type": "sendDigits", "digits": "ww123#"},
        {"type": "text", "token": "Done", "last": False},  # the first word as it is written
        {"type": "text", "token": ".", "last": False},
        LAST,
    ]
    tool_reply = [m for m in relay.llm.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_reply] == ["Pressed ww123#."]


async def test_switch_language_tool_sends_a_language_frame(relay: Any) -> None:
    relay.llm.push(
        ToolCalls([ToolCall("switch_language", {"language": "Spanish"})]),
        Text("¡Claro! ¿En qué puedo ayudarle?"),
    )
    call = relay.call()
    await call.connect()

    reply = await call.say("¿Habla español?")

    assert strip(reply.frames)[0] == {
        "type": "language",
        "ttsLanguage": "es-ES",
        "transcriptionLanguage": "es-ES",
    }
    assert "".join(tokens(reply.frames)) == "¡Claro! ¿En qué puedo ayudarle?"
    assert strip(reply.frames)[-1] == LAST
    assert "The call is now in es-ES" in relay.llm.requests[1]["messages"][-1]["content"]


async def test_an_unknown_tool_becomes_an_error_for_the_model(relay: Any) -> None:
    relay.llm.push(ToolCalls([ToolCall("launch_rocket", {})]), Text("I can't do that."))
    call = relay.call()
    await call.connect()

    reply = await call.say("Launch the rocket")

    assert "".join(tokens(reply.frames)) == "I can't do that."
    [tool_message] = [m for m in relay.llm.requests[1]["messages"] if m["role"] == "tool"]
    assert "no tool named launch_rocket" in tool_message["content"]


async def test_invalid_tool_arguments_become_an_error_for_the_model(relay: Any) -> None:
    relay.llm.push(
        ToolCalls([ToolCall("switch_language", '{"language": ')]), Text("Which language?")
    )
    call = relay.call()
    await call.connect()

    reply = await call.say("Switch language")

    assert "".join(tokens(reply.frames)) == "Which language?"
    [tool_message] = [m for m in relay.llm.requests[1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tool_message["content"]


# -- the caller lookup --------------------------------------------------------------------------


class GatedDirectory:
    """A caller directory whose answer waits until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.lookups: list[str] = []

    async def lookup(self, agent: Any, phone: str) -> dict[str, str]:
        self.lookups.append(phone)
        await self.gate.wait()
        return {"name": "Sarah Nguyen", "piano": "Yamaha U3"}


def turn_tasks() -> dict[str, asyncio.Task[Any]]:
    """The server's running turn tasks (the server runs in this event loop), by name."""
    return {t.get_name(): t for t in asyncio.all_tasks() if t.get_name().startswith("relay-turn-")}


def awaiting(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended inside the coroutine ``name``."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        if getattr(awaited, "__name__", "") == name:
            return True
        awaited = getattr(awaited, "cr_await", None)
    return False


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition()`` holds.

    The server's tasks run in this loop, so yielding lets them progress; this is a barrier on
    the server's internal state (which no frame reveals), not a clock.
    """
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - no event exists for this state
            await asyncio.sleep(0)


@pytest.mark.parametrize("cancel", ["newer prompt", "interrupt", "keypad"])
async def test_a_cancelled_turn_does_not_cancel_the_caller_lookup(
    start_relay: Any, cancel: str
) -> None:
    directory = GatedDirectory()
    llm = ScriptedLLM([Text("Hi Sarah, how can I help?")])
    async with start_relay(
        llm, configure=lambda runtime: setattr(runtime.deps, "directory", directory)
    ) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("Hello")
        # The first turn (its user message is seq 1) waits for the lookup...
        await until(lambda: any(awaiting(t, "customer") for t in turn_tasks().values()))
        # ...and is cancelled while it waits.
        if cancel == "newer prompt":
            await call.prompt("Hello, is that Keystone?")
        elif cancel == "interrupt":
            await call.interrupt("")
        else:
            await call.dtmf("9")
            said = await call.next_frame()
            assert said is not None and said["token"].startswith("To speak with our office")
        await until(lambda: "relay-turn-1" not in turn_tasks())
        if cancel != "newer prompt":
            await call.prompt("Hello, is that Keystone?")
        directory.gate.set()
        reply = await call.reply(timeout=5)

    assert "".join(tokens(reply.frames)) == "Hi Sarah, how can I help?"
    assert directory.lookups == [call.from_]
    [request] = llm.requests
    assert facts(request) == (
        f'Caller ID: {call.from_}. Known caller: {{"name":"Sarah Nguyen","piano":"Yamaha U3"}}'
    )
    assert conversation(request)[-1] == ("user", "Hello, is that Keystone?")


class SlowToStopModel:
    """A ChatModel whose first stream, once cancelled, takes until ``release`` to clean up (as a
    stream closing its connection can); later streams answer with the caller's last words."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stopping = asyncio.Event()
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Done]:
        self.requests.append(request)
        if len(self.requests) == 1:
            try:
                yield TextDelta("Let me think")
                await asyncio.Event().wait()  # never answers
            finally:
                self.stopping.set()
                await self.release.wait()
        said = request.messages[-2]["content"]  # the last is the per-turn system message
        yield TextDelta(f"You said {said}.")
        yield Done("stop")


async def test_a_turn_superseded_while_waiting_for_the_one_before_stays_cancelled(
    start_relay: Any,
) -> None:
    model = SlowToStopModel()
    async with start_relay(configure=lambda runtime: setattr(runtime.deps, "llm", model)) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("one")
        first = await call.next_frame()
        assert first is not None and first["token"] == "Let me"  # "think" held: no space yet

        await call.prompt("two")  # cancels turn one, which takes a while to stop...
        await asyncio.wait_for(model.stopping.wait(), 5)
        await until(lambda: any(inspect.getcoroutinestate(t.get_coro()) != inspect.CORO_CREATED
                                for name, t in turn_tasks().items() if name != "relay-turn-1"))  # fmt: skip
        await call.prompt("three")  # ...so turn two is superseded while it waits for it
        model.release.set()
        closed = await call.next_frame()
        reply = await call.reply(timeout=5)

    assert closed is not None and strip([closed]) == [LAST]  # turn one's talk cycle
    assert "".join(tokens(reply.frames)) == "You said three."
    assert [r.messages[-2]["content"] for r in model.requests] == ["one", "three"]


# -- behaviours added after review ------------------------------------------------------------


async def test_an_empty_model_reply_gets_the_apology_not_silence(relay: Any) -> None:
    relay.llm.push(Text(""))
    call = relay.call()
    await call.connect()

    reply = await call.say("hello?")

    assert reply.text == APOLOGY
    assert strip(reply.frames)[-1]["last"] is True


async def test_on_an_outbound_call_the_called_party_is_the_caller(relay: Any) -> None:
    relay.llm.push(Text("Hi!"))
    call = relay.call(from_="+61390001234", to="+61411000222", direction="outbound-api")
    await call.connect()

    await call.say("hello")

    system = facts(relay.llm.requests[-1])
    assert system == "Number called (an outbound call): +61411000222."


async def test_two_callers_requests_share_the_prompt_and_the_tool_schemas_as_one_prefix(
    relay: Any,
) -> None:
    """A chat template (Qwen's, as llama-server runs it) renders the tool schemas right after
    the first system message: with the caller's facts at the end of that message, a new
    caller's first request shared only the agent's prompt with the last caller's, and the
    server re-read ~2,100 tokens of schemas (79 % of the prompt, 80 s on two cores)."""
    import jinja2

    from relay import testing as relay_testing

    for caller in ("+61412345678", "+61498765432"):
        relay.llm.push(Text("Hi!"))
        call = relay.call(from_=caller)
        await call.connect()
        await call.say("hello")
        await call.close()
    first, second = relay.llm.requests[-2:]
    template = jinja2.Environment().from_string(
        (Path(relay_testing.__file__).parent / "qwen-tools.jinja").read_text()
    )
    a, b = (
        template.render(messages=r["messages"], tools=r["tools"], add_generation_prompt=True)
        for r in (first, second)
    )
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert a.index("</tools>") < shared  # the schemas are in the shared prefix
    assert a[shared:].startswith("12345678.") and b[shared:].startswith("98765432.")
    assert facts(first) == "Caller ID: +61412345678."


async def test_a_slow_tool_filler_is_kept_as_heard_speech(start_relay: Any) -> None:
    # A filler line is part of what the caller hears, so it belongs in the history.
    import dataclasses

    from relay.tools import ToolRegistry
    from relay.tools.calls import TOOLS

    async def slow_switch(ctx: Any, language: str) -> Any:
        await asyncio.sleep(0.2)  # makes the tool slow; nothing is timed
        return await original.function(ctx, language)

    original = next(t for t in TOOLS if t.name == "switch_language")
    slowed = [
        dataclasses.replace(original, function=slow_switch) if t is original else t for t in TOOLS
    ]

    def configure(runtime: Any) -> None:
        runtime.deps.tools = ToolRegistry(slowed)
        runtime.deps.filler_after = 0.01

    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("switch_language", {"language": "Spanish"})]),
            Text("Claro."),
            Text("Vale."),
        ]
    )
    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        first = await call.say("¿Hablas español?")
        filler = [f["token"] for f in first.frames if f.get("preemptible")]
        await call.say("Gracias")
        await call.close()

    assert filler, first.frames
    messages = llm.requests[-1]["messages"]
    spoken = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
    assert spoken and spoken[-1]["content"] == filler[0]


async def test_the_tool_of_an_interrupted_generation_never_runs(start_relay: Any) -> None:
    import dataclasses

    from relay.tools import ToolRegistry
    from relay.tools.calls import TOOLS

    ran: list[str] = []
    original = next(t for t in TOOLS if t.name == "end_call")

    async def counting_end_call(ctx: Any, reason: str) -> Any:
        ran.append(reason)
        return await original.function(ctx, reason)

    def configure(runtime: Any) -> None:
        runtime.deps.tools = ToolRegistry(
            [
                dataclasses.replace(t, function=counting_end_call) if t is original else t
                for t in TOOLS
            ]
        )

    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("end_call", {"reason": "caller is done"})], text=LONG),
            Text("Sure, go ahead."),
        ],
        token_delay=0.02,  # slow enough that the barge-in lands while the text is still streaming
    )
    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("That's all, thanks")
        heard = "".join(tokens(await read_tokens(call, 3)))
        await call.interrupt(heard)
        await read_until_last(call)  # the cancelled talk cycle is closed
        reply = await call.say("Actually, one more question")
        await call.close()

    assert reply.text == "Sure, go ahead."
    assert ran == []
    assert not any(f["type"] == "end" for f in call.frames)
    history = conversation(llm.requests[-1])
    assert ("assistant", heard) in history
    assert not any(m.get("tool_calls") for m in llm.requests[-1]["messages"])
