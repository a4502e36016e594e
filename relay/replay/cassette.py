"""The recorded model answers, served back: in-process (:class:`CassetteLLM`) or over HTTP.

In cassette mode the model's recorded answers are served back piece by piece as they were
streamed, with recorded failures and answers cut off by an interruption; a request that no
longer matches the recorded one is noted as a :class:`~relay.replay.compare.Divergence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from relay.agents import AgentProfile
from relay.call.guards import NOTES_TAIL
from relay.errors import ConfigError, LLMError
from relay.llm.types import ChatRequest, Done, LLMEvent, TextDelta, ToolCall
from relay.recordings.format import Recording
from relay.replay.compare import (
    Divergence,
    Masker,
    compare_requests,
    message_text,
    render_request,
)
from relay.services.retrieval import INTRO, Retrieved


@dataclass
class Exchange:
    """One recorded LLM round: the request and the answer as it was streamed."""

    number: int
    body: dict[str, Any]
    pieces: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    attempts: int | None = None
    complete: bool = False
    answered: bool = False  # an llm_response event was recorded
    error: str | None = None  # the LLM failure that ended this round


@dataclass
class RecordedRetrieval:
    message: str
    provenance: list[dict[str, Any]]
    elapsed_ms: float
    error: str | None
    #: The number of the request that carried it (None: its turn made none), and that turn's
    #: query as the session makes it (the caller's latest words), to pair it with a turn now.
    exchange: int | None = None
    query: str | None = None


def exchanges(recording: Recording) -> list[Exchange]:
    found: list[Exchange] = []
    for event in recording.events:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "llm_request":
            found.append(Exchange(len(found) + 1, dict(data.get("body") or {})))
        elif kind == "llm_response" and found:
            last = found[-1]
            last.pieces = [str(p) for p in data.get("pieces") or []]
            last.tool_calls = list(data.get("tool_calls") or [])
            last.finish_reason = data.get("finish_reason")
            last.attempts = data.get("attempts")
            last.complete = bool(data.get("complete"))
            last.answered = True
        elif kind == "llm_error" and found and found[-1].answered and not found[-1].complete:
            found[-1].error = str(data.get("error") or "LLM error")
    return found


def passages_in(messages: list[dict[str, Any]]) -> str:
    """The retrieved passages a recorded request carried, as the retriever's message ("" for
    none). They are in the last system message, between the turn's notes (time, language) and
    :data:`~relay.call.guards.NOTES_TAIL`; recordings made before that layout carry them in a
    system message of their own, second in the request."""
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") != "system" or not isinstance(content, str):
            continue
        start = content.find(INTRO)
        if start < 0:
            continue
        found = content[start:]
        return found.removesuffix("\n\n" + NOTES_TAIL)
    return ""


def retrievals(recording: Recording) -> list[RecordedRetrieval]:
    """Each recorded retrieval with the passage message the next request carried."""
    found: list[RecordedRetrieval] = []
    pending: dict[str, Any] | None = None
    requests = 0
    for event in recording.events:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "retrieval":
            if pending is not None:
                found.append(
                    RecordedRetrieval(
                        "", pending.get("provenance") or [], 0.0, pending.get("error")
                    )
                )
            pending = data
        elif kind == "llm_request":
            requests += 1
            if pending is None:
                continue
            messages = (data.get("body") or {}).get("messages") or []
            found.append(
                RecordedRetrieval(
                    passages_in(messages),
                    list(pending.get("provenance") or []),
                    float(pending.get("elapsed_ms") or 0.0),
                    pending.get("error"),
                    exchange=requests,
                    query=query_of(messages),
                )
            )
            pending = None
    if pending is not None:
        found.append(
            RecordedRetrieval("", list(pending.get("provenance") or []), 0.0, pending.get("error"))
        )
    return found


def known_caller(recording: Recording) -> tuple[bool, dict[str, Any] | None, int]:
    """The caller lookup's result as the recorded requests show it (their "Known caller"
    line), and the number of the first request that had it (the lookup may have finished
    after the first turn's request went out): (True, the customer, n), (True, None, 0) for a
    caller not found, (False, None, 0) when the recording made no request to tell."""
    number = 0
    for event in recording.events:
        if event["kind"] != "llm_request":
            continue
        number += 1
        messages = (event.get("data") or {}).get("body", {}).get("messages") or []
        # The call's facts are in the system messages that open the request (the second since
        # 7 December, the end of the first before), never in the turn's notes that close it.
        for message in messages[:-1]:
            content = message.get("content")
            if message.get("role") != "system" or not isinstance(content, str):
                break
            at = content.find(_KNOWN_CALLER)
            if at >= 0:
                try:
                    found, _ = _JSON.raw_decode(content, at + len(_KNOWN_CALLER))
                except ValueError:
                    return False, None, 0
                return True, (found if isinstance(found, dict) else None), number
    return number > 0, None, 0


_KNOWN_CALLER = "Known caller: "
_JSON = json.JSONDecoder()


class CassetteDirectory:
    """Finds the caller the recording found (the session's ``CallerDirectory``): the replay's
    database is new, and the recorded customers are not in it. The answer comes once the
    requests made before it then have been made now, so each request has it or not as then."""

    def __init__(
        self, cassette: Cassette, customer: Mapping[str, Any] | None, from_request: int = 1
    ) -> None:
        self.cassette = cassette
        self.customer = customer
        self.from_request = from_request

    async def lookup(self, agent: AgentProfile, phone: str) -> Mapping[str, Any] | None:
        await self.cassette.until_served(self.from_request - 1)
        return self.customer


def query_of(messages: list[dict[str, Any]], *, count: int = 2, chars: int = 300) -> str:
    """The retrieval query of the turn that made a request: the caller's latest words, with a
    little recent context, as :meth:`relay.call.transcript.Transcript.recent_user_text` makes
    it from the same messages."""
    parts: list[str] = []
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str) and content:
            parts.append(content)
            if len(parts) == count or sum(len(p) for p in parts) > chars:
                break
    return " ".join(reversed(parts))


#: How long a request the recording does not have next waits, in case its turn is being cut off.
CUT_OFF_GRACE = 0.25


def _cut_off(exchange: Exchange) -> bool:
    """A recorded request whose turn ended before any answer came (nothing was said or done)."""
    return (
        not exchange.complete
        and not exchange.pieces
        and not exchange.tool_calls
        and exchange.error is None
    )


class Cassette:
    """Serves the recorded answers in order, noting every request that differs."""

    def __init__(self, recording: Recording, masker: Masker) -> None:
        self.exchanges = exchanges(recording)
        self.retrievals = retrievals(recording)
        self.masker = masker
        self.served = 0  # requests answered (or refused) so far
        self.position = 0  # the next recorded exchange
        self.skipped = 0  # recorded requests cut off before any answer, not made now
        self.retrieved = 0
        self.divergences: list[Divergence] = []
        self.translations: dict[str, str] = {}  # ignored values: recorded -> now
        self.tool_calls: list[dict[str, Any]] = []  # as served, for expectations
        self._last_body: bytes | None = None
        self._last: Exchange | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def until_served(self, count: int) -> None:
        """Wait until ``count`` requests have been answered (or refused)."""
        if self.served >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((count, waiter))
        await waiter

    def _wake(self) -> None:
        for count, waiter in self._waiters:
            if count <= self.served and not waiter.done():
                waiter.set_result(None)
        self._waiters = [(c, w) for c, w in self._waiters if not w.done()]

    @property
    def unused(self) -> int:
        """Recorded answers never asked for, leaving out requests cut off before any answer."""
        return sum(1 for e in self.exchanges[self.position :] if not _cut_off(e))

    def expected(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` is a request the recording has next (nothing is consumed)."""
        index = self._next_index(body)
        return index < len(self.exchanges) and self._matches(index, body)

    def _next_index(self, body: Mapping[str, Any]) -> int:
        """Where ``body`` is answered: the next exchange, or past recorded requests whose turn
        was cut off before any answer (an interrupt, a newer prompt or a hang-up that came
        sooner now, so the request was not made) when the one after them matches."""
        index = self.position
        if index >= len(self.exchanges) or self._matches(index, body):
            return index
        later = index
        while later < len(self.exchanges) and _cut_off(self.exchanges[later]):
            later += 1
            if later < len(self.exchanges) and self._matches(later, body):
                return later
        return index

    def _matches(self, index: int, body: Mapping[str, Any]) -> bool:
        return compare_requests(self.exchanges[index].body, body, self._mask) is None

    def answer(self, body: Mapping[str, Any], *, retry_aware: bool = False) -> Exchange | None:
        """The recorded answer to the next request (None past the end of the recording)."""
        raw = orjson.dumps(body)
        if (
            retry_aware
            and self._last is not None
            and self._last.error is not None
            and raw == self._last_body
        ):
            return self._last  # the server retrying a failure we served
        self._last_body = raw
        self.served += 1
        self._wake()
        index = self._next_index(body)
        if index >= len(self.exchanges):
            self.divergences.append(
                Divergence(
                    self.served,
                    "an LLM request the recording does not have",
                    render_request(body, self.masker),
                )
            )
            self._last = None
            return None
        self.skipped += index - self.position
        self.position = index + 1
        recorded = self.exchanges[index]
        self._learn(recorded.body, body)
        divergence = compare_requests(recorded.body, body, self._mask)
        if divergence is not None:
            self.divergences.append(Divergence(self.served, *divergence))
        self._last = recorded
        self.tool_calls.extend(self.calls(recorded))
        return recorded

    def _mask(self, text: str) -> str:
        return self.masker(text)

    def _learn(self, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        """Pair the ignored values (random ids...) of the two requests, message by message."""
        if not self.masker.patterns:
            return
        for old, new in zip(
            recorded.get("messages") or [], now.get("messages") or [], strict=False
        ):
            a, b = message_text(old), message_text(new)
            for pattern in self.masker.patterns:
                for x, y in zip(pattern.findall(a), pattern.findall(b), strict=False):
                    if isinstance(x, str) and isinstance(y, str) and x != y:
                        self.translations[x] = y

    def translate(self, text: str) -> str:
        for old, new in self.translations.items():
            text = text.replace(old, new)
        return text

    def pieces(self, exchange: Exchange) -> list[str]:
        if not self.translations:
            return exchange.pieces
        pieces = [self.translate(p) for p in exchange.pieces]
        if any(old in "".join(pieces) for old in self.translations):
            return [self.translate("".join(exchange.pieces))]  # a value split across pieces
        return pieces

    def calls(self, exchange: Exchange) -> list[dict[str, Any]]:
        return [
            {**c, "arguments": self.translate(str(c.get("arguments") or "{}"))}
            for c in exchange.tool_calls
        ]

    def retrieval(self, query: str | None = None) -> RecordedRetrieval | None:
        """The recorded retrieval of the turn asking now. In order, except that one whose turn
        was cut off before any answer (so perhaps before its retrieval now) is passed over when
        a later one, past only such, was made for the same ``query``."""
        if self.retrieved >= len(self.retrievals):
            return None
        chosen = self.retrieved
        if query is not None:
            for index in range(self.retrieved, len(self.retrievals)):
                recorded = self.retrievals[index]
                if recorded.query == query:
                    chosen = index
                    break
                if recorded.exchange is not None and not _cut_off(
                    self.exchanges[recorded.exchange - 1]
                ):
                    break  # a turn that was answered: it must have its retrieval now too
        self.retrieved = chosen + 1
        return self.retrievals[chosen]


class CassetteLLM:
    """A :class:`~relay.llm.client.ChatModel` that answers from a :class:`Cassette`."""

    def __init__(self, cassette: Cassette, *, grace: float = CUT_OFF_GRACE) -> None:
        self.cassette = cassette
        self.grace = grace

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        body = {**request.body(), "messages": [dict(m) for m in request.messages]}
        if not self.cassette.expected(body):
            # Perhaps a request the recording never made: a turn the caller cut off (an
            # interrupt, a hang-up, a newer prompt) before its request went out then, and a
            # moment later now. Give that frame time to land; a cancelled turn leaves no trace.
            await asyncio.sleep(self.grace)
        exchange = self.cassette.answer(body)
        if exchange is None:
            raise LLMError(f"the recording has no answer for LLM request #{self.cassette.served}")
        for piece in self.cassette.pieces(exchange):
            yield TextDelta(piece)
        if exchange.error is not None:
            raise LLMError(exchange.error)
        if not exchange.complete:
            # Cut off in the recording (interrupted or superseded): still streaming, until the
            # caller does again what stopped it then.
            await asyncio.Event().wait()
        calls = tuple(
            ToolCall(str(c.get("id")), str(c.get("name")), str(c.get("arguments")))
            for c in self.cassette.calls(exchange)
        )
        reason = exchange.finish_reason or ("tool_calls" if calls else "stop")
        yield Done(reason, calls, attempts=exchange.attempts or 1)


class CassetteRetriever:
    """Hands back the recorded retrieval of each turn (the session's ``Retriever``)."""

    def __init__(self, cassette: Cassette) -> None:
        self.cassette = cassette

    async def retrieve(self, agent: AgentProfile, query: str) -> Retrieved | None:
        recorded = self.cassette.retrieval(query)
        if recorded is None:
            return None
        return Retrieved(
            message=recorded.message,
            provenance=recorded.provenance,
            elapsed_ms=recorded.elapsed_ms,
            error=recorded.error,
        )


# == the recorded model answers over HTTP (for --url) =====================================


def cassette_app(holder: dict[str, Cassette]) -> Any:
    """An OpenAI-compatible chat-completions server answering from ``holder["cassette"]``."""

    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(
                {"error": {"message": "the body is not JSON", "type": "invalid_request_error"}},
                status_code=400,
            )
        cassette = holder.get("cassette")
        if cassette is None:
            return JSONResponse(
                {"error": {"message": "no recording is being replayed", "type": "server_error"}},
                status_code=503,
            )
        exchange = cassette.answer(body, retry_aware=True)
        if exchange is None:
            message = f"the recording has no answer for LLM request #{cassette.served}"
            return JSONResponse(
                {"error": {"message": message, "type": "server_error"}}, status_code=500
            )
        if exchange.error is not None and not exchange.pieces:
            match = re.search(r"HTTP (\d{3})", exchange.error)
            status = int(match.group(1)) if match else 500
            return JSONResponse(
                {"error": {"message": exchange.error, "type": "server_error"}}, status_code=status
            )
        return StreamingResponse(
            _sse(cassette, exchange, str(body.get("model") or "replay")),
            media_type="text/event-stream",
        )

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": "relay-replay", "object": "model", "created": 0, "owned_by": "relay"}
                ],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


async def _sse(cassette: Cassette, exchange: Exchange, model: str) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {"id": f"chatcmpl-replay-{exchange.number}", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in cassette.pieces(exchange):
        yield chunk({"content": piece})
    if exchange.error is not None:
        yield (
            b"data: "
            + orjson.dumps({"error": {"message": exchange.error, "type": "server_error"}})
            + b"\n\n"
        )
        return
    if not exchange.complete:
        await asyncio.Event().wait()  # still streaming when the caller cut in; ends on disconnect
    calls = cassette.calls(exchange)
    for index, call in enumerate(calls):
        function = {"name": call.get("name"), "arguments": call.get("arguments")}
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": call.get("id"), "type": "function", "function": function}
                ]
            }
        )
    yield chunk({}, exchange.finish_reason or ("tool_calls" if calls else "stop"))
    yield b"data: [DONE]\n\n"


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, host: str, port: int) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on this event loop; yields ``http://host:port``.

    Port 0 picks a free port. The app's lifespan is not run.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",  # the caller runs the app's lifespan, if it has one
        ws_ping_interval=None,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn's when it cannot bind: out of a task, it would
            # escape the event loop (a traceback and "Task exception was never retrieved")
            raise ConfigError(f"cannot listen on {host}:{port}") from exc

    task = asyncio.create_task(serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise ConfigError(f"cannot listen on {host}:{port}")
            await asyncio.sleep(0.005)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task
