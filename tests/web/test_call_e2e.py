"""Whole calls, as Twilio makes them: the voice webhook, the ConversationRelay WebSocket, the
<Connect action> request after the session ends, and what is left in storage afterwards."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.storage import repository
from relay.storage.outcomes import get_analysis
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from tests.conftest import agent_toml, strip

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module
RELAY_DATABASES = ["sqlite", "postgres"]  # every call here runs on both (tests/conftest.py)

PERSON = "+61390001299"
TRANSFER_LINE = "No worries, I'll put you through to someone from our office now."
GOODBYE = "Thanks for calling Keystone Piano Movers. Have a lovely day!"
RESUME = "Sorry about that, I think we got cut off. Where were we?"
SERVICES = (
    "We move upright and grand pianos across Melbourne and regional Victoria, store them in a "
    "climate-controlled warehouse, and tune them once they arrive."
)
GREETING = "Thanks for calling Keystone Piano Movers, this is Kerry. Are you after a quote for a piano move, or can I help with something else?"


def action_form(call: Any, **fields: str) -> dict[str, str]:
    """The standard fields of Twilio's <Connect action> request for ``call``."""
    return {
        "AccountSid": "AC" + "0" * 32, "CallSid": call.call_sid, "SessionId": call.session_id,
        "From": call.from_, "To": call.to, "Direction": "inbound", "ApiVersion": "2010-04-01",
        "SessionDuration": "12", **fields,
    }  # fmt: skip


def conversation(request: dict[str, Any]) -> list[tuple[str, str]]:
    """Between the opening system messages (the agent's prompt, the call's facts) and the
    per-turn system message (last, issue 15)."""
    messages = request["messages"]
    assert messages[-1]["role"] == "system"
    opening = 2 if messages[1]["role"] == "system" and len(messages) > 2 else 1
    return [(m["role"], m.get("content") or "") for m in messages[opening:-1]]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["token"] for f in frames if f["type"] == "text")


async def hand_off(call: Any) -> dict[str, Any]:
    """After the agent's last line, report playback finished; return the ``end`` frame."""
    line = await call.next_frame()
    assert line is not None and line["type"] == "text" and line["last"] is True, line
    await call.info("agentSpeaking", "off")
    end = await call.next_frame()
    assert end is not None and end["type"] == "end", end
    return {"line": line, "end": end}


# -- handing the call over ---------------------------------------------------------------------


async def test_transfer_to_a_person(relay: Any) -> None:
    arguments = {
        "reason": "caller asked for a person",
        "summary": "Wants a crane lift for a grand piano.",
    }
    relay.llm.push(ToolCalls([ToolCall("transfer_to_person", arguments)]))
    call = relay.call()
    await call.connect()

    await call.prompt("Can I talk to a real person?")
    ended = await hand_off(call)
    await call.close()  # Twilio closes the socket after `end`
    await relay.session_closed()
    response = await relay.post(
        "/handoff",
        action_form(
            call,
            SessionStatus="ended",
            CallStatus="in-progress",
            HandoffData=ended["end"]["handoffData"],
        ),
    )
    await relay.runtime.deps.recorder.flush()
    stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    assert ended["line"]["token"] == TRANSFER_LINE
    handoff = orjson.loads(ended["end"]["handoffData"])  # a JSON *string*, as Twilio requires
    assert handoff["reasonCode"] == "live-agent-handoff"
    assert handoff["reason"] == arguments["reason"]
    assert handoff["summary"] == arguments["summary"]
    assert handoff["callSid"] == call.call_sid

    assert response.status_code == 200
    root = ET.fromstring(response.text)
    assert [c.tag for c in root] == ["Say", "Dial"]
    assert root[0].text == "Please hold while I connect you to the Keystone office."
    dial = root[1]
    assert dial.attrib["callerId"] == call.to
    assert [(n.tag, n.text) for n in dial] == [("Number", PERSON)]
    assert stored is not None
    assert (stored.outcome, stored.status) == ("transferred", "transferred")
    assert stored.handoff_data == ended["end"]["handoffData"]


