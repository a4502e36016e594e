"""A small, slow local model (Qwen2.5-Coder 1.5B on llama-server, as a tester ran it): a tool
call it writes as text is made as soon as its JSON closes, however long it then pads the reply
with newlines up to its token limit; and while it sends no token, the caller hears a filler
line again every so often, in a guard's re-ask round too.

Every test runs against a real relay (uvicorn, WebSocket) with a ChatModel of its own; waiting
is for frames, never for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.call import turn as turn_module
from relay.llm.types import ChatRequest, Done, TextDelta, ToolCall
from relay.storage import repository
from tests.call.test_guards import QUOTE, QUOTE_ARGS, tools, write_agent
from tests.conftest import stored_events, strip

#: The pause between two padding tokens: 10,000 of them would take over eight minutes.
PAD_DELAY = 0.05
#: The filler interval in these tests: long enough that no extra line comes while a released
#: model answers.
AGAIN = 0.5
BRIDGE = "Let me work out the exact price for you."
#: The shipped agent's filler lines, in the order a turn with seq 1 says them.
FILLERS = [
    "One moment while I check that. ",
    "Just a second, I'm looking that up. ",
    "Let me work that out for you. ",
]


@dataclass
class Reply:
    """One scripted answer: content deltas, then ``padding`` newline deltas (``PAD_DELAY``
    apart), then the finish; ``gate``, when given, is waited for before the first delta."""

    pieces: list[str]
    finish: str = "stop"
    calls: tuple[ToolCall, ...] = ()
    padding: int = 0
    gate: asyncio.Event | None = None


@dataclass
class SlowModel:
    """A ChatModel answering from a script, noting how much padding it sent and whether the
    session closed a stream before its end."""

    replies: list[Reply]
    requests: list[ChatRequest] = field(default_factory=list)
    padded: int = 0
    closed_early: list[int] = field(default_factory=list)  # the requests (1, 2, ...) cut short

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Done]:
        self.requests.append(request)
        reply = self.replies.pop(0)
        try:
            if reply.gate is not None:
                await reply.gate.wait()
            for piece in reply.pieces:
                yield TextDelta(piece)
            for _ in range(reply.padding):
                await asyncio.sleep(PAD_DELAY)
                yield TextDelta("\n")
                self.padded += 1
            yield Done(reply.finish, reply.calls)
        except GeneratorExit:
            self.closed_early.append(len(self.requests))
            raise


def words(text: str) -> list[str]:
    """``text`` as a model streams it: each word with its leading space."""
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def configure(model: SlowModel) -> Any:
    def apply(runtime: Any) -> None:
        tools(runtime)  # the call tools, and the piano tools with a quick fake quote
        runtime.deps.llm = model

    return apply


# -- a tool call written as text, padded to the token limit --------------------------------------


#: The quote call as a small model writes it, as text, without its last closing brace.
WRITTEN = '{"name": "quote_piano_move", "arguments": ' + orjson.dumps(QUOTE_ARGS).decode()


async def ask_price(start_relay: Any, model: SlowModel) -> tuple[Any, dict[str, list[Any]]]:
    """One caller asking for a price, against ``model``: the reply, and the call's
    ``tool_call``, ``llm_failure`` and ``llm_response`` events."""
    async with start_relay(configure=configure(model)) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much to move my upright from Brunswick to Geelong?")
        await call.close()
        await relay.session_closed()
        kinds = ("tool_call", "llm_failure", "llm_response")
        return reply, {kind: await stored_events(relay, call.call_sid, kind) for kind in kinds}


async def test_a_call_written_as_text_is_made_when_its_json_closes_not_after_the_padding(
    start_relay: Any, prompts_dir: Path
) -> None:
    """The tester's call: the price guard's re-ask (tool_choice named) answered with the call
    as text, then newlines until ``finish_reason: "length"``."""
    write_agent(prompts_dir)
    model = SlowModel(
        [
            Reply(words("The total price is $650 for that move.")),
            Reply([*words(WRITTEN), "}", "\n"], finish="length", padding=10_000),
            Reply(words("The total is $420.50 including GST.")),
        ]
    )
    reply, events = await ask_price(start_relay, model)
    made, failures, responses = events["tool_call"], events["llm_failure"], events["llm_response"]

    assert reply.text == f"The total price is {BRIDGE} The total is $420.50 including GST."
    # The re-ask's stream was closed right after the closing brace: no padding was waited for
    # (the first one, by the price guard).
    assert (model.closed_early, model.padded) == ([1, 2], 0)
    assert [(m["name"], orjson.loads(m["arguments"])) for m in made] == [
        ("quote_piano_move", QUOTE_ARGS)
    ]
    assert failures == []
    assert [(r["stop"], r["complete"], [c["name"] for c in r["tool_calls"]]) for r in
            responses[1:2]] == [("call", False, ["quote_piano_move"])]  # fmt: skip
    # The model is shown the call it wrote and the tool's answer.
    talk = [m for m in model.requests[2].messages if m["role"] in ("assistant", "tool")]
    [calls] = [m for m in talk if m.get("tool_calls")]
    assert [c["function"]["name"] for c in calls["tool_calls"]] == ["quote_piano_move"]
    assert talk[-1]["role"] == "tool" and talk[-1]["content"] == QUOTE


@pytest.mark.parametrize("tail", ["<|im_end|>", "}"])
async def test_a_token_limit_after_a_complete_call_written_as_text_is_no_failure(
    start_relay: Any, prompts_dir: Path, tail: str
) -> None:
    """A complete call followed by a stop token written out (the stream is read to its end), or
    by one brace too many, then the token limit: the call is made, and the limit is no
    truncation."""
    write_agent(prompts_dir)
    model = SlowModel(
        [
            Reply([WRITTEN + "}" + tail], finish="length"),
            Reply(words("The total is $420.50 including GST.")),
        ]
    )
    reply, events = await ask_price(start_relay, model)
    made, failures = events["tool_call"], events["llm_failure"]

    assert reply.text.endswith("The total is $420.50 including GST.")
    assert [m["name"] for m in made] == ["quote_piano_move"]
    assert failures == []


# -- the caller never waits in silence -----------------------------------------------------------


async def test_a_slow_first_token_gets_a_filler_line_again_and_again_each_a_different_one(
    start_relay: Any, prompts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_module, "FILLER_AGAIN_SECONDS", AGAIN)
    write_agent(prompts_dir, llm_filler_after=0.05, llm_turn_budget=60)
    gate = asyncio.Event()
    model = SlowModel([Reply(words("We move pianos of every size."), gate=gate)])
    async with start_relay(configure=configure(model)) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("What do you move?")
        waited = [await call.next_frame() for _ in range(4)]  # the model sends nothing yet
        gate.set()
        rest = await call.reply()
        await call.close()
        await relay.session_closed()
        fillers = await stored_events(relay, call.call_sid, "filler")
        _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    lines = [*FILLERS, FILLERS[0]]  # the first line as before, then the others in turn
    assert strip([f for f in waited if f is not None]) == [
        {"type": "text", "token": line, "last": False, "preemptible": True} for line in lines
    ]
    assert [f["line"] for f in fillers] == lines
    assert rest.text == "We move pianos of every size."
    # What the caller heard is the history: the lines, then the answer continuing them.
    said = [t for t in turns if t.role == "assistant"][-1]
    assert said.content == "".join(lines) + "We move pianos of every size."


async def test_a_slow_reask_after_a_guards_bridge_line_gets_a_filler_line(
    start_relay: Any, prompts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn_module, "FILLER_AGAIN_SECONDS", AGAIN)
    write_agent(prompts_dir, llm_filler_after=0.05, llm_turn_budget=60)
    gate = asyncio.Event()
    quote = ToolCall("call_q", "quote_piano_move", orjson.dumps(QUOTE_ARGS).decode())
    model = SlowModel(
        [
            Reply(words("The total price is $650 for that move.")),
            Reply([], finish="tool_calls", calls=(quote,), gate=gate),  # the slow re-ask
            Reply(words("The total is $420.50 including GST.")),
        ]
    )
    async with start_relay(configure=configure(model)) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("How much to move my upright from Brunswick to Geelong?")
        frames: list[dict[str, Any]] = []
        while not frames or FILLERS[0] not in frames[-1]["token"]:
            frame = await call.next_frame()
            assert frame is not None
            frames.append(frame)
        gate.set()
        rest = await call.reply()
        await call.close()
        await relay.session_closed()

    assert strip(frames[-2:]) == [
        {"type": "text", "token": " " + BRIDGE, "last": False, "preemptible": True},
        {"type": "text", "token": " " + FILLERS[0], "last": False, "preemptible": True},
    ]
    heard = "".join(f["token"] for f in frames) + rest.text
    assert heard == (f"The total price is {BRIDGE} {FILLERS[0]}The total is $420.50 including GST.")
