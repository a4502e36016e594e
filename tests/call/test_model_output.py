"""What a misbehaving model sends is not passed on as it came: a broken tool call is kept out of
the requests that follow it (strict servers refuse its arguments and OpenAI its long id), and a
reply the server cut off (``finish_reason`` ``length`` or ``content_filter``) is a failed turn:
the caller hears the apology after the words already said, and the failure is counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import pytest

from relay.llm.types import ChatRequest, Done, TextDelta
from relay.storage import repository
from relay.testing import Text, ToolCall, ToolCalls
from relay.testing.openai_rules import check_chat_request
from tests.conftest import stored_events, strip

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module

APOLOGY = "Sorry, I've hit a snag on my end. Could you say that again for me?"
LONG_ID = "call_" + "z" * 60
BROKEN = '{"language": "Span'


def strict(body: Mapping[str, Any]) -> list[str]:
    """What a strict server refuses in ``body``: OpenAI's rules (``check_chat_request``), plus
    tool-call arguments that are not a JSON object (vLLM and SGLang ``json.loads`` the arguments
    of past calls and answer HTTP 400) and call ids longer than OpenAI's 40 characters."""
    refused = check_chat_request(body)
    problems = [refused["error"]["message"]] if refused else []
    for i, message in enumerate(body["messages"]):
        for j, call in enumerate(message.get("tool_calls") or []):
            if len(call["id"]) > 40:
                problems.append(f"messages[{i}].tool_calls[{j}].id longer than 40")
            try:
                arguments = orjson.loads(call["function"]["arguments"])
            except orjson.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                problems.append(f"messages[{i}].tool_calls[{j}].arguments not a JSON object")
        if len(message.get("tool_call_id") or "") > 40:
            problems.append(f"messages[{i}].tool_call_id longer than 40")
    return problems


def calls_and_answers(body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(role, call id, arguments or content) of the tool calls and tool messages of ``body``."""
    out = []
    for message in body["messages"]:
        for call in message.get("tool_calls") or []:
            out.append(("assistant", call["id"], call["function"]["arguments"]))
        if message["role"] == "tool":
            out.append(("tool", message["tool_call_id"], message["content"]))
    return out


# -- a broken tool call ------------------------------------------------------------------------


async def test_a_broken_tool_call_leaves_every_later_request_valid_on_a_strict_server(
    relay: Any,
) -> None:
    relay.llm.push(
        ToolCalls([ToolCall("switch_language", BROKEN, id=LONG_ID)]),
        Text("Which language would you like?"),
        Text("Sure, Spanish it is."),
    )
    call = relay.call()
    await call.connect()

    asked = await call.say("Can we talk in another language?")
    after = await call.say("Spanish please")
    await call.close()
    await relay.session_closed()
    _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)

    assert (asked.text, after.text) == ("Which language would you like?", "Sure, Spanish it is.")
    assert [strict(r) for r in relay.llm.requests] == [[], [], []]
    [(_, short, arguments), (_, answered, result)] = calls_and_answers(relay.llm.requests[1])
    assert len(short) <= 40 and answered == short and arguments == "{}"
    assert "The arguments for switch_language were not valid JSON" in result  # the answer says
    assert calls_and_answers(relay.llm.requests[2])[0] == ("assistant", short, "{}")
    # The stored row keeps what the model really wrote; the call and its answer share the id.
    [stored] = [t for t in turns if t.tool_calls]
    [answer] = [t for t in turns if t.role == "tool"]
    assert stored.tool_calls == [
        {"id": short, "type": "function", "function": {"name": "switch_language",
                                                       "arguments": BROKEN}},
    ]  # fmt: skip
    assert answer.tool_call_id == short


# -- a reply the server cut off ----------------------------------------------------------------


class CutModel:
    """A ChatModel streaming one scripted reply per request, each with its own finish reason."""

    def __init__(self, *replies: tuple[list[str], str]) -> None:
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Done]:
        self.requests.append(request)
        pieces, reason = self.replies.pop(0)
        for piece in pieces:
            yield TextDelta(piece)
        yield Done(reason)


def words(text: str) -> list[str]:
    """``text`` as a model streams it: each word with its leading space."""
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


async def test_a_reply_cut_at_max_tokens_or_by_a_content_filter_gets_the_apology(
    relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = CutModel(
        (words("The quote for your upright piano from Brunswick to"), "length"),
        (words("Sorry, which suburb was that?"), "stop"),
        (words("I can't"), "content_filter"),
        (words("Sorry about that."), "stop"),
    )
    monkeypatch.setattr(relay.runtime.deps, "llm", model)
    call = relay.call()
    await call.connect()

    truncated = await call.say("How much from Brunswick to Carlton?")
    await call.say("Pardon?")
    filtered = await call.say("Can you do it for free?")
    after = await call.say("Hello?")
    await call.close()
    await relay.session_closed()
    _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)
    failures = await stored_events(relay, call.call_sid, "llm_failure")

    # The word being written when the reply was cut ("to", "can't") is not said, as when a
    # stream breaks: it may be cut itself.
    cut = "The quote for your upright piano from Brunswick"
    assert truncated.text == f"{cut} {APOLOGY}"
    assert strip(truncated.frames)[-1] == {"type": "text", "token": " " + APOLOGY, "last": True}
    assert filtered.text == f"I {APOLOGY}"
    assert after.text == "Sorry about that."
    assert [(f["kind"], f["consecutive"]) for f in failures] == [("truncated", 1), ("filtered", 1)]
    assert [(t.content, t.error) for t in turns if t.role == "assistant" and t.error] == [
        (f"{cut} {APOLOGY}", "the model's reply was cut off at its token limit (length)"),
        (f"I {APOLOGY}", "the model's reply was stopped by a content filter (content_filter)"),
    ]
    counted = relay.runtime.deps.llm_failures.counts()
    assert counted.get("truncated", 0) >= 1 and counted.get("filtered", 0) >= 1
    history = [(m["role"], m.get("content")) for m in model.requests[1].messages[1:-1]]
    assert history[-2:] == [("assistant", f"{cut} {APOLOGY}"), ("user", "Pardon?")]


async def test_a_reply_the_word_limit_ended_is_not_a_failure_when_the_model_was_cut_too(
    relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relay's own limits: the speech filter ends a long reply at a sentence end (and closes
    the stream), so a model that would have run into ``max_tokens`` after it is no failure."""
    sentence = "We move pianos of every size all over town, carefully."  # 10 words
    model = CutModel((words(" ".join([sentence] * 12)), "length"))
    monkeypatch.setattr(relay.runtime.deps, "llm", model)
    call = relay.call()
    await call.connect()

    reply = await call.say("What do you do?")
    await call.close()
    await relay.session_closed()

    assert reply.text == " ".join([sentence] * 6)  # max_reply_words: 60
    assert await stored_events(relay, call.call_sid, "llm_failure") == []