async def test_keypad_zero_transfers_the_call(relay: Any) -> None:
    call = relay.call()
    await call.connect()

    await call.dtmf("0")
    ended = await hand_off(call)
    await call.close()
    await relay.session_closed()
    response = await relay.post(
        "/handoff",
        action_form(
            call,
            SessionStatus="ended",
            CallStatus="in-progress",
            HandoffData=ended["end"]["handoffData"],
        ),
    )

    assert ended["line"]["token"] == TRANSFER_LINE
    assert orjson.loads(ended["end"]["handoffData"])["reasonCode"] == "live-agent-handoff"
    assert relay.llm.requests == []  # the keypad needs no model
    dial = ET.fromstring(response.text).find("Dial")
    assert dial is not None and [n.text for n in dial.iter("Number")] == [PERSON]


async def test_keypad_zero_during_a_reply_stops_it_and_transfers(relay: Any) -> None:
    relay.use(ScriptedLLM([Text(SERVICES)], token_delay=0.03))
    call = relay.call()
    await call.connect()
    await call.prompt("What do you do?")
    first = await call.next_frame()
    await call.dtmf("0")
    frames = [first]
    while not (frames[-1]["type"] == "text" and frames[-1]["token"] == TRANSFER_LINE):
        frame = await call.next_frame()
        assert frame is not None
        frames.append(frame)
    await call.info("agentSpeaking", "off")
    end = await call.next_frame()

    reply, line = frames[:-1], frames[-1]
    # What was streamed of the answer is closed as a talk cycle of its own, then the line.
    assert reply[-1] == {**reply[-1], "type": "text", "token": "", "last": True}
    assert SERVICES.startswith(text_of(reply)) and text_of(reply) != SERVICES
    assert [f["last"] for f in reply] == [False] * (len(reply) - 1) + [True]
    assert line["last"] is True
    assert end is not None and end["type"] == "end"
    assert orjson.loads(end["handoffData"])["reasonCode"] == "live-agent-handoff"


async def test_end_call_says_goodbye_then_hangs_up(relay: Any) -> None:
    relay.llm.push(ToolCalls([ToolCall("end_call", {"reason": "caller said goodbye"})]))
    call = relay.call()
    await call.connect()

    await call.prompt("That's all, thanks. Bye!")
    ended = await hand_off(call)
    await call.close()
    await relay.session_closed()
    response = await relay.post(
        "/handoff",
        action_form(
            call,
            SessionStatus="ended",
            CallStatus="in-progress",
            HandoffData=ended["end"]["handoffData"],
        ),
    )
    stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    assert ended["line"] == {**ended["line"], "type": "text", "token": GOODBYE, "last": True}
    assert orjson.loads(ended["end"]["handoffData"]) == {
        "reasonCode": "end-call",
        "reason": "caller said goodbye",
    }
    root = ET.fromstring(response.text)
    assert [c.tag for c in root] == ["Hangup"]
    assert stored is not None and stored.outcome == "completed-by-agent"


async def test_the_caller_hanging_up_gets_an_empty_response(relay: Any) -> None:
    relay.llm.push(Text("Sure."))
    call = relay.call()
    await call.connect()
    await call.say("Hi")

    await call.close()
    await relay.session_closed()
    response = await relay.post(
        "/handoff", action_form(call, SessionStatus="completed", CallStatus="completed")
    )
    stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    root = ET.fromstring(response.text)
    assert root.tag == "Response" and list(root) == []
    assert stored is not None
    assert (stored.status, stored.outcome) == ("completed", "hung-up")
    assert stored.ended_at is not None


async def test_an_action_request_for_an_unknown_call_is_still_answered_with_twiml(
    relay: Any,
) -> None:
    response = await relay.post(
        "/handoff",
        {"CallSid": "CA-never-seen", "To": "+61390001234", "SessionStatus": "ended", "CallStatus": "in-progress",
         "HandoffData": "not json, but the caller wants a person"},
    )  # fmt: skip

    assert response.status_code == 200
    assert ET.fromstring(response.text).find("Dial") is not None


# -- a dropped socket ---------------------------------------------------------------------------


