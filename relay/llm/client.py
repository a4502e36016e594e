"""Streaming chat completions from any OpenAI-compatible server: :class:`OpenAIChat`.

One request per attempt, POSTed as orjson bytes through the transport; the event stream
decoded from the body's bytes as they arrive (:mod:`relay.llm.sse`) into text deltas, complete
tool calls and the usage.

**Transports** (``RELAY_LLM_TRANSPORT``): ``aiohttp`` (the default, :mod:`relay.llm.transport`:
proxies from the environment, happy eyeballs, header limits, a bounded pool) and ``lean``
(:mod:`relay.llm.http1`, relay's own HTTP/1.1 client: no proxies, and it refuses to start when
the environment sets one for the URL). Both go through the same code here, so time limits,
retries and errors are the same; ``lean`` spends about 85 us less CPU per request, which
measured 0.4-0.7 ms at the p50 on a loaded 2-core machine (the README has the figures).

**Time limits** (:class:`~relay.llm.types.Timeouts`, from the settings, per agent through the
request): connecting; the first token of each attempt; the pause between chunks once the
reply has started; and the turn's budget for getting a reply started at all (every attempt,
back-off and ``Retry-After`` wait fits in it; a request's ``deadline`` can shorten it).

**Retry policy**: only while the caller has heard nothing, only within the turn's budget, at
most ``max_retries`` more attempts: connection failures, 408/409/429/5xx (after the
``Retry-After`` the server asks for, in seconds or as an HTTP date, when it fits the budget),
a first-token timeout, a malformed chunk and a stream broken before the first token. Never:
other 4xx, and a response that is not an event stream (a JSON body, a redirect), which is a
misconfigured URL (:class:`~relay.errors.LLMConfigError`). A stream that ends after a
``finish_reason`` without ``data: [DONE]`` is complete. Every failed attempt is counted by
kind in :attr:`OpenAIChat.failures`.

**Pacing** (``read_interval``, ``RELAY_LLM_READ_INTERVAL``): the reply's first words are
yielded chunk by chunk; once it has said a clause's end, the stream is read at most every
``read_interval`` seconds (sooner while little has been said; the socket left unread in
between) and what a read brings is one :class:`~relay.llm.types.TextDelta`. See :class:`_Pace`.

**Usage**: ``stream_options.include_usage`` is sent; the final usage chunk (prompt,
completion and cached prompt tokens) lands in :class:`~relay.llm.types.Done`. A server that
reports none gets a local estimate, marked ``estimated``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, get_args

import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from relay import metrics
from relay.errors import ConfigError, FirstTokenTimeout, LLMConfigError, LLMError
from relay.llm.sse import ChunkAssembler, SSEDecoder, parse_chunk
from relay.llm.transport import AiohttpTransport
from relay.llm.types import ChatRequest, LLMEvent, TextDelta, Timeouts, Usage

RETRYABLE_STATUS: Final = frozenset({408, 409, 429, 500, 502, 503, 504})

Transport = Literal["aiohttp", "lean"]
"""How :class:`OpenAIChat` talks to the server."""

TRANSPORTS: Final = get_args(Transport)

FailureKind = Literal["connect", "timeout", "status", "malformed", "stream-broken", "config"]
FAILURE_KINDS: Final[tuple[str, ...]] = get_args(FailureKind)

DEFAULT_TIMEOUTS: Final = Timeouts(connect=3.0, first_token=3.0, read=10.0, turn=4.5)
"""The settings' defaults: a stalled or failing model gets the caller an apology within 5 s."""

#: Error bodies are read up to this size (and quoted up to 500 characters).
_ERROR_BODY_BYTES: Final = 64 * 1024
#: A paced stream's pause after a read is at most the time the words said so far take to
#: speak (about 15 characters a second) divided by four: the speech is never left waiting.
PACE_CHARS_PER_SECOND: Final = 60.0
_CLAUSE_END: Final = re.compile(r"[.,;:!?\n]")
#: Event-stream media types (``text/event-stream``, with or without parameters).
_EVENT_STREAM: Final = "text/event-stream"


