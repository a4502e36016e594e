"""How a call ends on its own, and what its summary counts: a caller who goes quiet is asked
once whether they are still there, then told goodbye and the call ended; interrupts whose
utterance is only a backchannel are counted. Also the session's own limits: a bounded buffer
before ``setup`` and a late close that leaves a live call alone.

The agent's silence is shortened in its profile and speech is made instant, so the waits are
for frames (with a time limit), never for time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from relay.call.ending import is_backchannel
from relay.storage import repository
from relay.storage.models import Event
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from tests.call.test_transcript import SlowTool
from tests.conftest import agent_toml, stored_events, strip, write_profile

#: Tests using the shared ``relay`` fixture run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")

STILL_THERE = "Are you still there?"
TRANSFER_LINE = "No worries, I'll put you through to someone from our office now."
GOODBYE = "I'll let you go now. Please call back any time. Goodbye!"


def write_agent(prompts_dir: Path, **fields: Any) -> None:
    write_profile(prompts_dir, agent_toml(), **fields)


def instant_speech(runtime: Any) -> None:
    runtime.deps.speech_seconds = lambda text: 0.0


async def test_a_silent_caller_is_asked_once_then_told_goodbye_and_the_call_ends(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, silence_timeout=0.2)
    async with start_relay(configure=instant_speech) as relay:
        call = relay.call()
        await call.connect()  # the greeting is said; then nothing from the caller
        asked = await call.next_frame()
        goodbye = await call.next_frame()
        end = await call.next_frame()
        await call.close()
        await relay.session_closed()
        row = await repository.get_call(relay.runtime.deps.db, call.call_sid)
        silent = await stored_events(relay, call.call_sid, "caller_silent")
        _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    assert strip([asked, goodbye]) == [
        {"type": "text", "token": STILL_THERE, "last": True},
        {"type": "text", "token": GOODBYE, "last": True},
    ]
    assert end is not None and end["type"] == "end"
    assert orjson.loads(end["handoffData"]) == {"reasonCode": "end-call", "reason": "caller-silent"}
    assert row is not None and row.outcome == "caller-silent"
    assert [e["action"] for e in silent] == ["re-prompt", "end"]
    assert [t.content for t in turns if t.role == "assistant"][-2:] == [STILL_THERE, GOODBYE]


async def test_a_caller_who_answers_the_re_prompt_carries_on(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, silence_timeout=0.5)  # long enough to answer before the goodbye
    llm = ScriptedLLM([Text("Great. How can I help?")])
    async with start_relay(llm, configure=instant_speech) as relay:
        call = relay.call()
        await call.connect()
        asked = await call.next_frame()
        reply = await call.say("Yes, sorry, I'm here")
        asked_again = await call.next_frame()  # silent again: asked again, not told goodbye

    assert asked is not None and asked["token"] == STILL_THERE
    assert reply.text == "Great. How can I help?"
    assert asked_again is not None and asked_again["token"] == STILL_THERE


async def test_with_speaker_events_silence_counts_from_the_end_of_playback(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, silence_timeout=0.2)
    llm = ScriptedLLM([Text("Sure.")])

    def slow_speech(runtime: Any) -> None:
        runtime.deps.speech_seconds = lambda text: 60.0  # the estimate would wait a minute

    async with start_relay(llm, configure=slow_speech) as relay:
        call = relay.call()
        await call.connect()
        await call.info("agentSpeaking", "on")
        reply = await call.say("Hello")
        await call.info("agentSpeaking", "off")  # Twilio: playback finished
        asked = await call.next_frame()

    assert reply.text == "Sure."
    assert asked is not None and asked["token"] == STILL_THERE


async def test_the_off_of_interrupted_speech_does_not_cut_the_transfer_line(
    start_relay: Any,
) -> None:
    """Keypad 0 mid-reply: Twilio stops the reply (an interrupt) and its "off" may come after
    relay has queued the transfer line. That "off" is the old speech's: ``end`` waits for the
    line's own "on" and "off" (or the time it takes to say), or Twilio would close the call
    before the line is heard."""
    llm = ScriptedLLM([Text("We move pianos of every kind, " * 20)], token_delay=0.03)

    def slow_speech(runtime: Any) -> None:
        runtime.deps.speech_seconds = lambda text: 60.0  # only the speaker events can end it

    async with start_relay(llm, configure=slow_speech) as relay:
        call = relay.call()
        await call.connect()
        await call.info("agentSpeaking", "on")
        await call.prompt("What do you do?")
        assert (await call.next_frame())["type"] == "text"
        await call.dtmf("0")
        await call.interrupt("We move")
        frame = await call.next_frame()
        while frame["token"] != TRANSFER_LINE:
            frame = await call.next_frame()
        await call.info("agentSpeaking", "off")  # the stopped reply's, late
        db = relay.runtime.deps.db
        while not [
            e for e in await repository.call_events(db, call.call_sid) if '"off"' in str(e.data)
        ]:
            await relay.runtime.deps.recorder.flush()
        await relay.runtime.deps.recorder.flush()  # and whatever that "off" set going
        before = [e.kind for e in await repository.call_events(db, call.call_sid)]
        await call.info("agentSpeaking", "on")  # the line plays...
        await call.info("agentSpeaking", "off")  # ...and is over
        end = await call.next_frame()
        await call.close()
        await relay.session_closed()

    assert end is not None and end["type"] == "end"
    # Nothing was sent after the stale "off" was received (an end would be a frame_out).
    assert before[-1] == "frame_in" and before.count("frame_out") == [
        f["type"] for f in call.frames
    ].index("end")


async def test_no_re_prompt_while_the_caller_types_digits(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, silence_timeout=0.1)
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("collect_digits", {"purpose": "booking reference"})]),
            Text("Thanks, found it."),
        ]
    )

    def configure(runtime: Any) -> None:
        instant_speech(runtime)
        runtime.deps.digit_pause = 0.5  # longer than the silence timeout

    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        await call.say("My booking reference?")  # the talk cycle closes: digits are awaited
        await asyncio.sleep(0.4)  # gives a wrong re-prompt its chance; nothing is timed
        await call.dtmf("4")
        await call.dtmf("2")
        await call.dtmf("#")
        reply = await call.reply()

    assert reply.text == "Thanks, found it."
    assert STILL_THERE not in [f.get("token") for f in call.frames]


@shared
async def test_backchannel_interrupts_are_counted_in_the_call_summary(relay: Any) -> None:
    relay.llm.push(Text("We move pianos."), Text("And we store them."), Text("Yes."))
    call = relay.call()
    await call.connect()
    await call.say("What do you do?")
    await call.interrupt("We move")
    await call.say("uh-huh")
    await call.interrupt("And we")
    await call.say("Do you go to Geelong?")
    await call.close()
    await relay.session_closed()

    backchannel = await stored_events(relay, call.call_sid, "backchannel_interrupt")
    [end] = await stored_events(relay, call.call_sid, "session_end")
    assert backchannel == [{"utterance": "uh-huh"}]
    assert (end["interrupts"], end["backchannel_interrupts"]) == (2, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uh-huh", True),
        ("Yeah, okay.", True),
        ("mm", True),
        ("I see", True),
        ("Mm-hmm, right", True),
        ("yeah but how much", False),
        ("wait", False),
        ("", False),
    ],
)
def test_backchannel_detection(text: str, expected: bool) -> None:
    assert is_backchannel(text) is expected


@shared
async def test_frames_before_setup_are_kept_up_to_a_limit(relay: Any) -> None:
    relay.llm.push(Text("Hi."))
    call = relay.call()
    await call.connect(setup=False)
    for n in range(100):
        await call.send({"type": "info", "name": "noise", "value": str(n)})
    await call.send_setup()
    reply = await call.say("Hello")
    await call.close()
    await relay.session_closed()

    async with relay.runtime.deps.db.session() as session:
        kinds = (
            await session.scalars(select(Event.kind).where(Event.call_sid == call.call_sid))
        ).all()
    assert reply.text == "Hi."
    assert kinds.count("frame_in") == 64 + 2  # 64 kept before setup; the setup and the prompt
    assert await stored_events(relay, call.call_sid, "pre_setup_dropped") == [{"frames": 36}]


@shared
async def test_a_late_close_of_an_old_socket_leaves_the_live_call_alone(relay: Any) -> None:
    relay.llm.push(Text("Hello again."))
    old = relay.call()
    await old.connect()
    new = relay.call(call_sid=old.call_sid)  # Twilio reconnected the call on a new socket
    await new.connect()
    reply = await new.say("Are you there?")
    await old.close()  # ...and the old socket's close arrives late
    await relay.session_closed(1)
    live = await repository.get_call(relay.runtime.deps.db, old.call_sid)
    await new.close()
    await relay.session_closed(2)
    ended = await repository.get_call(relay.runtime.deps.db, old.call_sid)

    assert reply.text == "Hello again."
    assert live is not None and (live.status, live.outcome, live.ended_at) == (
        "in-progress",
        None,
        None,
    )
    assert ended is not None and (ended.status, ended.outcome) == ("completed", "hung-up")


async def test_a_newer_socket_of_a_call_closes_the_older_one_and_no_turn_is_lost(
    start_relay: Any,
) -> None:
    """Two sockets of one call answering at once would number their turns alike and
    overwrite each other's rows: the newer socket closes the older one (mid-reply here) and
    reads the history only once the older one's turn has stopped and been written."""
    llm = ScriptedLLM([Text("First caller, " + "a long answer " * 40), Text("Second, hello.")])
    llm.token_delay = 0.02
    async with start_relay(llm) as relay:
        old = relay.call()
        await old.connect()
        await old.prompt("first caller here")
        assert (await old.next_frame())["type"] == "text"  # the old socket is mid-reply
        new = relay.call(call_sid=old.call_sid)
        await new.connect()
        reply = await new.say("second caller here")
        await old.until_closed()  # the old socket is closed by relay
        await new.close()
        await relay.session_closed(2)
        _, turns = await repository.call_history(relay.runtime.deps.db, old.call_sid)
        kinds = await stored_events(relay, old.call_sid, "session_superseded")

    assert reply.text == "Second, hello."
    assert old._ws.close_code == 1000 and old._ws.close_reason == "superseded"
    assert kinds == [{"previous_session": old.session_id}]
    rows = [(t.seq, t.role, t.session_id) for t in turns]
    assert [seq for seq, _, _ in rows] == list(range(len(rows)))  # one numbering, no gap
    said = [(t.role, t.content) for t in turns if t.role == "user"]
    assert said == [("user", "first caller here"), ("user", "second caller here")]
    assert turns[-1].content == "Second, hello." and turns[-1].session_id == new.session_id


async def test_no_re_prompt_while_a_tool_runs(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir, silence_timeout=0.5)  # long enough to speak before it
    slow = SlowTool()
    llm = ScriptedLLM(
        [
            Text("Sure."),
            ToolCalls([ToolCall("switch_language", {"language": "Spanish"}, id="call_slow")]),
        ]
    )

    def configure(runtime: Any) -> None:
        slow.configure(runtime)
        instant_speech(runtime)

    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hi")  # a talk cycle ends: the silence timer is armed...
        await call.prompt("Spanish please")  # ...and this turn's tool never finishes
        await asyncio.wait_for(slow.started.wait(), 10)
        await call.info("agentSpeaking", "off")  # playback over: silence would count from here
        await asyncio.sleep(1.0)  # gives a wrong re-prompt its chance; nothing is timed
        said = [f.get("token") for f in call.frames]

    assert STILL_THERE not in said