async def test_a_dropped_socket_reconnects_with_the_same_history(relay: Any) -> None:
    relay.llm.push(Text("An upright? Where from?"), Text("Brunswick to Geelong, got it."))
    first = relay.call()
    await first.connect()
    await first.say("I'd like a quote for an upright piano")

    await first.drop()
    await relay.session_closed()
    response = await relay.post(
        "/handoff",
        action_form(
            first,
            SessionStatus="failed",
            ErrorCode="64105",
            ErrorMessage="Websocket ended",
            CallStatus="in-progress",
        ),
    )
    root = ET.fromstring(response.text)
    connect = root.find("Connect")
    assert connect is not None and connect.attrib["action"] == relay.base_url + "/handoff"
    element = connect.find("ConversationRelay")
    assert element is not None
    host = relay.base_url.removeprefix("http://")
    assert element.attrib["url"] == f"wss://{host}/ws"
    assert element.attrib["welcomeGreeting"] == RESUME
    parameters = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
    assert parameters["resumed"] == "1"

    # Twilio opens a new session on the same call: same callSid, new sessionId.
    second = relay.call(call_sid=first.call_sid, custom_parameters=parameters)
    assert second.session_id != first.session_id
    await second.connect()
    reply = await second.say("From Brunswick to Geelong")
    await second.close()
    await relay.session_closed(2)
    sessions = await repository.call_sessions(relay.runtime.deps.db, first.call_sid)

    assert text_of(reply.frames) == "Brunswick to Geelong, got it."
    assert conversation(relay.llm.requests[-1]) == [
        ("assistant", GREETING),
        ("user", "I'd like a quote for an upright piano"),
        ("assistant", "An upright? Where from?"),
        ("assistant", RESUME),
        ("user", "From Brunswick to Geelong"),
    ]
    assert [(s.session_id, s.resumed) for s in sessions] == [
        (first.session_id, False),
        (second.session_id, True),
    ]


async def dropped_call(relay: Any) -> Any:
    """A call whose socket dropped (its session closed and recorded)."""
    call = relay.call()
    await call.connect()
    await call.drop()
    await relay.session_closed()
    return call


async def session_failed(relay: Any, call: Any, code: str, call_status: str = "in-progress") -> Any:
    """Twilio's ``<Connect action>`` request for a failed session of ``call``: its TwiML."""
    form = action_form(call, SessionStatus="failed", ErrorCode=code, CallStatus=call_status)
    return ET.fromstring((await relay.post("/handoff", form)).text)


async def test_a_call_that_switched_language_resumes_in_it(relay: Any) -> None:
    relay.llm.push(
        ToolCalls([ToolCall("switch_language", {"language": "it-IT"})]),
        Text("Certo!"),
        Text("Va bene."),
    )
    first = relay.call()
    await first.connect()
    await first.say("Parla italiano?")
    await first.drop()
    await relay.session_closed()

    root = await session_failed(relay, first, "64105")
    element = root.find("Connect/ConversationRelay")
    assert element is not None
    parameters = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
    second = relay.call(call_sid=first.call_sid, custom_parameters=parameters)
    await second.connect()
    spoken = await second.next_frame()
    reply = await second.say("Un pianoforte verticale")
    await second.close()
    await relay.session_closed(2)

    assert element.attrib["language"] == "it-IT"
    assert "ttsLanguage" not in element.attrib and "transcriptionLanguage" not in element.attrib
    assert strip([spoken]) == [
        {"type": "language", "ttsLanguage": "it-IT", "transcriptionLanguage": "it-IT"}
    ]
    assert text_of(reply.frames) == "Va bene."
    latest = relay.llm.requests[-1]["messages"][-1]["content"]
    assert "The call is now in it-IT; reply in that language." in latest


async def test_a_failed_session_on_a_finished_call_is_not_reconnected(relay: Any) -> None:
    call = await dropped_call(relay)

    root = await session_failed(relay, call, "64105", call_status="completed")

    assert list(root) == []


async def test_a_session_twilio_refused_is_not_reconnected_but_handed_to_the_person(
    relay: Any,
) -> None:
    # 64101: invalid TTS settings. A new session would fail the same way, for ever.
    call = await dropped_call(relay)

    root = await session_failed(relay, call, "64101")
    await relay.runtime.deps.recorder.flush()
    stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    assert root.find("Connect") is None
    dial = root.find("Dial")
    assert dial is not None and dial.findtext("Number") == "+61390001299"
    assert stored is not None and (stored.status, stored.outcome) == ("transferred", "transferred")


