"""Mid-call configuration (issue 10 item 3): ``config`` and ``hints`` frames sent only for agents
with ``mid_call_config = true``, where they help the caller (relay.call.midcall)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.agents import AgentProfile
from relay.call.midcall import MidCall
from relay.domain.places import Gazetteer, Place
from relay.protocol import frames as protocol
from relay.testing import Text, ToolCall, ToolCalls

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module


def agent(**relay: Any) -> AgentProfile:
    keypad = relay.pop("keypad", {})
    return AgentProfile.model_validate(
        {
            "name": "test", "business_name": "Test", "system_prompt": "x", "welcome_greeting": "Hi",
            "keypad": keypad,
            "relay": {"report_input_during_agent_speech": "none", **relay},
        }
    )  # fmt: skip


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def __call__(self, frame: protocol.OutboundFrame) -> None:
        self.frames.append(orjson.loads(frame.to_json()))


def midcall(**relay: Any) -> tuple[MidCall, Sink]:
    sink = Sink()
    places = Gazetteer(
        [
            Place("Brunswick", "3056", "VIC", -37.77, 144.96),
            Place("Geelong", "3220", "VIC", -38.1, 144.3),
        ]
    )
    return MidCall(agent(**relay), sink, services={"places": places}), sink


async def test_nothing_is_sent_without_the_switch() -> None:
    mid, sink = midcall(hints="Keystone", readback_uninterruptible=True)

    mid.digits(True)
    mid.digits(False)
    mid.observe("tool_result", {"name": "quote_piano_move", "data": {"total": 650}})
    frame = mid.outbound(protocol.Text(token="Which suburb is it going to?", last=True))

    assert sink.frames == []
    # The read-back still cannot be interrupted, with the per-token field instead.
    assert frame.interruptible is False


async def test_dtmf_is_on_only_while_digits_are_collected() -> None:
    mid, sink = midcall(mid_call_config=True, dtmf_detection=False)

    mid.digits(True)
    assert sink.frames == [{"type": "config", "dtmfDetection": True}]
    mid.digits(False)
    assert sink.frames[-1] == {"type": "config", "dtmfDetection": False}
    assert len(sink.frames) == 2


@pytest.mark.parametrize(
    "relay",
    [
        {"dtmf_detection": True},
        {"keypad": {"0": {"action": "transfer"}}},
    ],
)
async def test_an_agent_with_dtmf_always_on_gets_no_dtmf_config(relay: dict[str, Any]) -> None:
    mid, sink = midcall(mid_call_config=True, **relay)

    mid.digits(True)
    mid.digits(False)

    assert sink.frames == []


async def test_a_price_read_back_cannot_be_interrupted() -> None:
    mid, sink = midcall(mid_call_config=True, readback_uninterruptible=True, interruptible="speech")

    filler = mid.outbound(protocol.Text(token="One moment.", preemptible=True))
    mid.observe("tool_result", {"name": "quote_piano_move", "data": {"total": 650}})
    first = mid.outbound(protocol.Text(token="That comes to six hundred and fifty dollars."))
    mid.outbound(protocol.Text(token="", last=True))
    assert sink.frames == [{"type": "config", "interruptible": "none"}]
    assert first.interruptible is None and filler.interruptible is None

    mid.agent_speaking(True)
    mid.agent_speaking(False)  # the read-back has played
    assert sink.frames[-1] == {"type": "config", "interruptible": "speech"}
    mid.prompt()
    assert len(sink.frames) == 2


async def test_a_failed_tool_is_not_a_read_back() -> None:
    mid, sink = midcall(mid_call_config=True, readback_uninterruptible=True)

    mid.observe("tool_result", {"name": "book_move", "data": {"error": "slot taken"}})
    mid.outbound(protocol.Text(token="Sorry, that slot has gone.", last=True))

    assert sink.frames == []


async def test_the_caller_speaking_ends_the_read_back() -> None:
    mid, sink = midcall(mid_call_config=True, readback_uninterruptible=True)

    mid.observe("tool_result", {"name": "lookup", "data": {"booking_ref": "KPM-1"}})
    mid.outbound(protocol.Text(token="Your reference is K P M one.", last=True))
    mid.prompt()

    assert sink.frames == [
        {"type": "config", "interruptible": "none"},
        {"type": "config", "interruptible": "any"},
    ]


async def test_place_names_are_hints_while_an_address_is_asked_for() -> None:
    mid, sink = midcall(mid_call_config=True, hints="Keystone,baby grand")

    mid.outbound(protocol.Text(token="Lovely. "))
    mid.outbound(protocol.Text(token="Which suburb is the piano in?"))
    assert sink.frames == []
    mid.outbound(protocol.Text(token="", last=True))
    mid.outbound(protocol.Text(token="And the address it's going to?", last=True))

    assert sink.frames == [
        {"type": "hints", "hints": "Brunswick,Geelong,Keystone,baby grand"},
    ]


async def test_a_refused_frame_type_is_not_sent_again() -> None:
    mid, sink = midcall(mid_call_config=True)

    mid.digits(True)
    mid.error(
        protocol.Error(
            description='Invalid message received, code: 64107, {"type":"config","dtmfDetection":true}'
        )
    )
    mid.digits(False)
    mid.digits(True)

    assert sink.frames == [{"type": "config", "dtmfDetection": True}]
    assert mid.refused == {"config"}


# -- through a real socket --------------------------------------------------------------------


async def test_collect_digits_turns_dtmf_on_and_off_over_the_socket(
    start_relay: Any, prompts_dir: Path
) -> None:
    profile = prompts_dir / "piano-removals.toml"
    text = profile.read_text(encoding="utf-8")
    text = re.sub(r"^\[keypad\.\d\]\n(?:[^\[\n].*\n)*", "", text, flags=re.M)
    text = text.replace("dtmf_detection = true", "dtmf_detection = false\nmid_call_config = true")
    profile.write_text(text, encoding="utf-8")

    async with start_relay() as relay:
        relay.llm.push(
            ToolCalls(
                [ToolCall("collect_digits", {"purpose": "booking reference", "max_digits": 4})],
                text="Please type it now.",
            ),
            Text("Found it."),
        )
        call = relay.call()
        await call.connect()

        asked = await call.say("I have a booking reference")
        for digit in "12#":
            await call.dtmf(digit)
        reply = await call.reply()

        sent = [{k: v for k, v in f.items() if k != "_t"} for f in asked.frames + reply.frames]
        configs = [f for f in sent if f["type"] == "config"]
        assert configs == [
            {"type": "config", "dtmfDetection": True},
            {"type": "config", "dtmfDetection": False},
        ]
        assert reply.text == "Found it."
