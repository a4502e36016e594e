"""Issue 15 over real WebSockets with the scripted model: what the caller hears is speech, an
amount of money no tool produced is never heard, a booking no tool made is never claimed, and
the requests keep a prefix a prompt cache can reuse."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.call.guards import states_price
from relay.services.retrieval import Retrieved
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from relay.tools import ToolContext, ToolRegistry, ToolResult
from relay.tools.calls import TOOLS as CALL_TOOLS
from relay.tools.piano import TOOLS as PIANO_TOOLS
from relay.tools.reference import TOOLS as REFERENCE_TOOLS
from tests.conftest import SHIPPED_AGENT, stored_events, write_profile

QUOTE = (
    "Quote Q100001: moving an upright piano from Brunswick to Geelong on Monday the 2nd of "
    "March 2026. The total is $420.50 including GST."
)
QUOTE_ARGS = {
    "piano_type": "upright",
    "pickup": "Brunswick",
    "dropoff": "Geelong",
    "move_date": "2026-03-02",
}
BOOK_ARGS = {
    "quote_id": "Q100001",
    "date": "2026-03-02",
    "window": "morning",
    "confirmed": True,
    "name": "Sam",
}


async def fake_quote(ctx: ToolContext, **_: Any) -> ToolResult:
    return ToolResult(QUOTE, data={"quote_id": "Q100001", "total_cents": 42050})


async def fake_book(ctx: ToolContext, **_: Any) -> ToolResult:
    return ToolResult(
        "Booked: reference 4 8 2 9 1 3.", data={"booking_ref": "482913", "quote_id": "Q100001"}
    )


def tools(runtime: Any) -> None:
    """The call tools, and the piano tools with quick fakes for the quote and the booking."""
    fakes = {"quote_piano_move": fake_quote, "book_move": fake_book}
    piano = [
        dataclasses.replace(t, function=fakes[t.name]) if t.name in fakes else t
        for t in PIANO_TOOLS
    ]
    runtime.deps.tools = ToolRegistry([*CALL_TOOLS, *piano])


def write_agent(prompts_dir: Path, *more_tools: str, **fields: Any) -> None:
    """The shipped piano agent with the quote and booking tools (and its [data] tables)."""
    text = SHIPPED_AGENT.read_text(encoding="utf-8")
    tools = ["quote_piano_move", "book_move", "transfer_to_person", "end_call", *more_tools]
    text = re.sub(r"^tools = \[.*?^\]", "tools = " + orjson.dumps(tools).decode(), text,
                  flags=re.S | re.M)  # fmt: skip
    write_profile(prompts_dir, text, **fields)


def said(frames: list[dict[str, Any]]) -> str:
    return "".join(f["token"] for f in frames if f["type"] == "text")


def history(request: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's messages between the system prompt and the per-turn system message."""
    messages = request["messages"]
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "system"
    return [(m["role"], m.get("content") or "") for m in messages[1:-1]]


# -- speech ------------------------------------------------------------------------------------


