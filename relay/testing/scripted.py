"""A scripted, OpenAI-compatible chat-completions server for tests, demos and benchmarks.

Script the replies, point any OpenAI client at the server and assert on what it was sent::

    from relay.testing import FakeLLMServer, ScriptedLLM, Text, ToolCall, ToolCalls

    llm = ScriptedLLM([ToolCalls([ToolCall("get_weather", {"city": "Paris"})]), Text("Sunny.")])
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
        ...
    assert llm.requests[1]["messages"][-1]["role"] == "tool"

The server speaks the exact streaming wire format of OpenAI's ``/v1/chat/completions``: a
role chunk, content deltas, tool-call deltas whose JSON arguments arrive in small pieces, a
finish chunk, an optional usage chunk and ``data: [DONE]``. It also serves ``stream: false``
requests, ``GET /v1/models`` and ``GET /healthz``. ``relay bench`` uses it as the fake LLM, so
the per-request path is kept tiny: a raw ASGI app, orjson, and pre-encoded chunk envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from itertools import chain
from types import TracebackType
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.heap import settle_heap
from relay.testing.openai_rules import check_chat_request

__all__ = [
    "Break",
    "Fail",
    "FakeLLMServer",
    "JSONBody",
    "Malformed",
    "NoDone",
    "Redirect",
    "Reply",
    "ScriptedLLM",
    "Stall",
    "Text",
    "ToolCall",
    "ToolCalls",
    "echo_reply",
    "serve_fake_llm",
]

# A word with its leading whitespace, one punctuation mark with its leading whitespace, or
# trailing whitespace: the pieces always join back to the original text.
_TOKEN_RE: Final = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
# Tool-call arguments arrive in short pieces that cut through keys, values and punctuation,
# the way a model's tokens do, so clients have to assemble them.
_ARGUMENT_PIECE_RE: Final = re.compile(r"\w{1,8}|\W{1,3}")

_DONE: Final = b"data: [DONE]\n\n"
_SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
)
_JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_ECHO_TAIL: Final = " What else can I do for you?"
_ECHO_WORDS: Final = 8
_FILLER: Final = tuple(_TOKEN_RE.findall(" This is a scripted answer from the fake model."))
_MODEL_ID: Final = "relay-fake-llm"
#: How many first-token lateness records a server keeps (``ScriptedLLM.first_token_late``).
LATENESS_KEPT: Final = 100_000
_UVICORN_LOGGER: Final = "uvicorn.error"


# --- The script -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """Answer with text, streamed as one content delta per chunk.

    ``chunks`` fixes the deltas exactly; by default the text is cut into word-ish tokens that
    keep their leading whitespace (``"Hello there."`` gives ``["Hello", " there", "."]``).
    Nothing is ever trimmed: the deltas join back to ``text``.
    """

    text: str
    chunks: list[str] | None = None

    def __post_init__(self) -> None:
        if self.chunks is not None and "".join(self.chunks) != self.text:
            raise ValueError("Text.chunks must join back to Text.text exactly")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asks for.

    ``arguments`` is sent as compact JSON when it is a dict, or verbatim when it is a string
    (so a test can send malformed arguments). Without ``id`` a ``call_…`` id is generated.
    """

    name: str
    arguments: dict[str, Any] | str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """Answer with tool calls (finish reason ``tool_calls``), after optional ``text``."""

    calls: list[ToolCall]
    text: str = ""

    def __post_init__(self) -> None:
        if not self.calls:
            raise ValueError("ToolCalls needs at least one ToolCall")


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with an HTTP error before any token.

    ``body`` is the whole JSON body; by default it is OpenAI's error shape,
    ``{"error": {"message", "type", "param", "code"}}``, typed for the status. ``retry_after``
    (seconds) sets the ``retry-after`` and ``retry-after-ms`` headers that clients honour; a
    string is sent as ``Retry-After`` verbatim (an HTTP date), without ``retry-after-ms``.
    """

    status: int = 500
    body: dict[str, Any] | None = None
    retry_after: float | str | None = None

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"Fail.status must be an HTTP error status, not {self.status}")


@dataclass(frozen=True, slots=True)
class Break:
    """Start answering ``text``, then drop the connection after ``after_chunks`` content deltas.

    No finish chunk and no ``[DONE]`` are sent: the client sees a stream cut mid-way, as when
    an upstream LLM dies. A non-streaming request gets half of its JSON body instead.
    """

    text: str
    after_chunks: int

    def __post_init__(self) -> None:
        if self.after_chunks < 0:
            raise ValueError("Break.after_chunks must not be negative")


@dataclass(frozen=True, slots=True)
class Stall:
    """Wait ``seconds`` before the first byte (even the status line), then answer ``then``.

    Without ``then`` the request gets the script's default. A stall ends early, answering
    nothing, when the client hangs up, so first-token-timeout tests leave no work behind.
    """

    seconds: float
    then: Reply | None = None

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("Stall.seconds must not be negative")


@dataclass(frozen=True, slots=True)
class NoDone:
    """Stream ``reply`` with its finish chunk (and usage chunk when asked) but no
    ``data: [DONE]``: the body just ends, as some servers do. The answer is complete."""

    reply: Text | ToolCalls


@dataclass(frozen=True, slots=True)
class Malformed:
    """A 200 event stream whose first chunk is not JSON (``payload``), then the body ends."""

    payload: bytes = b'{"id":"chatcmpl-x","choices":[{"delta":{"content":"Hel'


@dataclass(frozen=True, slots=True)
class JSONBody:
    """A 200 ``application/json`` body (a non-streamed completion saying ``text``) to a
    streaming request, as a misconfigured proxy or URL answers."""

    text: str = "Hello."


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirect (``status``, 3xx) to ``location``, with no body."""

    location: str = "https://llm.example.com/v1/chat/completions"
    status: int = 302


