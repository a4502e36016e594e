"""The event stream of a streamed chat completion: SSE framing, chunks, and their assembly.

:class:`SSEDecoder` turns the body's bytes, cut anywhere, into the ``data`` of each event;
:func:`parse_chunk` reads one ``data`` as a ``chat.completion.chunk``; :class:`ChunkAssembler`
folds the chunks into text deltas, complete tool calls, the finish reason and the usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson

from relay.errors import LLMError
from relay.llm.types import Done, ToolCall, Usage

_V = TypeVar("_V")

#: The longest SSE line accepted while it is still incomplete.
MAX_SSE_LINE: Final = 8 * 1024 * 1024


class SSEDecoder:
    """Decodes a server-sent-event stream from its bytes, as they arrive in any pieces.

    :meth:`feed` returns the ``data`` of each event completed by the bytes given: lines may
    be split anywhere across pieces and end in ``\\n``, ``\\r\\n`` or ``\\r``; an event ends
    at a blank line and its ``data:`` lines are joined with ``\\n`` (the SSE specification).
    Comments and the ``event``, ``id`` and ``retry`` fields are skipped: OpenAI-compatible
    chat streams carry everything in ``data``. An event left unfinished when the stream ends
    is dropped, as the specification says.
    """

    __slots__ = ("_data", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._pending + chunk if self._pending else chunk
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF: decide with the next piece
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop() + held
        if len(self._pending) > MAX_SSE_LINE:
            raise LLMError(
                f"the LLM stream sent a line longer than {MAX_SSE_LINE} bytes", kind="malformed"
            )
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return events


def parse_chunk(payload: bytes, *, retryable: bool = False) -> dict[str, Any]:
    """One ``data`` payload as a JSON object, or a ``malformed`` :class:`LLMError`."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise LLMError(
            f"unreadable stream chunk: {payload[:200]!r}", retryable=retryable, kind="malformed"
        ) from exc
    if not isinstance(chunk, dict):
        raise LLMError(
            f"unexpected stream chunk: {payload[:200]!r}", retryable=retryable, kind="malformed"
        )
    return chunk


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChunkAssembler:
    """Folds streamed chunks into text deltas and complete tool calls."""

    __slots__ = ("calls", "finish_reason", "text_chars", "usage")

    def __init__(self) -> None:
        self.calls: dict[int, _ToolCallParts] = {}
        self.finish_reason = ""
        self.usage: Usage | None = None
        self.text_chars: list[str] = []

    def feed(self, chunk: dict[str, Any]) -> tuple[str, bool]:
        """Returns (text, saw_tool_call) for one chunk. A chunk whose fields have the wrong
        types (a list for ``delta``, a number for ``content`` or a tool's ``name``...) raises a
        ``malformed`` :class:`LLMError`, retryable as an unreadable chunk is (the client retries
        only before the first token)."""
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise LLMError(f"server error in stream: {message}", kind="stream-broken")
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = Usage.from_wire(usage) or self.usage
        choices = chunk.get("choices")
        if not choices:
            return "", False
        choice = _typed(choices, list, "choices")[0]
        _typed(choice, dict, "choice")
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = _typed(reason, str, "finish_reason")
        delta = _typed(choice.get("delta") or {}, dict, "delta")
        saw_tool = False
        for part in _typed(delta.get("tool_calls") or [], list, "tool_calls"):
            saw_tool = True
            _typed(part, dict, "tool call")
            index = part.get("index")
            index = len(self.calls) if index is None else _typed(index, int, "tool call index")
            call = self.calls.setdefault(index, _ToolCallParts())
            if part.get("id"):
                call.id = _typed(part["id"], str, "tool call id")
            function = _typed(part.get("function") or {}, dict, "tool call function")
            if function.get("name"):
                call.name = _typed(function["name"], str, "tool name")
            if function.get("arguments"):
                call.arguments.append(_typed(function["arguments"], str, "tool arguments"))
        text = _typed(delta.get("content") or "", str, "content")
        if text:
            self.text_chars.append(text)
        return text, saw_tool

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=c.id or f"call_{i}", name=c.name, arguments="".join(c.arguments) or "{}")
            for i, c in sorted(self.calls.items())
        )

    def done(self, attempts: int, usage: Usage | None = None) -> Done:
        calls = self.tool_calls()
        reason = self.finish_reason or ("tool_calls" if calls else "stop")
        return Done(reason, calls, attempts, usage if usage is not None else self.usage)


def _typed(value: _V, kind: type[_V], what: str) -> _V:
    """``value`` when it is a ``kind``, else a ``malformed`` :class:`LLMError` naming ``what``."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LLMError(
            f"unexpected {what} in stream chunk: {value!r:.200}", retryable=True, kind="malformed"
        )
    return value