async def test_a_model_that_writes_lists_is_heard_as_sentences(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    reply_text = (
        "We move:\n\n- **upright** pianos\n- *grand* pianos 🎹\n\n## Next\n"
        "1. Tell me the suburbs\n2. Tell me the date"
    )
    llm = ScriptedLLM([Text(reply_text), Text("Sure.")])
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("What do you move?")
        await call.say("Okay.")
        await call.close()
        await relay.session_closed()

    heard = "We move: upright pianos, grand pianos. Next. Tell me the suburbs, Tell me the date"
    assert said(reply.frames) == heard
    for frame in reply.frames:
        assert not re.search(r"[\n*#`🎹]", frame["token"]), frame
    # The history keeps what the caller heard, not what the model wrote.
    assert history(llm.requests[1])[-2:] == [("assistant", heard), ("user", "Okay.")]


async def test_a_long_reply_is_cut_at_a_sentence_end(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir, max_reply_words=8)
    llm = ScriptedLLM([Text("One two three four five. Six seven eight nine. Ten eleven twelve.")])
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Tell me everything.")
    assert said(reply.frames) == "One two three four five. Six seven eight nine."
    assert reply.frames[-1]["last"] is True


# -- the price guard -----------------------------------------------------------------------


async def test_an_invented_price_is_never_heard_and_the_model_is_asked_again_with_the_quote_tool(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            Text("The total price is $650 for that move."),
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("The total is $420.50 including GST."),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much to move my upright from Brunswick to Geelong?")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "price_guard")
        [end] = await stored_events(relay, call.call_sid, "session_end")

    heard = said(reply.frames)
    assert "650" not in heard and "six hundred" not in heard.lower()
    bridge = [f for f in reply.frames if "exact price" in f["token"]]
    assert [{k: v for k, v in f.items() if k != "_t"} for f in bridge] == [
        {
            "type": "text",
            "token": " Let me work out the exact price for you.",
            "last": False,
            "preemptible": True,
        }
    ]
    assert heard == (
        "The total price is Let me work out the exact price for you. "
        "The total is $420.50 including GST."
    )
    first, reask, after = llm.requests
    assert "tool_choice" not in first
    assert reask["tool_choice"] == {"type": "function", "function": {"name": "quote_piano_move"}}
    assert "Call quote_piano_move now" in reask["messages"][-1]["content"]
    assert reask["tools"] == first["tools"]  # same schemas, byte for byte
    assert "tool_choice" not in after
    # What the model is shown of its own first answer is what the caller heard.
    assert ("assistant", "The total price is Let me work out the exact price for you.") in (
        history(reask)
    )
    assert guard == [{"blocked": "$650", "action": "re-ask", "tool": "quote_piano_move"}]
    assert end["guards"] == {"price": 1, "booking": 0, "message": 0, "echo": 0}


async def test_a_price_invented_twice_gets_the_safe_line(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [Text("That is $650."), Text("It comes to six hundred and fifty dollars."), Text("x")]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much?")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "price_guard")

    assert said(reply.frames) == (
        "That is Let me work out the exact price for you. It comes to I can't confirm that "
        "right now. Would you like me to take a message for the team?"
    )
    assert reply.frames[-1]["last"] is True
    assert len(llm.requests) == 2
    assert [g["action"] for g in guard] == ["re-ask", "fallback"]
    assert guard[1]["blocked"] == "six hundred and fifty dollars."


async def test_an_amount_a_tool_produced_is_heard(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("That comes to four hundred and twenty dollars and fifty cents."),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much?")
    assert said(reply.frames).endswith(
        "That comes to four hundred and twenty dollars and fifty cents."
    )
    assert len(llm.requests) == 2


# -- the booking guard ---------------------------------------------------------------------


async def test_a_booking_claim_without_a_booking_is_not_heard(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            Text("Great news, you're all booked for Friday morning!"),
            Text("Before I book it, can I read the details back to you?"),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Yes, book it.")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "booking_guard")
        [end] = await stored_events(relay, call.call_sid, "session_end")

    heard = said(reply.frames)
    assert "booked" not in heard
    assert heard == (
        "Great news, you're all Let me just confirm that booking. "
        "Before I book it, can I read the details back to you?"
    )
    assert llm.requests[1]["tool_choice"] == {"type": "function", "function": {"name": "book_move"}}
    assert guard == [
        {"blocked": "Great news, you're all booked", "action": "re-ask", "tool": "book_move"}
    ]
    assert end["guards"] == {"price": 0, "booking": 1, "message": 0, "echo": 0}


async def test_a_booking_a_tool_made_may_be_claimed(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("book_move", BOOK_ARGS, id="call_b")]),
            Text("You're all booked, your reference is 4 8 2 9 1 3."),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Yes, book it.")
    assert said(reply.frames).endswith("You're all booked, your reference is 4 8 2 9 1 3.")
    assert len(llm.requests) == 2


# -- a text or an e-mail no tool sent -------------------------------------------------------


async def failed_sms(ctx: ToolContext, **_: Any) -> ToolResult:
    return ToolResult(
        "The text could not be sent just now. Apologise, and offer to read the quote again.",
        data={"error": "Twilio answered 500"},
    )


async def sent_sms(ctx: ToolContext, **_: Any) -> ToolResult:
    return ToolResult(
        "Texted quote Q100001 to the caller's mobile. Tell them it should arrive in a moment.",
        data={"message_sid": "SM" + "0" * 32, "status": "queued"},
    )


def sms_tools(sms: Any) -> Any:
    """:func:`tools`, with ``sms`` as the quote's text."""

    def apply(runtime: Any) -> None:
        fakes = {"quote_piano_move": fake_quote, "book_move": fake_book, "send_quote_sms": sms}
        piano = [
            dataclasses.replace(t, function=fakes[t.name]) if t.name in fakes else t
            for t in PIANO_TOOLS
        ]
        runtime.deps.tools = ToolRegistry([*CALL_TOOLS, *piano])

    return apply


async def test_a_text_no_tool_sent_is_not_claimed(start_relay: Any, prompts_dir: Path) -> None:
    """A tester's call: Twilio answered 500, the tool said so, and the model said "Done, I have
    sent the quote to your mobile by text": it was heard in full (the guards covered prices
    and bookings only)."""
    write_agent(prompts_dir, "send_quote_sms")
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("send_quote_sms", {"quote_id": "Q100001"}, id="call_s")]),
            Text("Done, I have sent the quote to your mobile by text, it should arrive soon."),
            Text("Sorry, the text didn't go through. Shall I read the quote out instead?"),
        ]
    )
    async with start_relay(llm, configure=sms_tools(failed_sms)) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Can you text me the quote?")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "message_guard")
        [end] = await stored_events(relay, call.call_sid, "session_end")

    assert said(reply.frames) == (
        "Done, I have sent the quote to your Let me just check on that message. "
        "Sorry, the text didn't go through. Shall I read the quote out instead?"
    )
    assert "No text or e-mail has gone to the caller" in llm.requests[2]["messages"][-1]["content"]
    assert "tool_choice" not in llm.requests[2]  # sending again is the caller's call
    assert guard == [
        {"blocked": "Done, I have sent the quote to your mobile", "action": "re-ask", "tool": None}
    ]
    assert end["guards"] == {"price": 0, "booking": 0, "message": 1, "echo": 0}