Reply: TypeAlias = (
    Text | ToolCalls | Fail | Break | Stall | NoDone | Malformed | JSONBody | Redirect
)
"""One scripted answer to one chat-completions request."""


class ScriptedLLM:
    """A fake LLM that answers chat-completions requests from a script.

    Replies are consumed one per request, in order. When the queue is empty the ``default``
    answers: a fixed reply, or a function of the request body (see :func:`echo_reply`). With
    neither, the request fails with HTTP 500 saying the script is exhausted, so a test that
    makes more requests than it scripted fails loudly.

    ``token_delay`` is the pause between streamed deltas and ``first_token_delay`` the pause
    before the first one (after the role chunk); zero adds no await at all.

    ``requests`` holds every chat-completions body received, in order, unless ``record`` is
    false (long benchmarks, where keeping every body would grow memory and GC pauses without
    bound). ``push`` and ``requests`` are safe to use from a test thread while the server runs
    in another.

    Every request is first checked as OpenAI checks it (:mod:`relay.testing.openai_rules`:
    roles, message order and tool-call ids, content types, ``tools``, ``tool_choice``); one it
    would refuse is answered with OpenAI's HTTP 400 body, consumes no scripted reply, and is
    kept in ``rejected`` as ``(request number, error body)``. ``validate=False`` turns that off.

    ``first_token_late`` holds, for each streamed reply with a ``first_token_delay``, when its
    first delta was written (``time.time()``) and how many seconds after it was due: the
    server's own lateness, which a busy machine adds to every client's first token alike. It
    keeps the last :data:`LATENESS_KEPT`; ``GET /_scripted/lateness?since=T`` serves those
    written at or after ``T`` (and before ``&until=U``, if given; ``relay bench`` reads those
    of its measured phase).
    """

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        *,
        default: Reply | Callable[[dict[str, Any]], Reply] | None = None,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        record: bool = True,
        validate: bool = True,
    ) -> None:
        if token_delay < 0 or first_token_delay < 0:
            raise ValueError("delays must not be negative")
        self._queue: deque[Reply] = deque(replies)
        self.default = default
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.requests: list[dict[str, Any]] = []
        self._record = record
        self._received = 0
        self._last_prompt: list[tuple[str, ...]] = []
        self.validate = validate
        self.rejected: list[tuple[int, dict[str, Any]]] = []
        self.first_token_late: deque[tuple[float, float]] = deque(maxlen=LATENESS_KEPT)
        self.app: ASGIApp = _ChatCompletionsApp(self)

    def lateness(self, since: float, until: float = math.inf) -> list[float]:
        """Seconds late of the first deltas written from ``since`` to before ``until``
        (``time.time()``)."""
        return [late for at, late in list(self.first_token_late) if since <= at < until]

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, after those already queued."""
        self._queue.extend(replies)

    def _prompt_tokens(self, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, cached tokens) of a request, like a server with a one-slot prompt
        cache: the cached part is the prefix shared with the previous request's prompt."""
        parts = _prompt_parts(body)
        cached = _shared_prefix(parts, self._last_prompt)
        self._last_prompt = parts
        return sum(map(len, parts)), cached

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        self._received += 1
        if self._record:
            self.requests.append(body)
        try:
            return self._queue.popleft()
        except IndexError:
            return self._default_reply(body)

    def _default_reply(self, body: dict[str, Any]) -> Reply:
        default = self.default
        if default is None:
            message = (
                f"ScriptedLLM script exhausted: no reply queued for request #{self._received} "
                "and no default set"
            )
            return Fail(500, _error_body(500, message))
        if callable(default):
            return default(body)
        return default