async def test_a_call_whose_sessions_keep_failing_is_reconnected_three_times(relay: Any) -> None:
    # 39001: the new socket never connects, so no session row shows the attempts.
    call = await dropped_call(relay)

    answers = [await session_failed(relay, call, "39001") for _ in range(4)]

    assert [a.find("Connect") is not None for a in answers] == [True, True, True, False]
    dial = answers[-1].find("Dial")
    assert dial is not None and dial.findtext("Number") == "+61390001299"


async def test_without_a_person_a_failing_call_ends_with_an_apology(
    start_relay: Any, tmp_path: Path
) -> None:
    prompts = tmp_path / "no-person"
    prompts.mkdir()
    profile = re.sub(r"^person_number = .*\n", "", agent_toml(), flags=re.M)
    (prompts / "piano-removals.toml").write_text(profile, encoding="utf-8")
    async with start_relay(RELAY_PROMPTS_DIR=str(prompts)) as relay:
        root = await session_failed(relay, await dropped_call(relay), "64106")

    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root.findtext("Say") == (
        "I'm sorry, we're having technical trouble. Please call back in a few minutes. Goodbye!"
    )


# -- the recording -----------------------------------------------------------------------------


async def test_every_frame_in_and_out_is_stored_with_turn_timings(relay: Any) -> None:
    relay.llm.push(
        Text("A grand piano? Lovely."),
        ToolCalls([ToolCall("switch_language", {"language": "it-IT"})]),
        Text("Certo!"),
    )
    call = relay.call()
    await call.connect()

    await call.prompt("I want to move a", last=False)
    await call.say("I want to move a grand piano")
    await call.send("garbage")
    await call.send({"type": "mystery", "x": 1})
    await call.dtmf("7")
    await call.info("agentSpeaking", "off")
    await call.say("Parla italiano?")
    await call.close()
    await relay.session_closed()

    db = relay.runtime.deps.db
    events = await repository.call_events(db, call.call_sid)
    stored_call = await repository.get_call(db, call.call_sid)
    sessions = await repository.call_sessions(db, call.call_sid)
    _, turns = await repository.call_history(db, call.call_sid)

    # Every frame, in order, exactly as it crossed the socket.
    frames_in = [e.data["raw"] for e in events if e.kind in ("frame_in", "frame_in_invalid")]
    assert frames_in == call.sent
    assert [e.kind for e in events if e.data.get("raw") == "garbage"] == ["frame_in_invalid"]
    frames_out = [orjson.loads(e.data["raw"]) for e in events if e.kind == "frame_out"]
    assert frames_out == call.received()
    assert {
        "type": "language",
        "ttsLanguage": "it-IT",
        "transcriptionLanguage": "it-IT",
    } in frames_out
    # Events are numbered in order within the session, and the session's end is recorded.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.session_id for e in events} == {call.session_id}
    assert events[-1].kind == "session_end"
    kinds = {e.kind for e in events}
    assert {"llm_request", "llm_response", "tool_call", "tool_result"} <= kinds
    requests = [e.data["body"] for e in events if e.kind == "llm_request"]
    assert [r["messages"] for r in requests] == [r["messages"] for r in relay.llm.requests]

    assert stored_call is not None
    assert stored_call.agent == "piano-removals"
    assert (stored_call.from_number, stored_call.to_number) == (call.from_, call.to)
    assert (stored_call.status, stored_call.outcome) == ("completed", "hung-up")
    assert stored_call.started_at is not None and stored_call.ended_at is not None
    assert stored_call.turns == len(turns)
    [session] = sessions
    assert session.session_id == call.session_id
    assert (session.frames_in, session.frames_out) == (len(call.sent), len(call.frames))
    assert session.close_code == 1000
    assert session.ended_at is not None

    assert [(t.seq, t.role) for t in turns] == [
        (0, "assistant"),
        (1, "user"),
        (2, "assistant"),
        (3, "user"),
        (4, "assistant"),
        (5, "tool"),
        (6, "assistant"),
    ]
    assert turns[2].content == "A grand piano? Lovely."
    assert (
        turns[4].tool_calls is not None
        and turns[4].tool_calls[0]["function"]["name"] == "switch_language"
    )
    assert turns[5].tool_call_id == turns[4].tool_calls[0]["id"]
    for user in (turns[1], turns[3]):
        assert user.prompt_received_at is not None
        assert user.lang == "en-AU"
    for prompt, answer in ((turns[1], turns[2]), (turns[3], turns[6])):
        assert answer.first_token_at is not None and answer.last_token_at is not None
        assert answer.llm_request_at is not None
        assert prompt.prompt_received_at is not None
        assert (
            prompt.prompt_received_at
            <= answer.llm_request_at
            <= answer.first_token_at
            <= answer.last_token_at
        )
        assert answer.first_token_ms is not None and answer.first_token_ms >= 0
        assert answer.first_frame_ms is not None and answer.first_frame_ms >= answer.first_token_ms
        assert answer.spoken_text == answer.content