async def test_a_text_a_tool_sent_may_be_claimed(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir, "send_quote_sms")
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("send_quote_sms", {"quote_id": "Q100001"}, id="call_s")]),
            Text("Done, I've texted you the quote, it should arrive in a moment."),
        ]
    )
    async with start_relay(llm, configure=sms_tools(sent_sms)) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Can you text me the quote?")
    assert said(reply.frames) == "Done, I've texted you the quote, it should arrive in a moment."
    assert len(llm.requests) == 2


# -- cache-friendly requests ---------------------------------------------------------------


async def test_every_request_extends_the_previous_one_and_the_cache_covers_it(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            Text("Hello, what piano is it?"),
            Text("An upright, lovely. Where from and to?"),
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("The total is $420.50 including GST."),
            Text("Is there anything else?"),
            Text("Bye now."),
        ]
    )
    lines = ["Hi there.", "An upright.", "Brunswick to Geelong.", "Great.", "No, bye."]
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        for line in lines:
            await call.say(line)
        await call.close()
        await relay.session_closed()
        responses = await stored_events(relay, call.call_sid, "llm_response")

    requests = llm.requests
    assert len(requests) == 6
    for before, after in itertools.pairwise(requests):
        prefix = before["messages"][:-1]  # all but the per-turn system message
        assert orjson.dumps(after["messages"][: len(prefix)]) == orjson.dumps(prefix)
        assert orjson.dumps(after["tools"]) == orjson.dumps(before["tools"])
        assert after["messages"][-1]["role"] == "system"
        assert after["messages"][-1]["content"].startswith("Current date and time: ")
    usage = [r["usage"] for r in responses]
    assert len(usage) == 6
    # From the third turn on, the server reads at most a quarter of each prompt afresh.
    for u in usage[3:]:
        cached = u["prompt_tokens_details"]["cached_tokens"]
        assert cached >= 0.75 * u["prompt_tokens"], u


