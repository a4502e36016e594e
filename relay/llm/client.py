"""Streaming chat completions from any OpenAI-compatible server.

The seam is :class:`ChatModel`: one method that streams typed events for a request. The real
implementation, :class:`OpenAIChat`, is configured from an ``openai.AsyncOpenAI`` client (base
URL, key, headers).

Three transports do the same wire exchange (``RELAY_LLM_TRANSPORT``):

``lean`` (the default)
    relay's own HTTP/1.1 client (:mod:`relay.llm.http1`): the request serialised with orjson, one
    write, the response parsed by httptools as its bytes arrive and the SSE stream decoded
    from those bytes; keep-alive connections in an O(1) pool. The openai SDK spends about
    3 ms building each streaming request and about 0.16 ms more per history message (its
    type transforms), and httpx/httpcore/anyio about 1 ms more per request plus a stack of
    async generators per chunk and a pool scan per request; this path spends tens of
    microseconds and stays flat as history and concurrent calls grow. It does not use
    proxies (``HTTPS_PROXY`` is ignored): behind a proxy choose ``httpx``.
``httpx`` (``fast`` is an alias)
    The same request and SSE decoding through the shared ``httpx.AsyncClient`` (proxies,
    the app's limits and timeouts).
``sdk``
    ``client.chat.completions.create(stream=True)``: the reference behaviour, kept for servers
    that need SDK-specific handling and for comparing in ``relay bench``.

Retries happen only before the first token (connection errors, 408/409/429/5xx, a first-token
timeout); once the caller has heard something, a failure is raised as a mid-stream error.
Connections are kept alive between turns: after ``data: [DONE]`` the rest of the body (the
chunked terminator) is read, for a bounded time, so the connection can be reused.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, get_args

import httpx
import openai
import orjson

from relay.errors import FirstTokenTimeout, LLMError
from relay.llm import http1

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

Transport = Literal["lean", "httpx", "fast", "sdk"]
"""How :class:`OpenAIChat` talks to the server; ``fast`` is the old name of ``httpx``."""

TRANSPORTS: Final = get_args(Transport)

#: After ``[DONE]``, how long and how much more body to read for the connection to be reused.
#: The chunked terminator normally arrives with ``[DONE]`` or right after it.
_DRAIN_SECONDS: Final = 0.1  # as the openai SDK
_DRAIN_BYTES: Final = 64 * 1024
#: Error bodies are read up to this size (and quoted up to 500 characters).
_ERROR_BODY_BYTES: Final = 64 * 1024
#: The longest SSE line accepted while it is still incomplete.
_MAX_SSE_LINE: Final = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat-completions request."""

    model: str
    messages: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] = ()
    temperature: float | None = None
    max_tokens: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "stream": True}
        if self.tools:
            body["tools"] = self.tools
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply, exactly as the model sent it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, assembled from its streamed deltas."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Done:
    """The stream finished normally."""

    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    attempts: int = 1
    usage: dict[str, Any] | None = None


LLMEvent = TextDelta | Done