class FailureCounts:
    """Failed attempts by kind, since the client started: read by metrics and status pages.

    Each failed attempt counts once, retried or not; :attr:`turns_failed` counts the
    streams that raised in the end (the caller heard an apology, or the rest was lost).
    """

    __slots__ = ("_counts", "turns_failed")

    def __init__(self) -> None:
        self._counts: dict[str, int] = dict.fromkeys(FAILURE_KINDS, 0)
        self.turns_failed = 0

    def add(self, kind: str) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1

    def __getitem__(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def snapshot(self) -> dict[str, int]:
        """``{kind: count}`` for every kind, zeros included."""
        return dict(self._counts)

    @property
    def total(self) -> int:
        return sum(self._counts.values())


class _Response(Protocol):
    status: int

    def header(self, name: str) -> str | None: ...
    def hold(self) -> None: ...
    async def receive(self) -> bytes: ...
    async def read(self, limit: int) -> bytes: ...
    async def finish(self) -> None: ...
    def close(self) -> None: ...


class _Transport(Protocol):
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, connect_timeout: float | None
    ) -> _Response: ...
    async def aclose(self) -> None: ...


class OpenAIChat:
    """:class:`~relay.llm.types.ChatModel` for OpenAI-compatible servers.

    ``base_url`` is the API's base (``https://api.openai.com/v1``); ``api_key`` is sent as a
    bearer token and ``headers`` with every request. ``transport`` names the HTTP client
    (``http`` replaces the one it would make); ``read_interval`` paces a reply's stream once
    its first clause is said (0: every chunk as it comes). Close with :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_retries: int = 2,
        backoff: float = 0.25,
        transport: Transport = "aiohttp",
        max_connections: int = 4000,
        read_interval: float = 0.0,
        http: _Transport | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown LLM transport {transport!r}: use one of {TRANSPORTS}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": _EVENT_STREAM,
            "Accept-Encoding": "identity",
            **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            **(headers or {}),
        }
        self.timeouts = timeouts.over(DEFAULT_TIMEOUTS)
        self.max_retries = max_retries
        self.backoff = backoff
        if read_interval < 0:
            raise ValueError(f"read_interval must be 0 or more, not {read_interval}")
        self.read_interval = read_interval
        self.transport = transport
        self.failures = FailureCounts()
        #: How back-off and ``Retry-After`` waits are waited (tests record them).
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._transport: _Transport
        if http is not None:
            self._transport = http  # made by the caller (tests: a pool with a private CA)
        elif transport == "lean":
            from relay.llm.http1 import LeanTransport

            refuse_proxies(self.url)
            self._transport = LeanTransport()
        else:
            self._transport = AiohttpTransport(max_connections=max_connections)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._transport.aclose()

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        timeouts = request.timeouts.over(self.timeouts) if request.timeouts else self.timeouts
        assert timeouts.first_token is not None and timeouts.turn is not None
        deadline = time.perf_counter() + max(timeouts.turn, timeouts.first_token)
        if request.deadline is not None:
            deadline = min(deadline, request.deadline)
        body = orjson.dumps(request.body())
        attempt = 0
        while True:
            attempt += 1
            started = False
            events = self._attempt(request, body, timeouts, deadline, attempt)
            try:
                async for event in events:
                    started = True
                    yield event
                return
            except LLMError as exc:
                self.failures.add(exc.kind)
                if started:
                    exc.retryable = False  # the caller has heard part of it: never again
                if not exc.retryable or attempt > self.max_retries:
                    self.failures.turns_failed += 1
                    raise
                delay = self.backoff * (2 ** (attempt - 1)) * (0.75 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if time.perf_counter() + delay >= deadline:
                    self.failures.turns_failed += 1
                    raise  # no time left in the turn's budget for another attempt
                metrics.model_retried(exc)
                await self.sleep(delay)
            finally:
                await events.aclose()  # its response is closed now, not when collected

    async def _attempt(
        self, request: ChatRequest, body: bytes, timeouts: Timeouts, deadline: float, attempt: int
    ) -> AsyncGenerator[LLMEvent, None]:
        """One request. Nothing is yielded while a time limit is armed: each limit only ever
        cancels this generator's own wait for the server, never the consumer's work."""
        assert timeouts.first_token is not None and timeouts.read is not None
        loop = asyncio.get_running_loop()
        wait = min(timeouts.first_token, deadline - time.perf_counter())
        if wait <= 0:
            raise FirstTokenTimeout(0)
        first_by = loop.time() + wait
        try:
            async with asyncio.timeout_at(first_by):
                response = await self._transport.post(
                    self.url, self._headers, body, connect_timeout=timeouts.connect
                )
        except TimeoutError as exc:
            raise FirstTokenTimeout(wait) from exc
        watch = _ReadWatch(loop, first_by)
        try:
            await self._check(response, first_by, wait)
            assembler = ChunkAssembler()
            decoder = SSEDecoder()
            read = timeouts.read
            progressed = done = False
            pace = _Pace(self.read_interval)
            while not done:
                if (pause := pace.next_read - loop.time()) > 0:
                    response.hold()  # what comes meanwhile waits in the kernel, read as one
                    await asyncio.sleep(pause)
                try:
                    data = await watch.wait(response.receive())
                except TimeoutError as exc:
                    if not progressed:
                        raise FirstTokenTimeout(wait) from exc
                    raise LLMError(
                        f"the LLM stream paused for more than {read:g}s", kind="timeout"
                    ) from exc
                if not data:
                    break
                moved = tools = False
                joined: list[str] = []  # paced: everything this read brought is one delta
                try:
                    for payload in decoder.feed(data):
                        if payload.startswith(b"[DONE]"):
                            done = True
                            break
                        text, saw_tool = assembler.feed(parse_chunk(payload, retryable=True))
                        if (text or saw_tool) and not moved:
                            moved = progressed = True
                            watch.when = loop.time() + read
                        tools = tools or saw_tool
                        if not text:
                            continue
                        if pace.on:
                            joined.append(text)
                        else:
                            yield TextDelta(text)
                            pace.said(text)
                except LLMError:
                    if joined:  # the words before the bad chunk still go to the caller
                        yield TextDelta("".join(joined))
                    raise
                if tools:
                    pace.stop()  # a tool call is read as it comes: the tool waits for it
                if joined:
                    text = "".join(joined)
                    yield TextDelta(text)
                    pace.said(text)
                if pace.on and moved:
                    pace.next_read = loop.time() + pace.pause()
            if done:
                await response.finish()  # back to the pool before the caller moves on
            elif not assembler.finish_reason:
                raise LLMError(
                    "the LLM stream ended without a finish_reason or [DONE]", retryable=True
                )
            usage = assembler.usage
            if usage is None:
                text = "".join(assembler.text_chars)
                usage = Usage.estimate(request, text, assembler.tool_calls())
            yield assembler.done(attempt, usage)
        finally:
            watch.close()
            response.close()  # not read to the end (cancelled, failed): the connection closes

    async def _check(self, response: _Response, first_by: float, wait: float) -> None:
        """Raise unless ``response`` is a 2xx event stream."""
        status = response.status
        if 300 <= status < 400:
            location = response.header("Location") or "nowhere"
            raise LLMConfigError(
                f"the LLM at {self.url} answered HTTP {status}, a redirect to {location}: "
                "set OPENAI_BASE_URL to the API's own base URL (redirects are not followed)"
            )
        if status >= 400:
            try:
                async with asyncio.timeout_at(first_by):
                    error_body = await response.read(_ERROR_BODY_BYTES)
            except TimeoutError as exc:
                raise FirstTokenTimeout(wait) from exc
            text = error_body[:500].decode("utf-8", "replace")
            raise LLMError(
                f"LLM answered HTTP {status}: {text}", retryable=status in RETRYABLE_STATUS,
                status=status, kind="status", retry_after=retry_after(response.header),
            )  # fmt: skip
        content_type = response.header("Content-Type")
        if content_type is not None and (
            content_type.split(";", 1)[0].strip().lower() != _EVENT_STREAM
        ):
            raise LLMConfigError(
                f"the LLM at {self.url} answered HTTP {status} with {content_type}, not "
                f"{_EVENT_STREAM}: check OPENAI_BASE_URL (the API's base URL, such as "
                "https://api.openai.com/v1) and any proxy in front of it"
            )


def refuse_proxies(url: str) -> None:
    """The lean transport connects directly: never ignore a proxy the environment sets.
    A ConfigError naming RELAY_LLM_TRANSPORT when the environment sets one for ``url``
    (``relay serve`` checks it before it starts: :func:`relay.web.app.preflight`)."""
    try:
        proxy, _ = get_env_proxy_for_url(URL(url))
    except LookupError:
        return
    raise ConfigError(
        f"RELAY_LLM_TRANSPORT=lean connects directly, but the environment sets the proxy "
        f"{proxy.with_user(None)} for {url}: use RELAY_LLM_TRANSPORT=aiohttp (the default), or "
        "exclude the host with NO_PROXY"
    )


def retry_after(header: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP
    date; None when absent or unreadable. ``header(name)`` returns a header's value."""
    millis = header("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = header("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(when.timestamp() - current, 0.0)


class _Pace:
    """How a reply's stream is read (``OpenAIChat.read_interval``).

    The first words go on chunk by chunk, as the model sent them: they are what the caller
    waits for. Once the reply has said a clause's end, each read is followed by a pause of
    ``interval`` seconds at most, and never more than a quarter of the time the words said so
    far take to speak (:data:`PACE_CHARS_PER_SECOND`): what a read brings is one delta (one
    text frame). A model writes several times faster than a caller listens, so the words still
    reach the caller's speech long before they are due, and each read and frame saved is a
    wake-up and two system calls. A tool call ends the pacing for the rest of the stream.
    """

    __slots__ = ("_chars", "interval", "next_read", "on")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.on = False
        self.next_read = 0.0  # a loop.time(); 0: read at once
        self._chars = 0

    def said(self, text: str) -> None:
        """``text`` went on (as its own delta, or a read's)."""
        if self.interval:
            self._chars += len(text)
            self.on = self.on or _CLAUSE_END.search(text) is not None

    def pause(self) -> float:
        """Seconds until the next read."""
        return min(self.interval, self._chars / PACE_CHARS_PER_SECOND)

    def stop(self) -> None:
        self.interval = self.next_read = 0.0
        self.on = False


class _ReadWatch:
    """The time limit on each of a stream's waits for the server, with one timer per stream.

    ``asyncio.timeout_at`` around every read creates a timer, pushes it on the loop's heap and
    cancels it again for each token: 5-6 % of a loaded worker's CPU. Here a chunk only moves
    :attr:`when` (a float). The one timer, when it fires, re-arms at :attr:`when` if that
    moved, and cancels the task only while it waits for the server past :attr:`when` (the
    cancellation becomes ``TimeoutError`` as with ``asyncio.timeout``). The consumer's own
    work between waits is never cancelled: a wait that starts after :attr:`when` goes through
    ``asyncio.timeout_at``, which gives bytes already received and times out otherwise.
    """

    __slots__ = ("_expired", "_handle", "_loop", "_task", "_waiting", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._loop = loop
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.when = when
        self._handle: asyncio.TimerHandle | None = None
        self._waiting = self._expired = False

    async def wait(self, receive: Awaitable[bytes]) -> bytes:
        """``await receive``, raising ``TimeoutError`` when it is still waiting at :attr:`when`."""
        when = self.when
        if self._loop.time() >= when:
            async with asyncio.timeout_at(when):
                return await receive
        handle = self._handle
        if handle is None or handle.when() > when:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
        task = self._task
        cancelling = task.cancelling()
        self._waiting = True
        try:
            return await receive
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._waiting = self._expired = False

    def _fire(self) -> None:
        self._handle = None
        if self._loop.time() < self.when:  # a chunk came since: sleep until the new limit
            self._handle = self._loop.call_at(self.when, self._fire)
        elif self._waiting and not self._expired:
            self._expired = True
            self._task.cancel()
        # not waiting: the next wait starts past the limit and is timed on its own

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