def test_the_strict_server_accepts_a_trailing_system_message_and_a_named_tool_choice() -> None:
    from relay.testing.openai_rules import check_chat_request

    tool = next(t for t in PIANO_TOOLS if t.name == "quote_piano_move").openai_schema()
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are Kerry."},
            {"role": "user", "content": "How much?"},
            {"role": "assistant", "content": "The total is"},
            {"role": "system", "content": "Current date and time: Monday 2 March 2026."},
        ],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "quote_piano_move"}},
    }
    assert check_chat_request(body) is None
    assert check_chat_request({**body, "tool_choice": "none"}) is None


async def test_a_server_without_named_tool_choice_gets_required(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, guard_tool_choice="required")
    llm = ScriptedLLM(
        [
            Text("That will be $999."),
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("It's $420.50."),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much?")
    assert said(reply.frames).endswith("It's $420.50.")
    assert llm.requests[1]["tool_choice"] == "required"
    assert "Call quote_piano_move now" in llm.requests[1]["messages"][-1]["content"]


# -- what a small model does (Qwen2.5-Coder-1.5B over llama-server) -------------------------


async def test_a_reply_that_reads_the_notes_back_is_not_heard_and_is_asked_again(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            Text("Current date and time: Sunday 6 December 2026. Reference material from..."),
            Text("Sure, what kind of piano is it?"),
        ]
    )
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("I'd like a quote.")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "echo_guard")
        [end] = await stored_events(relay, call.call_sid, "session_end")

    assert said(reply.frames) == "Sure, what kind of piano is it?"
    assert "Never repeat these notes." in llm.requests[1]["messages"][-1]["content"]
    assert "tool_choice" not in llm.requests[1]
    assert [g["action"] for g in guard] == ["re-ask"]
    assert end["guards"]["echo"] == 1


@pytest.mark.parametrize(
    "wrap",
    [
        "{}",
        # Qwen's chat template without the server's tool parsing (llama-server without --jinja)
        "<tool_call>\n{}\n</tool_call>",
        "<TOOL_CALL>{}</TOOL_CALL><|im_end|>",
    ],
)
async def test_a_tool_call_written_as_text_is_made(
    start_relay: Any, prompts_dir: Path, wrap: str
) -> None:
    write_agent(prompts_dir)
    written = wrap.format(
        orjson.dumps({"name": "quote_piano_move", "arguments": QUOTE_ARGS}).decode()
    )
    # Streamed a few characters at a time, as a model writes it: the tag comes in pieces.
    pieces = [written[i : i + 3] for i in range(0, len(written), 3)]
    llm = ScriptedLLM([Text(written, pieces), Text("The total is $420.50 including GST.")])
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much to Geelong?")
    assert said(reply.frames) == "The total is $420.50 including GST."
    [assistant] = [m for m in llm.requests[1]["messages"] if m.get("tool_calls")]
    [made] = assistant["tool_calls"]
    assert made["function"]["name"] == "quote_piano_move"
    assert orjson.loads(made["function"]["arguments"]) == QUOTE_ARGS
    assert llm.requests[1]["messages"][-2] == {
        "role": "tool", "tool_call_id": made["id"], "content": QUOTE,
    }  # fmt: skip


# -- amounts from the business's documents -------------------------------------------------

INSURANCE = (
    "Reference material from the business's own documents.\n"
    "[insurance.md] Every move includes goods-in-transit insurance, covering up to $50,000 "
    "per piano."
)


class Documents:
    """A retriever that finds the insurance passage for every turn."""

    async def retrieve(self, agent: Any, query: str) -> Retrieved:
        return Retrieved(INSURANCE, [{"source": "insurance.md"}], 1.0)


def tools_and_documents(runtime: Any) -> None:
    tools(runtime)
    runtime.deps.retriever = Documents()