class ChatModel(Protocol):
    """What a call session needs from a language model."""

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        """Stream the reply. Raises :class:`LLMError`; never anything else."""
        ...


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _Assembler:
    """Folds streamed chunks into text deltas and complete tool calls."""

    __slots__ = ("calls", "finish_reason", "usage")

    def __init__(self) -> None:
        self.calls: dict[int, _ToolCallParts] = {}
        self.finish_reason = ""
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> tuple[str, bool]:
        """Returns (text, saw_tool_call) for one chunk."""
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise LLMError(f"server error in stream: {message}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices:
            return "", False
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        saw_tool = False
        for part in delta.get("tool_calls") or ():
            saw_tool = True
            index = part.get("index", len(self.calls))
            call = self.calls.setdefault(index, _ToolCallParts())
            if part.get("id"):
                call.id = part["id"]
            function = part.get("function") or {}
            if function.get("name"):
                call.name = function["name"]
            if function.get("arguments"):
                call.arguments.append(function["arguments"])
        return delta.get("content") or "", saw_tool

    def done(self, attempts: int) -> Done:
        calls = tuple(
            ToolCall(id=c.id or f"call_{i}", name=c.name, arguments="".join(c.arguments) or "{}")
            for i, c in sorted(self.calls.items())
        )
        reason = self.finish_reason or ("tool_calls" if calls else "stop")
        return Done(finish_reason=reason, tool_calls=calls, attempts=attempts, usage=self.usage)


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
        if len(self._pending) > _MAX_SSE_LINE:
            raise LLMError(f"the LLM stream sent a line longer than {_MAX_SSE_LINE} bytes")
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


class OpenAIChat:
    """:class:`ChatModel` for OpenAI-compatible servers.

    ``http`` is the app's shared client (used by the ``httpx`` transport); ``pool`` is the
    ``lean`` transport's connection pool, made here (and closed by :meth:`aclose`) when not
    given.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        http: httpx.AsyncClient,
        pool: http1.ConnectionPool | None = None,
        first_token_timeout: float = 8.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        transport: Transport = "lean",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown LLM transport {transport!r}: use one of {TRANSPORTS}")
        if transport == "fast":
            transport = "httpx"
        self._client = client.with_options(max_retries=0) if transport == "sdk" else client
        self._http = http
        self._url = str(client.base_url).rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {client.api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **{k: v for k, v in (client._custom_headers or {}).items() if isinstance(v, str)},
        }
        self._owns_pool = pool is None and transport == "lean"
        self._pool = pool if pool is not None else http1.ConnectionPool()
        self._endpoint = http1.Endpoint(self._url, self._headers) if transport == "lean" else None
        self.first_token_timeout = first_token_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.transport = transport

    async def aclose(self) -> None:
        """Close the ``lean`` transport's pooled connections, if this object made the pool."""
        if self._owns_pool:
            await self._pool.aclose()

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        attempt = 0
        while True:
            attempt += 1
            started = False
            try:
                async for event in self._with_first_token_deadline(self._source(request)):
                    started = True
                    if isinstance(event, Done):
                        yield Done(event.finish_reason, event.tool_calls, attempt, event.usage)
                    else:
                        yield event
                return
            except LLMError as exc:
                if started or not exc.retryable or attempt > self.max_retries:
                    raise
                delay = self.backoff * (2 ** (attempt - 1)) * (0.75 + random.random() / 2)
                await asyncio.sleep(delay)

    def _source(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        if self.transport == "lean":
            return self._lean(request)
        if self.transport == "httpx":
            return self._httpx(request)
        return self._sdk(request)

    async def _with_first_token_deadline(
        self, source: AsyncIterator[LLMEvent]
    ) -> AsyncIterator[LLMEvent]:
        """Re-yields ``source``, failing if its first event takes longer than the deadline.

        Nothing is yielded while the deadline is armed, so the timeout only ever cancels
        this generator's own wait for the server.
        """
        iterator = source.__aiter__()
        try:
            try:
                async with asyncio.timeout(self.first_token_timeout):
                    first = await anext(iterator)
            except TimeoutError as exc:
                raise FirstTokenTimeout(self.first_token_timeout) from exc
            except StopAsyncIteration:
                return
            yield first
            async for event in iterator:
                yield event
        finally:
            await _aclose(iterator)

    async def _lean(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        assert self._endpoint is not None
        content = orjson.dumps(request.body())
        try:
            response = await self._pool.post(self._endpoint, content)
        except http1.ConnectTimeout as exc:
            raise LLMError(f"LLM connection timed out: {exc}", retryable=True) from exc
        except http1.ConnectError as exc:
            raise LLMError(f"cannot reach the LLM at {self._url}: {exc}", retryable=True) from exc
        except http1.HTTPError as exc:
            raise LLMError(f"LLM request failed: {exc!r}", retryable=True) from exc
        try:
            if response.status >= 400:
                body = await response.read(_ERROR_BODY_BYTES)
                raise _status_error(response.status, body)
            assembler = _Assembler()
            decoder = SSEDecoder()
            saw_any = False
            while data := await response.receive():
                for payload in decoder.feed(data):
                    if payload.startswith(b"[DONE]"):
                        await _drain_lean(response)
                        response.close()  # back to the pool before the caller moves on
                        yield assembler.done(1)
                        return
                    text, saw_tool = assembler.feed(_chunk(payload))
                    if text:
                        yield TextDelta(text)
                        if not saw_any:
                            saw_any = True
                            await _let_the_first_frame_leave()
                    elif saw_tool:
                        saw_any = True
            raise LLMError("the LLM stream ended without [DONE]", retryable=not saw_any)
        except http1.ReadTimeout as exc:
            raise LLMError(f"LLM stream timed out: {exc}", retryable=True) from exc
        except http1.HTTPError as exc:
            raise LLMError(f"LLM stream broke: {exc!r}", retryable=True) from exc
        finally:
            response.close()  # not read to the end (cancelled, failed): the connection closes

    async def _httpx(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        content = orjson.dumps(request.body())
        http_request = self._http.build_request(
            "POST", self._url, content=content, headers=self._headers
        )
        try:
            response = await self._http.send(http_request, stream=True)
        except httpx.TimeoutException as exc:
            raise LLMError(f"LLM request timed out: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise LLMError(f"cannot reach the LLM at {self._url}: {exc!r}", retryable=True) from exc
        try:
            if response.status_code >= 400:
                raise _status_error(response.status_code, await response.aread())
            assembler = _Assembler()
            decoder = SSEDecoder()
            saw_any = done = False
            chunks = response.aiter_bytes()
            try:
                async for data in chunks:
                    for payload in decoder.feed(data):
                        if payload.startswith(b"[DONE]"):
                            done = True
                            break
                        text, saw_tool = assembler.feed(_chunk(payload))
                        if text:
                            yield TextDelta(text)
                            if not saw_any:
                                saw_any = True
                                await _let_the_first_frame_leave()
                        elif saw_tool:
                            saw_any = True
                    if done:
                        break
                if not done:
                    raise LLMError("the LLM stream ended without [DONE]", retryable=not saw_any)
                # Read the rest (the chunked terminator) so httpcore puts the connection back
                # in the pool: breaking off here would close it, and every turn would pay for
                # a new TCP (and TLS) connection.
                await _drain_httpx(chunks)
            finally:
                await _aclose(chunks)
            await response.aclose()
            yield assembler.done(1)
        except httpx.TimeoutException as exc:
            raise LLMError(f"LLM stream timed out: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise LLMError(f"LLM stream broke: {exc!r}", retryable=True) from exc
        finally:
            await response.aclose()

    async def _sdk(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        body = request.body()
        body.pop("stream")
        assembler = _Assembler()
        try:
            stream = await self._client.chat.completions.create(stream=True, **body)
            async with stream:
                async for chunk in stream:
                    text, _ = assembler.feed(chunk.model_dump(exclude_none=True))
                    if text:
                        yield TextDelta(text)
        except openai.APIStatusError as exc:
            raise LLMError(
                f"LLM answered HTTP {exc.status_code}: {exc.message}",
                retryable=exc.status_code in RETRYABLE_STATUS,
                status=exc.status_code,
            ) from exc
        except openai.APIError as exc:  # connection errors, timeouts, broken streams
            raise LLMError(f"LLM request failed: {exc!r}", retryable=True) from exc
        yield assembler.done(1)


async def _let_the_first_frame_leave() -> None:
    """One pass of the event loop after a turn's first text delta.

    When a whole reply arrives in one read (a fast or local model, or a short answer), every
    delta would be decoded and handed over before anything else ran, and the session's
    writer would send the first frame (what the caller is waiting for) only after the last
    was processed. One pass lets it go out first.
    """
    await asyncio.sleep(0)


def _chunk(payload: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise LLMError(f"unreadable stream chunk: {payload[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMError(f"unexpected stream chunk: {payload[:200]!r}")
    return chunk


def _status_error(status: int, body: bytes) -> LLMError:
    text = body[:500].decode("utf-8", "replace")
    return LLMError(
        f"LLM answered HTTP {status}: {text}", retryable=status in RETRYABLE_STATUS, status=status
    )


async def _drain_lean(response: http1.Response) -> None:
    """Read what follows ``[DONE]`` (bounded) so the connection can go back to the pool."""
    if response.complete:
        return  # the usual case: the terminator came with [DONE]
    read = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while data := await response.receive():
                read += len(data)
                if read > _DRAIN_BYTES:
                    return
    except (TimeoutError, http1.HTTPError):
        pass  # the answer is complete; only the connection is lost (closed, not pooled)


async def _drain_httpx(chunks: AsyncIterator[bytes]) -> None:
    read = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for data in chunks:
                read += len(data)
                if read > _DRAIN_BYTES:
                    return
    except (TimeoutError, httpx.TransportError):
        pass  # the answer is complete; only the connection is lost (closed, not pooled)


async def _aclose(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def monotonic() -> float:
    return time.perf_counter()