def echo_reply(body: dict[str, Any]) -> Reply:
    """Answer ``You said: <the last user message>.`` and a short question, about 10-20 tokens.

    The default reply for demos and benchmarks: it streams realistic text and shows that the
    request arrived. Only the first eight words of a longer message are echoed, then "…".
    """
    return Text(_echo_sentence(body))


# --- The ASGI app -----------------------------------------------------------------------------


class _SimulatedBreakError(Exception):
    """Raised inside the app to make the server drop the connection mid-response (`Break`)."""


class _ChatCompletionsApp:
    """The raw ASGI app behind :attr:`ScriptedLLM.app`.

    A class rather than a bound method: uvicorn only detects ASGI 3 on functions and on
    objects whose ``__call__`` is a coroutine function.
    """

    __slots__ = ("_llm",)

    def __init__(self, llm: ScriptedLLM) -> None:
        self._llm = llm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        route = path.removeprefix("/v1").rstrip("/")
        if route == "/chat/completions":
            if method != "POST":
                await _method_not_allowed(send, method, path, b"POST")
                return
            await self._chat_completions(receive, send)
        elif route == "/_scripted/lateness":
            await self._lateness(scope, send)
        elif route in ("/models", "/healthz"):
            if method not in ("GET", "HEAD"):
                await _method_not_allowed(send, method, path, b"GET")
                return
            if route == "/models":
                payload = {
                    "object": "list",
                    "data": [
                        {"id": _MODEL_ID, "object": "model", "created": 0, "owned_by": "relay"}
                    ],
                }
            else:
                payload = {"status": "ok"}
            await _send_json(send, 200, orjson.dumps(payload))
        else:
            message = f"Invalid URL ({method} {path})"
            await _send_json(send, 404, orjson.dumps(_error_body(404, message)))

    async def _lateness(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _method_not_allowed(send, scope["method"], scope["path"], b"GET")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            since, until = float(query.get("since", "0")), float(query.get("until", "inf"))
        except ValueError:
            message = "since and until are times in seconds (time.time())"
            await _send_json(send, 400, orjson.dumps(_error_body(400, message)))
            return
        late = self._llm.lateness(since, until)
        await _send_json(send, 200, orjson.dumps({"first_token_late_s": late}))

    async def _chat_completions(self, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            message = f"We could not parse the JSON body of your request. ({exc})"
            await _send_json(send, 400, orjson.dumps(_error_body(400, message)))
            return
        if not isinstance(body, dict):
            message = "The request body must be a JSON object."
            await _send_json(send, 400, orjson.dumps(_error_body(400, message)))
            return
        llm = self._llm
        refusal = check_chat_request(body) if llm.validate else None
        if refusal is not None:  # as OpenAI would: 400, and no scripted reply used
            llm._received += 1
            if llm._record:
                llm.requests.append(body)
            llm.rejected.append((llm._received, refusal))
            await _send_json(send, 400, orjson.dumps(refusal))
            return
        reply = llm._next_reply(body)
        while isinstance(reply, Stall):
            if reply.seconds > 0 and await _client_left_within(receive, reply.seconds):
                return
            reply = reply.then if reply.then is not None else llm._default_reply(body)
        if isinstance(reply, Fail):
            await _send_failure(send, reply)
            return
        if isinstance(reply, Malformed | JSONBody | Redirect):
            await _send_oddity(send, body, reply)
            return
        plan = _Plan(reply.reply if isinstance(reply, NoDone) else reply)
        plan.no_done = isinstance(reply, NoDone)
        if body.get("stream") is True:
            await self._stream(send, body, plan)
        else:
            await self._complete(send, body, plan)

    async def _stream(self, send: Send, body: dict[str, Any], plan: _Plan) -> None:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        envelope = _Envelope(body, include_usage=include_usage)
        head = envelope.delta(b'{"role":"assistant","content":""}')
        tokens = [envelope.delta(orjson.dumps({"content": piece})) for piece in plan.pieces]
        for index, call in enumerate(plan.calls):
            tokens.append(envelope.delta(call.opening_delta(index)))
            tokens.extend(envelope.delta(delta) for delta in call.argument_deltas(index))
        if plan.broken:
            tail = b""
        else:
            tail = envelope.finish(plan.finish_reason)
            if include_usage:
                prompt, cached = self._llm._prompt_tokens(body)
                tail += envelope.usage(_usage(body, plan.completion_tokens, prompt, cached))
            if not plan.no_done:
                tail += _DONE

        # Events due at the same moment go out in one write: every write is a syscall, and
        # at 1,000 paced streams the syscalls are what the server spends its time on.
        pauses = [0.0]
        writes = [[head]]
        delay = self._llm.first_token_delay
        for token in tokens:
            if delay > 0:
                pauses.append(delay)
                writes.append([token])
            else:
                writes[-1].append(token)
            delay = self._llm.token_delay
        writes[-1].append(tail)
        last = len(writes) - 1

        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        # The first delta is due first_token_delay after the role chunk; how late it goes
        # is the server's own lateness (first_token_late).
        due = time.perf_counter() + self._llm.first_token_delay  # uvloop's clock has ms steps
        for index, (pause, events) in enumerate(zip(pauses, writes, strict=True)):
            if pause > 0:
                await asyncio.sleep(pause)
            payload = events[0] if len(events) == 1 else b"".join(events)
            more = plan.broken or index < last
            await send({"type": "http.response.body", "body": payload, "more_body": more})
            if index == 1 and self._llm.first_token_delay > 0:
                self._llm.first_token_late.append((time.time(), time.perf_counter() - due))
        if plan.broken:
            raise _SimulatedBreakError("scripted Break: connection dropped mid-stream")

    async def _complete(self, send: Send, body: dict[str, Any], plan: _Plan) -> None:
        text = "".join(plan.pieces)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not plan.calls else None,
            "refusal": None,
        }
        if plan.calls:
            message["tool_calls"] = [call.as_message_item() for call in plan.calls]
        completion = {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": _model_of(body),
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": _usage(body, plan.completion_tokens),
        }
        payload = orjson.dumps(completion)
        llm = self._llm
        pause = llm.first_token_delay + llm.token_delay * max(plan.completion_tokens - 1, 0)
        if pause > 0:
            await asyncio.sleep(pause)
        if plan.broken:
            headers = (_JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(payload)))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            half = payload[: len(payload) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            raise _SimulatedBreakError("scripted Break: connection dropped mid-body")
        await _send_json(send, 200, payload)


class _Plan:
    """What a text-like reply streams: content pieces, tool calls, and how it ends."""

    __slots__ = ("broken", "calls", "completion_tokens", "finish_reason", "no_done", "pieces")

    def __init__(self, reply: Text | ToolCalls | Break) -> None:
        self.broken = False
        self.no_done = False
        self.calls: list[_EncodedCall] = []
        self.finish_reason = "stop"
        if isinstance(reply, Text):
            self.pieces = reply.chunks if reply.chunks is not None else _split_text(reply.text)
        elif isinstance(reply, ToolCalls):
            self.pieces = _split_text(reply.text)
            self.calls = [_EncodedCall(call) for call in reply.calls]
            self.finish_reason = "tool_calls"
        else:
            self.pieces = _split_text(reply.text)[: reply.after_chunks]
            self.broken = True
        self.completion_tokens = len(self.pieces) + sum(1 + len(call.pieces) for call in self.calls)


class _EncodedCall:
    """A tool call with its id fixed and its JSON arguments cut into pieces."""

    __slots__ = ("arguments", "id", "name", "pieces")

    def __init__(self, call: ToolCall) -> None:
        arguments = call.arguments
        self.name = call.name
        self.id = call.id if call.id is not None else "call_" + os.urandom(12).hex()
        self.arguments = (
            arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        )
        self.pieces: list[str] = _ARGUMENT_PIECE_RE.findall(self.arguments)

    def opening_delta(self, index: int) -> bytes:
        function = {"name": self.name, "arguments": ""}
        item = {"index": index, "id": self.id, "type": "function", "function": function}
        return orjson.dumps({"tool_calls": [item]})

    def argument_deltas(self, index: int) -> Generator[bytes, None, None]:
        for piece in self.pieces:
            item = {"index": index, "function": {"arguments": piece}}
            yield orjson.dumps({"tool_calls": [item]})

    def as_message_item(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


class _Envelope:
    """The constant parts of one response's chunks, encoded once per request."""

    __slots__ = ("_delta_suffix", "_finish_suffix", "_head", "_prefix")

    def __init__(self, body: dict[str, Any], *, include_usage: bool) -> None:
        self._head = b"".join(
            (
                b'data: {"id":"',
                _completion_id().encode(),
                b'","object":"chat.completion.chunk","created":',
                b"%d" % int(time.time()),
                b',"model":',
                orjson.dumps(_model_of(body)),
                b',"system_fingerprint":null,"choices":',
            )
        )
        self._prefix = self._head + b'[{"index":0,"delta":'
        # With include_usage OpenAI sends "usage":null on every chunk but the last.
        usage = b',"usage":null' if include_usage else b""
        self._delta_suffix = b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        self._finish_suffix = usage + b"}\n\n"

    def delta(self, delta: bytes) -> bytes:
        return self._prefix + delta + self._delta_suffix

    def finish(self, reason: str) -> bytes:
        choice = b',"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]'
        return self._prefix + b"{}" + choice + self._finish_suffix

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n"


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client hung up first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def _client_left_within(receive: Receive, seconds: float) -> bool:
    """Wait ``seconds``; True as soon as the client disconnects, False when the time is up."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    return True
    except TimeoutError:
        return False


async def _send_json(
    send: Send, status: int, payload: bytes, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    headers = (_JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(payload)), *extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _send_failure(send: Send, fail: Fail) -> None:
    body = fail.body if fail.body is not None else _error_body(fail.status)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if isinstance(fail.retry_after, str):
        headers = ((b"retry-after", fail.retry_after.encode()),)
    elif fail.retry_after is not None:
        headers = (
            (b"retry-after", b"%d" % math.ceil(fail.retry_after)),
            (b"retry-after-ms", b"%d" % round(fail.retry_after * 1000)),
        )
    await _send_json(send, fail.status, orjson.dumps(body), headers)


async def _send_oddity(
    send: Send, body: dict[str, Any], reply: Malformed | JSONBody | Redirect
) -> None:
    if isinstance(reply, Redirect):
        headers = ((b"location", reply.location.encode()), (b"content-length", b"0"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif isinstance(reply, JSONBody):
        completion = {
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": _model_of(body),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "finish_reason": "stop"}],
            "usage": _usage(body, len(_split_text(reply.text))),
        }  # fmt: skip
        await _send_json(send, 200, orjson.dumps(completion))
    else:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        payload = b"data: " + reply.payload + b"\n\n"
        await send({"type": "http.response.body", "body": payload, "more_body": False})


async def _method_not_allowed(send: Send, method: str, path: str, allowed: bytes) -> None:
    payload = orjson.dumps(_error_body(405, f"Method {method} not allowed on {path}"))
    await _send_json(send, 405, payload, ((b"allow", allowed),))


def _error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error body for ``status``, with its usual type, code and message."""
    code: str | None = None
    match status:
        case 401:
            kind, code, text = "invalid_request_error", "invalid_api_key", "Incorrect API key."
        case 403:
            kind, text = "permission_error", "You are not allowed to use this model."
        case 404:
            kind, code = "invalid_request_error", "model_not_found"
            text = "The model does not exist or you do not have access to it."
        case 429:
            kind, code = "requests", "rate_limit_exceeded"
            text = "Rate limit reached for requests. Please try again later."
        case 500:
            kind = "server_error"
            text = "The server had an error while processing your request. Sorry about that!"
        case 503:
            kind, text = "server_error", "The engine is currently overloaded. Try again later."
        case _ if status >= 500:
            kind, text = "server_error", "The server had an error processing your request."
        case _:
            kind, text = "invalid_request_error", "Invalid request."
    if message is not None:
        text = message
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def _usage(
    body: dict[str, Any], completion_tokens: int, prompt_tokens: int | None = None, cached: int = 0
) -> dict[str, Any]:
    """OpenAI's ``usage`` object; ``cached`` prompt tokens came from the prompt cache."""
    if prompt_tokens is None:
        prompt_tokens = _estimate_prompt_tokens(body)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }  # fmt: skip


def _prompt_parts(body: dict[str, Any]) -> list[tuple[str, ...]]:
    """The prompt as the fake tokenizer sees it, in parts: the tool schemas, then each message
    framed by 4 tokens (as :func:`_estimate_prompt_tokens` counts), in order.

    A part's tokens are kept (:data:`_PARTS_KEPT`): the system prompt and a call's history come
    back in every request, and tokenizing them again cost a benchmark's fake LLM a quarter of
    its CPU at 1,000 calls.
    """
    parts: list[tuple[str, ...]] = []
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        parts.append(_tokens_of(None, orjson.dumps(tools).decode(), None))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            calls = message.get("tool_calls")
            parts.append(
                _tokens_of(
                    f"<|{message.get('role')}|>",
                    _text_of(message.get("content")),
                    orjson.dumps(calls).decode() if calls else None,
                )
            )
        else:
            parts.append(("<|None|>", "<|content|>", "<|end|>", "\n"))
    return parts


#: How many prompt parts' tokens are kept (see :func:`_prompt_parts`); all are dropped when
#: full. A thousand calls' system prompts, passages and histories fit (a few tens of MB).
_PARTS_KEPT: Final = 20_000
_parts: dict[tuple[str | None, str, str | None], tuple[str, ...]] = {}


def _tokens_of(role: str | None, text: str, calls: str | None) -> tuple[str, ...]:
    """One part's tokens: the tool schemas' (no ``role``) or a message's, framed."""
    key = (role, text, calls)
    tokens = _parts.get(key)
    if tokens is None:
        if role is None:
            tokens = tuple(_TOKEN_RE.findall(text))
        else:
            found = _TOKEN_RE.findall(text)
            if calls is not None:
                found += _TOKEN_RE.findall(calls)
            tokens = (role, "<|content|>", *found, "<|end|>", "\n")
        if len(_parts) >= _PARTS_KEPT:
            _parts.clear()
        _parts[key] = tokens
    return tokens


def _shared_prefix(a: list[tuple[str, ...]], b: list[tuple[str, ...]]) -> int:
    """How many leading tokens the prompts ``a`` and ``b`` (:func:`_prompt_parts`) share."""
    shared = 0
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:  # the rest token by token, from this part on
            rest = zip(chain.from_iterable(a[index:]), chain.from_iterable(b[index:]), strict=False)
            for p, q in rest:
                if p != q:
                    break
                shared += 1
            return shared
        shared += len(x)
    return shared


def _estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A deterministic stand-in for a tokenizer: word-ish tokens plus 4 per message."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        total += 4
        if isinstance(message, dict):
            total += len(_TOKEN_RE.findall(_text_of(message.get("content"))))
    return total


def _split_text(text: str) -> list[str]:
    pieces: list[str] = _TOKEN_RE.findall(text)
    return pieces


def _text_of(content: object) -> str:
    """The text of a message's ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else _MODEL_ID


def _completion_id() -> str:
    return "chatcmpl-" + os.urandom(15).hex()


def _echo_sentence(body: dict[str, Any]) -> str:
    said = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                said = _text_of(message.get("content"))
                break
    words = said.split()
    echoed = " ".join(words[:_ECHO_WORDS]).rstrip(".!?,;: ")
    if not echoed:
        return "I did not catch that." + _ECHO_TAIL
    # A longer message is cut after a few words, and says so (not a sentence cut short).
    return f"You said: {echoed}{'…' if len(words) > _ECHO_WORDS else '.'}" + _ECHO_TAIL


class _EchoOfLength:
    """An echo reply cut or padded to exactly ``tokens`` deltas (``relay fake-llm``)."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: int) -> None:
        self._tokens = max(tokens, 0)

    def __call__(self, body: dict[str, Any]) -> Text:
        wanted = self._tokens
        pieces = _split_text(_echo_sentence(body))
        if len(pieces) >= wanted:
            pieces = [*pieces[: wanted - 1], "."] if wanted else []
        else:
            pieces.extend(_FILLER[i % len(_FILLER)] for i in range(wanted - len(pieces)))
        return Text("".join(pieces), pieces)


# --- Running it -------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _HideSimulatedBreaks(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" record for a scripted `Break`."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _SimulatedBreakError)


class _ServerState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class FakeLLMServer:
    """Runs a :class:`ScriptedLLM` under a real uvicorn on ``127.0.0.1`` and a free port.

    ``with FakeLLMServer() as server`` serves from a background thread with its own event
    loop; ``async with`` serves as a task on the running loop. Either way the server is ready
    when the block starts and fully stopped (thread joined, socket closed) when it ends.
    Point clients at :attr:`base_url`; script and inspect through :attr:`llm`. A server runs
    once.
    """

    def __init__(self, llm: ScriptedLLM | None = None) -> None:
        self.llm = llm if llm is not None else ScriptedLLM()
        self._state = _ServerState.NEW
        self._port = 0
        self._server: _EmbeddedServer | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._log_filter = _HideSimulatedBreaks()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the ``base_url`` for an OpenAI client."""
        if self._state is not _ServerState.RUNNING:
            raise RuntimeError(f"FakeLLMServer is {self._state.value}, not running")
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> FakeLLMServer:
        server, sock = self._prepare()
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-llm-{self._port}",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        while not server.started:
            if not thread.is_alive():
                self._finish(sock)
                raise RuntimeError("FakeLLMServer failed to start")
            time.sleep(0.001)
        self._state = _ServerState.RUNNING
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._finish(None)

    async def __aenter__(self) -> FakeLLMServer:
        server, sock = self._prepare()
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fake-llm-{self._port}")
        self._task = task
        while not server.started:
            if task.done():
                self._finish(sock)
                cause = None if task.cancelled() else task.exception()
                raise RuntimeError("FakeLLMServer failed to start") from cause
            await asyncio.sleep(0.001)
        self._state = _ServerState.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        finally:
            self._finish(None)

    def _prepare(self) -> tuple[_EmbeddedServer, socket.socket]:
        if self._state is not _ServerState.NEW:
            raise RuntimeError("a FakeLLMServer runs only once; create a new one")
        # Binding here, not in uvicorn, gives the port before start with no race for it.
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it Nagle plus delayed ACKs hold each body write ~40 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind(("127.0.0.1", 0))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.llm.app,
            host="127.0.0.1",
            port=self._port,
            # log_config=None leaves the host's logging as it is; uvicorn's records still
            # reach whatever handlers (pytest's, structlog's) the host installed.
            log_config=None,
            proxy_headers=False,
            ws="none",
            lifespan="on",
            # A client that never hangs up on a Stall must not hold teardown forever.
            timeout_graceful_shutdown=5,
        )
        self._server = _EmbeddedServer(config)
        logging.getLogger(_UVICORN_LOGGER).addFilter(self._log_filter)
        return self._server, sock

    def _finish(self, sock: socket.socket | None) -> None:
        if sock is not None:
            sock.close()
        logging.getLogger(_UVICORN_LOGGER).removeFilter(self._log_filter)
        self._state = _ServerState.STOPPED


def serve_fake_llm(
    host: str,
    port: int,
    *,
    token_delay: float,
    first_token_delay: float,
    reply_tokens: int,
) -> None:
    """Serve an echoing fake LLM with uvicorn until interrupted (``relay fake-llm``).

    Every request is answered with an echo of its last user message, cut or padded to
    ``reply_tokens`` content deltas, paced by ``first_token_delay`` and ``token_delay``.
    """
    llm = ScriptedLLM(
        default=_EchoOfLength(reply_tokens),
        token_delay=token_delay,
        first_token_delay=first_token_delay,
        record=False,
        # A benchmark's model: checking each request (about 0.13 ms at 40 messages) would be
        # timed as model latency. The test suite checks every request relay makes instead.
        validate=False,
    )
    config = uvicorn.Config(
        llm.app,
        host=host,
        port=port,
        proxy_headers=False,
        access_log=False,
        ws="none",
        lifespan="on",
        log_config=None,  # uvicorn's lines through relay's logging (JSON or console)
    )
    settle_heap()  # a full collection in the model would be timed as relay's latency
    uvicorn.Server(config).run()