async def test_the_caller_hanging_up_mid_reply_stops_the_turn(relay: Any) -> None:
    relay.use(ScriptedLLM([Text(SERVICES)], token_delay=0.03))
    call = relay.call()
    await call.connect()
    await call.prompt("What do you do?")
    first = await call.next_frame()

    await call.close()
    await relay.session_closed()
    stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)
    _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    assert first is not None and first["type"] == "text"
    assert stored is not None and (stored.status, stored.outcome) == ("completed", "hung-up")
    answer = turns[-1]
    assert answer.role == "assistant"
    assert SERVICES.startswith(answer.content) and answer.content != SERVICES


async def test_healthz_and_metrics(relay: Any) -> None:
    relay.llm.push(Text("Hi."))
    health = await relay.http.get(relay.base_url + "/healthz")
    before = (await relay.http.get(relay.base_url + "/metrics.json")).json()
    call = relay.call()
    await call.connect()
    await call.say("hello")
    during = (await relay.http.get(relay.base_url + "/metrics.json")).json()
    armed_during = relay.runtime.heap.armed
    await call.close()
    await relay.session_closed()
    after = (await relay.http.get(relay.base_url + "/metrics.json")).json()

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert before["active_sessions"] == 0
    assert during["active_sessions"] == 1
    assert during["sessions_total"] == before["sessions_total"] + 1
    assert after["active_sessions"] == 0
    assert after["sessions_total"] == before["sessions_total"] + 1
    assert after["recorder_pending"] == 0
    assert after["recorder_failures"] == 0
    for key in ("rss_kb", "max_rss_kb", "uptime_s"):
        assert isinstance(after[key], (int, float)) and after[key] >= 0
    # The worker's owed full collection waits while a call is live, and is set for when none is.
    assert not armed_during and relay.runtime.heap.armed
    assert len(after["gc_collections"]) == 3 and after["gc_middle_passes"] >= 0
    assert after["gc_idle_collections"] >= 0 and after["gc_idle_ms_total"] >= 0


async def test_metrics_count_the_calls_whose_post_call_work_is_pending(relay: Any) -> None:
    """``postcall_pending`` (what ``relay bench`` waits for before it reads a call's whole
    CPU): a call that has hung up counts until its outcomes and cost are stored."""
    postcall = relay.runtime.postcall
    assert postcall is not None
    relay.llm.push(Text("Hi."))
    for _ in range(postcall.concurrency):  # every slot taken: the pass waits for one
        await postcall._slots.acquire()
    try:
        call = relay.call()
        await call.connect()
        await call.say("hello")
        await call.close()
        await relay.session_closed()
        held = (await relay.http.get(relay.base_url + "/metrics.json")).json()
    finally:
        for _ in range(postcall.concurrency):
            postcall._slots.release()
    await postcall.idle()
    after = (await relay.http.get(relay.base_url + "/metrics.json")).json()

    assert held["postcall_pending"] == 1
    assert after["postcall_pending"] == 0
    assert await get_analysis(relay.runtime.deps.db, call.call_sid) is not None


async def test_without_speaker_events_the_line_gets_its_speaking_time_and_nothing_is_left_waiting(
    start_relay: Any,
) -> None:
    def quick_speech(runtime: Any) -> None:
        runtime.deps.speech_seconds = lambda text: 0.05

    llm = ScriptedLLM([ToolCalls([ToolCall("end_call", {"reason": "caller said goodbye"})])])
    async with start_relay(llm, configure=quick_speech) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("Bye!")
        line = await call.next_frame()
        end = await call.next_frame()  # no agentSpeaking "off" ever comes
        await call.close()
        await relay.session_closed()
        waiting = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Event.wait"]  # type: ignore[union-attr]

    assert line is not None and line["token"] == GOODBYE and line["last"] is True
    assert end is not None and end["type"] == "end"
    assert waiting == []
