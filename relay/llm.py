"""Streaming chat completions from any OpenAI-compatible server.

The seam is :class:`ChatModel`: one method that streams typed events for a request. The real
implementation, :class:`OpenAIChat`, is configured from an ``openai.AsyncOpenAI`` client (base
URL, key, headers) and sends every request through the one shared ``httpx.AsyncClient``.

Two transports do the same wire exchange:

``fast`` (the default)
    Serialises the request with orjson and parses the SSE stream itself. The openai SDK spends
    about 3 ms building each streaming request and about 0.16 ms more per history message
    (its type transforms), which would be most of relay's latency budget; this path spends
    tens of microseconds and stays flat as history grows.
``sdk``
    ``client.chat.completions.create(stream=True)``: the reference behaviour, kept for servers
    that need SDK-specific handling and for comparing the two in ``relay bench``.

Retries happen only before the first token (connection errors, 408/409/429/5xx, a first-token
timeout); once the caller has heard something, a failure is raised as a mid-stream error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import openai
import orjson

from relay.errors import FirstTokenTimeout, LLMError

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


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


class OpenAIChat:
    """:class:`ChatModel` for OpenAI-compatible servers."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        http: httpx.AsyncClient,
        first_token_timeout: float = 8.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        transport: Literal["fast", "sdk"] = "fast",
    ) -> None:
        self._client = client.with_options(max_retries=0) if transport == "sdk" else client
        self._http = http
        self._url = str(client.base_url).rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {client.api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **{k: v for k, v in (client._custom_headers or {}).items() if isinstance(v, str)},
        }
        self.first_token_timeout = first_token_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.transport = transport

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        attempt = 0
        while True:
            attempt += 1
            started = False
            try:
                source = self._fast(request) if self.transport == "fast" else self._sdk(request)
                async for event in self._with_first_token_deadline(source):
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

    async def _fast(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        content = orjson.dumps(request.body())
        assembler = _Assembler()
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
                body = (await response.aread())[:500].decode("utf-8", "replace")
                raise LLMError(
                    f"LLM answered HTTP {response.status_code}: {body}",
                    retryable=response.status_code in RETRYABLE_STATUS,
                    status=response.status_code,
                )
            saw_any = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    raise LLMError(f"unreadable stream chunk: {payload[:200]!r}") from exc
                text, saw_tool = assembler.feed(chunk)
                if text:
                    saw_any = True
                    yield TextDelta(text)
                elif saw_tool and not saw_any:
                    saw_any = True
            else:
                raise LLMError("the LLM stream ended without [DONE]", retryable=not saw_any)
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


async def _aclose(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def monotonic() -> float:
    return time.perf_counter()