async def test_a_document_amount_said_as_the_jobs_price_is_not_heard(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM(
        [
            Text("The total price for the piano move is $50,000."),
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("Yes, it's insured up to $50,000. The total is $420.50 including GST."),
        ]
    )
    async with start_relay(llm, configure=tools_and_documents) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Do you have insurance for the piano while it's being moved?")
        await call.close()
        await relay.session_closed()
        guard = await stored_events(relay, call.call_sid, "price_guard")

    assert INSURANCE in llm.requests[0]["messages"][-1]["content"]  # the passage was retrieved
    assert said(reply.frames) == (
        "The total price for the piano move is Let me work out the exact price for you. "
        "Yes, it's insured up to $50,000. The total is $420.50 including GST."
    )
    assert llm.requests[1]["tool_choice"] == {
        "type": "function",
        "function": {"name": "quote_piano_move"},
    }
    assert guard == [{"blocked": "$50,000.", "action": "re-ask", "tool": "quote_piano_move"}]


async def fake_search(ctx: ToolContext, **_: Any) -> ToolResult:
    return ToolResult(INSURANCE)


def tools_and_search(runtime: Any) -> None:
    tools(runtime)
    search = dataclasses.replace(REFERENCE_TOOLS[0], function=fake_search)
    runtime.deps.tools.add(search)


async def test_an_amount_a_document_search_returned_is_not_heard_as_the_jobs_price(
    start_relay: Any, prompts_dir: Path
) -> None:
    """``search_knowledge`` returns the documents' words: its amounts are the documents'
    (said as what they are), not a price a tool worked out."""
    write_agent(prompts_dir)
    profile = prompts_dir / "piano-removals.toml"
    profile.write_text(
        profile.read_text(encoding="utf-8").replace(
            'tools = ["quote_piano_move",', 'tools = ["search_knowledge", "quote_piano_move",'
        ),
        encoding="utf-8",
    )
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("search_knowledge", {"query": "insurance"}, id="call_s")]),
            Text("The total price for the piano move is $50,000."),
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS, id="call_q")]),
            Text("Our insurance covers up to $50,000. The total is $420.50 including GST."),
        ]
    )
    async with start_relay(llm, configure=tools_and_search) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("What would the move cost, and is it insured?")

    assert said(reply.frames).endswith(
        "Let me work out the exact price for you. "
        "Our insurance covers up to $50,000. The total is $420.50 including GST."
    )
    assert llm.requests[2]["tool_choice"] == {
        "type": "function",
        "function": {"name": "quote_piano_move"},
    }


@pytest.mark.parametrize(
    ("before", "price"),
    [
        ("The total price for the piano move is", True),
        ("Your quote comes to", True),
        ("It costs", True),
        ("So that\u2019s", True),
        ("For a grand it'll be", True),
        ("You'd pay", True),
        ("Our insurance covers up to", False),
        ("Yes, cover is", False),
        ("Yes, it's insured up to", False),
        ("If your piano is worth more than", False),
    ],
)
def test_which_sentences_state_the_callers_price(before: str, price: bool) -> None:
    assert states_price(before.split()) is price


@pytest.mark.parametrize(
    "reply",
    [
        "Yes. Our insurance covers up to $50,000 per piano.",
        "Yes, cover is $50,000 per piano, and it's insured from door to door.",
    ],
)
async def test_a_document_amount_said_as_what_it_is_is_heard(
    start_relay: Any, prompts_dir: Path, reply: str
) -> None:
    write_agent(prompts_dir)
    llm = ScriptedLLM([Text(reply)])
    async with start_relay(llm, configure=tools_and_documents) as relay:
        call = relay.call()
        await call.connect()
        heard = await call.say("Do you have insurance for the piano while it's being moved?")
    assert said(heard.frames) == reply
    assert len(llm.requests) == 1


# -- chat-template tags --------------------------------------------------------------------


async def test_a_chat_template_tag_the_model_echoes_is_not_heard_nor_stored(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir)
    reply_text = "<tool_response>\nThe earliest free times are Wednesday.<|im_end|>"
    chunks = ["<", "tool", "_response", ">\n", "The", " earliest free times", " are", " Wednesday.",
              "<|", "im_end", "|>"]  # fmt: skip
    llm = ScriptedLLM([Text(reply_text, chunks=chunks), Text("Sure.")])
    async with start_relay(llm, configure=tools) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("When can you come?")
        await call.say("Okay.")
        await call.close()
        await relay.session_closed()

    heard = "The earliest free times are Wednesday."
    assert said(reply.frames) == heard
    assert history(llm.requests[1])[-2:] == [("assistant", heard), ("user", "Okay.")]
