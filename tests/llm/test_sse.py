"""The chunks of a streamed chat completion, folded by :class:`ChunkAssembler`: a chunk that is
JSON but not the shape OpenAI's chunks have is a ``malformed`` stream, like one that is not JSON
(retried before the first token, the apology after it), never an internal error."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import LLMError
from relay.llm.sse import ChunkAssembler


def chunk(delta: Any, finish_reason: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def call(**fields: Any) -> dict[str, Any]:
    return {"index": 0, "id": "call_a", "type": "function"} | fields


WRONG_SHAPES = {
    "delta a list": chunk(["a", "b"]),
    "content a number": chunk({"content": 12345}),
    "tool_calls an object": chunk({"tool_calls": {"index": 0}}),
    "a tool call a string": chunk({"tool_calls": ["notadict"]}),
    "a tool call's index a string": chunk({"tool_calls": [call(index="0")]}),
    "a tool call's id a number": chunk({"tool_calls": [call(id=7)]}),
    "function a string": chunk({"tool_calls": [call(function="quote")]}),
    "a tool name a number": chunk({"tool_calls": [call(function={"name": 42})]}),
    "arguments an object": chunk(
        {"tool_calls": [call(function={"name": "quote", "arguments": {"a": 1}})]}
    ),
    "finish_reason a number": chunk({}, finish_reason=1),
    "choices an object": {"id": "x", "choices": {"delta": {"content": "Hi"}}},
    "a choice a string": {"id": "x", "choices": ["Hi"]},
}


@pytest.mark.parametrize("payload", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_chunk_of_the_wrong_shape_is_malformed(payload: dict[str, Any]) -> None:
    with pytest.raises(LLMError) as caught:
        ChunkAssembler().feed(payload)

    assert caught.value.kind == "malformed"
    assert caught.value.retryable  # before the first token (the client stops it after one)
    assert "chunk" in str(caught.value)


def test_chunks_of_the_right_shape_are_folded() -> None:
    assembler = ChunkAssembler()
    fed = [
        assembler.feed(chunk({"role": "assistant", "content": None})),
        assembler.feed(chunk({"content": "Let me check."})),
        assembler.feed(chunk({"tool_calls": [call(function={"name": "quote", "arguments": ""})]})),
        assembler.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})),
        assembler.feed(chunk({}, finish_reason="tool_calls")),
        assembler.feed({"id": "x", "choices": [], "usage": None}),
    ]

    assert fed == [("", False), ("Let me check.", False), ("", True), ("", True), ("", False),
                   ("", False)]  # fmt: skip
    done = assembler.done(1)
    assert (done.finish_reason, [(c.id, c.name, c.arguments) for c in done.tool_calls]) == (
        "tool_calls",
        [("call_a", "quote", "{}")],
    )
