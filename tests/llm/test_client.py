"""OpenAIChat against the scripted OpenAI-compatible server (real uvicorn, real sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import pytest_asyncio
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.agents import AgentProfile
from relay.errors import FirstTokenTimeout, LLMConfigError, LLMError
from relay.llm.client import OpenAIChat, _Pace, _ReadWatch, retry_after
from relay.llm.sse import SSEDecoder
from relay.llm.types import ChatRequest, Done, LLMEvent, TextDelta, Timeouts, Usage
from relay.testing import (
    Break,
    Fail,
    JSONBody,
    Malformed,
    NoDone,
    Redirect,
    ScriptedLLM,
    Stall,
    Text,
    ToolCall,
    ToolCalls,
)
from relay.testing.simcall import serve_in_process

REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    temperature=0.3,
    max_tokens=100,
)
TRANSPORTS = ["aiohttp", "lean"]

Connect = Callable[..., AbstractAsyncContextManager[OpenAIChat]]

# One server for the module (each start and stop costs a uvicorn tick); every test gets a
# fresh script, so nothing carries over between tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")


class Switchboard:
    """An ASGI app that hands each request to the current test's app (a ScriptedLLM's).

    ``clients`` holds the client (host, port) of every HTTP request, in order: one port
    for several requests means one TCP connection was reused.
    """

    def __init__(self) -> None:
        self.app: ASGIApp = ScriptedLLM().app
        self.clients: list[tuple[str, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.clients.append(tuple(scope["client"]))  # type: ignore[arg-type]
        await self.app(scope, receive, send)

    def use(self, app: ASGIApp) -> None:
        self.app = app
        self.clients = []

    @property
    def ports(self) -> list[int]:
        return [port for _, port in self.clients]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[tuple[Switchboard, str]]:
    board = Switchboard()
    async with serve_in_process(board) as base:
        yield board, base + "/v1"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(server: tuple[Switchboard, str], transport: str) -> Connect:
    """``async with connect(llm, **options) as chat``: an OpenAIChat on the fake LLM ``llm``
    (a ScriptedLLM, or any ASGI app)."""
    board, base_url = server

    @asynccontextmanager
    async def make(llm: ScriptedLLM | ASGIApp, **options: Any) -> AsyncIterator[OpenAIChat]:
        options.setdefault("backoff", 0.001)
        board.use(llm.app if isinstance(llm, ScriptedLLM) else llm)
        chat = OpenAIChat(base_url, "sk-test", transport=transport, **options)  # type: ignore[arg-type]
        try:
            yield chat
        finally:
            await chat.aclose()

    return make


async def collect(chat: OpenAIChat, request: ChatRequest = REQUEST) -> list[LLMEvent]:
    return [event async for event in chat.stream(request)]


def texts(events: list[LLMEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


async def test_text_streams_as_separate_untrimmed_deltas(connect: Connect) -> None:
    llm = ScriptedLLM(
        [Text("Hello there, friend.", chunks=["Hel", "lo", " there", ",", " friend", "."])]
    )
    async with connect(llm) as chat:
        events = await collect(chat)

    assert texts(events) == ["Hel", "lo", " there", ",", " friend", "."]
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.finish_reason, done.tool_calls, done.attempts) == ("stop", (), 1)
    assert sum(isinstance(e, Done) for e in events) == 1


async def test_the_request_body_is_what_openai_expects(connect: Connect) -> None:
    llm = ScriptedLLM([Text("ok")])
    tools = [
        {
            "type": "function",
            "function": {
                "name": "end_call",
                "description": "End.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    request = ChatRequest(
        model="m-1", messages=REQUEST.messages, tools=tools, temperature=0.3, max_tokens=100
    )
    async with connect(llm) as chat:
        await collect(chat, request)

    [body] = llm.requests
    assert body["model"] == "m-1"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == list(REQUEST.messages)
    assert body["tools"] == tools
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 100


async def test_a_tool_call_split_across_deltas_is_assembled(connect: Connect) -> None:
    arguments = {
        "reason": "caller asked for a person",
        "summary": "Wants a quote for a Steinway grand, Brunswick to Geelong.",
    }
    llm = ScriptedLLM([ToolCalls([ToolCall("transfer_to_person", arguments, id="call_abc")])])
    async with connect(llm) as chat:
        events = await collect(chat)

    assert texts(events) == []
    [done] = events
    assert isinstance(done, Done)
    assert done.finish_reason == "tool_calls"
    [call] = done.tool_calls
    assert (call.id, call.name) == ("call_abc", "transfer_to_person")
    assert orjson.loads(call.arguments) == arguments


async def test_text_then_several_tool_calls(connect: Connect) -> None:
    llm = ScriptedLLM(
        [
            ToolCalls(
                [
                    ToolCall("switch_language", {"language": "es-ES"}),
                    ToolCall("end_call", {"reason": "bye"}),
                ],
                text="One moment.",
            )
        ]
    )
    async with connect(llm) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "One moment."
    done = events[-1]
    assert isinstance(done, Done)
    assert [(c.name, orjson.loads(c.arguments)) for c in done.tool_calls] == [
        ("switch_language", {"language": "es-ES"}), ("end_call", {"reason": "bye"}),
    ]  # fmt: skip
    assert done.tool_calls[0].id != done.tool_calls[1].id


@pytest.mark.parametrize("status", [500, 429, 503])
async def test_an_error_before_the_first_token_is_retried(connect: Connect, status: int) -> None:
    llm = ScriptedLLM([Fail(status), Text("Second time lucky.")])
    async with connect(llm, max_retries=2) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "Second time lucky."
    assert isinstance(events[-1], Done) and events[-1].attempts == 2
    assert len(llm.requests) == 2
    assert llm.requests[0] == llm.requests[1]


async def test_retries_give_up_after_max_retries(connect: Connect) -> None:
    llm = ScriptedLLM([Fail(500), Fail(500), Fail(500), Text("never")])
    async with connect(llm, max_retries=2) as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.status == 500
    assert caught.value.retryable
    assert len(llm.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(connect: Connect, status: int) -> None:
    llm = ScriptedLLM([Fail(status), Text("never")])
    async with connect(llm, max_retries=2) as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.status == status
    assert not caught.value.retryable
    assert len(llm.requests) == 1


async def test_first_token_timeout(connect: Connect) -> None:
    llm = ScriptedLLM([Stall(30, then=Text("too late"))])
    async with connect(llm, timeouts=Timeouts(first_token=0.2), max_retries=0) as chat:
        with pytest.raises(FirstTokenTimeout):
            await collect(chat)

    assert len(llm.requests) == 1


async def test_a_first_token_timeout_is_retried(connect: Connect) -> None:
    llm = ScriptedLLM([Stall(30, then=Text("too late")), Text("On time.")])
    async with connect(llm, timeouts=Timeouts(first_token=0.5), max_retries=1) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "On time."
    assert isinstance(events[-1], Done) and events[-1].attempts == 2


async def test_a_break_mid_stream_raises_after_the_tokens_and_is_not_retried(
    connect: Connect,
) -> None:
    llm = ScriptedLLM([Break("Let me check the price for you.", after_chunks=3), Text("never")])
    received: list[LLMEvent] = []
    async with connect(llm, max_retries=2) as chat:
        with pytest.raises(LLMError):
            async for event in chat.stream(REQUEST):
                received.append(event)

    assert texts(received) == ["Let", " me", " check"]
    assert not any(isinstance(e, Done) for e in received)
    assert len(llm.requests) == 1  # the caller has heard something: never retried


async def test_a_break_before_any_token_is_retried(connect: Connect) -> None:
    llm = ScriptedLLM([Break("Lost.", after_chunks=0), Text("Found.")])
    async with connect(llm, max_retries=1) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "Found."
    assert len(llm.requests) == 2


async def test_an_unreachable_server_is_an_llm_error(transport: str) -> None:
    chat = OpenAIChat(
        "http://127.0.0.1:9/v1", "k", transport=transport, max_retries=1, backoff=0.001
    )  # type: ignore[arg-type]
    with pytest.raises(LLMError) as caught:
        await collect(chat)
    await chat.aclose()

    assert caught.value.retryable
    assert caught.value.kind == "connect"
    assert chat.failures.snapshot()["connect"] == 2
    assert chat.failures.turns_failed == 1


def sse_app(*pieces: bytes, pause: float = 0.0) -> ASGIApp:
    """An ASGI app answering every request with a 200 event stream sent as ``pieces``, each
    its own HTTP chunk (``pause`` seconds apart, so each arrives on its own)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for piece in pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            if pause:
                await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def chunk(content: str) -> bytes:
    return orjson.dumps(
        {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    )  # fmt: skip


async def test_an_error_object_in_the_stream_is_an_llm_error(connect: Connect) -> None:
    # Some OpenAI-compatible servers (vLLM, proxies) report a failure as a data: line.
    body = (
        b"data: "
        + chunk("Hi")
        + b"\n\ndata: "
        + orjson.dumps({"error": {"message": "model overloaded"}})
        + b"\n\n"
    )
    received: list[LLMEvent] = []
    async with connect(sse_app(body), max_retries=0) as chat:
        with pytest.raises(LLMError, match="model overloaded"):
            async for event in chat.stream(REQUEST):
                received.append(event)

    assert texts(received) == ["Hi"]


async def test_data_lines_split_across_chunks_and_every_line_ending(connect: Connect) -> None:
    stream = (
        b": a comment\r\n\r\n"
        b"data: " + chunk("One") + b"\r\n\r\n"
        b"data: " + chunk(", two") + b"\n\n"
        b"data:" + chunk(", three") + b"\r\r"
        b"\n\n"  # blank lines between events change nothing
        b"data: " + chunk(".") + b"\n\n"
        b"data: [DONE]\n\n"
    )
    # Cut inside "data:", inside the JSON, between \r and \n, and in the middle of [DONE].
    cuts = [3, stream.index(b"One") + 1, stream.index(b"\r\n\r\n") + 1, len(stream) - 6]
    bounds = [0, *sorted(cuts), len(stream)]
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    async with connect(sse_app(*pieces, pause=0.01)) as chat:
        events = await collect(chat)

    assert texts(events) == ["One", ", two", ", three", "."]
    assert isinstance(events[-1], Done)


async def test_a_stream_cut_before_done_is_an_error_retried_if_nothing_was_said(
    connect: Connect, server: tuple[Switchboard, str], transport: str
) -> None:
    board, _ = server
    async with connect(sse_app(b": nothing yet\n\n"), max_retries=1) as chat:
        with pytest.raises(LLMError, match="without a finish_reason or \\[DONE\\]"):
            await collect(chat)

    assert len(board.clients) == 2


async def test_the_connection_is_kept_for_the_next_turn(
    connect: Connect, server: tuple[Switchboard, str]
) -> None:
    board, _ = server
    llm = ScriptedLLM([Text("One."), Fail(503), Text("Two."), Text("Three.")])
    async with connect(llm, max_retries=1) as chat:
        for _ in range(3):
            await collect(chat)

    assert len(board.ports) == 4
    assert len(set(board.ports)) == 1, board.clients  # one TCP connection, error reply included


async def test_the_connection_is_kept_when_the_body_ends_after_done(
    connect: Connect, server: tuple[Switchboard, str]
) -> None:
    board, _ = server
    # The chunked terminator comes 20 ms after [DONE], in its own packet.
    app = sse_app(b"data: " + chunk("Hi.") + b"\n\n", b"data: [DONE]\n\n", pause=0.02)
    async with connect(app) as chat:
        for _ in range(3):
            assert texts(await collect(chat)) == ["Hi."]

    assert len(board.ports) == 3
    assert len(set(board.ports)) == 1, board.clients


async def test_a_cancelled_stream_does_not_give_its_connection_back(
    connect: Connect, server: tuple[Switchboard, str], transport: str
) -> None:
    board, _ = server
    llm = ScriptedLLM([Text("One two three four five six seven eight."), Text("Fresh.")])
    llm.token_delay = 0.05
    async with connect(llm) as chat:
        first = asyncio.Event()

        async def turn() -> None:
            async for event in chat.stream(REQUEST):
                if isinstance(event, TextDelta):
                    first.set()

        task = asyncio.create_task(turn())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        llm.token_delay = 0.0
        events = await collect(chat)

    assert "".join(texts(events)) == "Fresh."
    assert len(board.ports) == 2
    assert board.ports[0] != board.ports[1]  # half-read: never reused


async def test_a_stream_left_after_its_first_delta_closes_its_connection(
    connect: Connect, server: tuple[Switchboard, str]
) -> None:
    board, _ = server
    llm = ScriptedLLM([Text("One two three four five."), Text("Fresh.")], token_delay=0.05)
    async with connect(llm) as chat:
        stream = chat.stream(REQUEST)
        async for event in stream:
            assert isinstance(event, TextDelta)
            break
        await stream.aclose()  # type: ignore[attr-defined]
        events = await collect(chat)

    assert "".join(texts(events)) == "Fresh."
    assert board.ports[0] != board.ports[1]


async def test_unknown_transports_fail() -> None:
    assert OpenAIChat("http://llm.test/v1").transport == "aiohttp"
    with pytest.raises(ValueError, match="unknown LLM transport"):
        OpenAIChat("http://llm.test/v1", transport="h2")  # type: ignore[arg-type]


# --- SSEDecoder ---------------------------------------------------------------------------------

SSE_SAMPLE = (
    b": comment\r\n"
    b"data: one\r\n\r\n"
    b"event: message\nid: 7\nretry: 10\ndata:two\n\n"
    b"data: three\rdata:  four\r\r"
    b"data: [DONE]\n\n"
    b"data: unfinished"
)
SSE_EVENTS = [b"one", b"two", b"three\n four", b"[DONE]"]


async def test_sse_events_are_the_same_however_the_bytes_are_cut() -> None:
    for cut in range(len(SSE_SAMPLE) + 1):
        decoder = SSEDecoder()
        events = decoder.feed(SSE_SAMPLE[:cut]) + decoder.feed(SSE_SAMPLE[cut:])
        assert events == SSE_EVENTS, cut
    decoder = SSEDecoder()
    assert [e for byte in SSE_SAMPLE for e in decoder.feed(bytes([byte]))] == SSE_EVENTS


async def test_sse_events_without_data_are_skipped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": keep-alive\n\nevent: ping\n\n\n\ndata: x\n\n") == [b"x"]


# --- Trouble: what is retried, what is not, and within which time ---------------------------


class Waits:
    """Records the client's back-off waits instead of sleeping them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_a_stream_ended_after_a_finish_reason_without_done_is_complete(
    connect: Connect,
) -> None:
    llm = ScriptedLLM([NoDone(Text("All done here.")), Text("never")])
    async with connect(llm, max_retries=2) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "All done here."
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.attempts == 1
    assert done.usage is not None and not done.usage.estimated  # the usage chunk came first
    assert len(llm.requests) == 1
    assert chat.failures.total == 0


async def test_tool_calls_ended_without_done_are_complete(connect: Connect) -> None:
    llm = ScriptedLLM([NoDone(ToolCalls([ToolCall("end_call", {"reason": "bye"}, id="c1")]))])
    async with connect(llm) as chat:
        [done] = await collect(chat)

    assert isinstance(done, Done) and done.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in done.tool_calls] == [("c1", "end_call")]


async def test_a_malformed_first_chunk_is_retried_like_a_5xx(connect: Connect) -> None:
    llm = ScriptedLLM([Malformed(), Text("Second try.")])
    async with connect(llm, max_retries=2) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "Second try."
    assert isinstance(events[-1], Done) and events[-1].attempts == 2
    assert chat.failures.snapshot() == {
        "connect": 0, "timeout": 0, "status": 0, "malformed": 1, "stream-broken": 0, "config": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": "x", "choices": [{"index": 0, "delta": ["a", "b"]}]}',
        b'{"id": "x", "choices": [{"index": 0, "delta": {"content": 12345}}]}',
        b'{"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": ["notadict"]}}]}',
        b'{"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c",'
        b' "function": {"name": 42, "arguments": {"a": 1}}}]}}]}',
    ],
    ids=["delta a list", "content a number", "a tool call a string", "a tool name a number"],
)
async def test_a_first_chunk_of_the_wrong_shape_is_malformed_and_retried(
    connect: Connect, payload: bytes
) -> None:
    llm = ScriptedLLM([Malformed(payload), Text("Second try.")])
    async with connect(llm, max_retries=2) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "Second try."
    assert isinstance(events[-1], Done) and events[-1].attempts == 2
    assert chat.failures["malformed"] == 1


async def test_a_malformed_chunk_after_words_is_raised_not_retried(connect: Connect) -> None:
    body = b"data: " + chunk("Hi") + b"\n\ndata: {not json\n\n"
    received: list[LLMEvent] = []
    async with connect(sse_app(body), max_retries=2) as chat:
        with pytest.raises(LLMError) as caught:
            async for event in chat.stream(REQUEST):
                received.append(event)

    assert texts(received) == ["Hi"]
    assert caught.value.kind == "malformed" and not caught.value.retryable


async def test_a_json_body_is_a_configuration_error_never_retried(
    connect: Connect, server: tuple[Switchboard, str]
) -> None:
    _, base_url = server
    llm = ScriptedLLM([JSONBody("Hello."), Text("never")])
    async with connect(llm, max_retries=2) as chat:
        with pytest.raises(LLMConfigError) as caught:
            await collect(chat)

    message = str(caught.value)
    assert f"{base_url}/chat/completions" in message
    assert "application/json" in message and "not text/event-stream" in message
    assert caught.value.kind == "config" and not caught.value.retryable
    assert len(llm.requests) == 1
    assert chat.failures["config"] == 1


async def test_a_redirect_is_a_configuration_error_naming_the_location(
    connect: Connect, server: tuple[Switchboard, str]
) -> None:
    _, base_url = server
    llm = ScriptedLLM([Redirect("https://api.example.com/v1/chat/completions"), Text("never")])
    async with connect(llm, max_retries=2) as chat:
        with pytest.raises(LLMConfigError) as caught:
            await collect(chat)

    message = str(caught.value)
    assert f"{base_url}/chat/completions" in message and "HTTP 302" in message
    assert "https://api.example.com/v1/chat/completions" in message
    assert len(llm.requests) == 1  # not followed, not retried


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(connect: Connect, status: int) -> None:
    llm = ScriptedLLM([Fail(status, retry_after=1.5), Text("Thanks for waiting.")])
    waits = Waits()
    async with connect(llm, max_retries=2, timeouts=Timeouts(turn=10)) as chat:
        chat.sleep = waits
        events = await collect(chat)

    assert "".join(texts(events)) == "Thanks for waiting."
    assert waits.seconds == [1.5]  # retry-after-ms, the more precise of the two headers


async def test_retry_after_as_an_http_date(connect: Connect) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    llm = ScriptedLLM([Fail(429, retry_after=when), Text("Ok.")])
    waits = Waits()
    async with connect(llm, max_retries=1, timeouts=Timeouts(turn=10)) as chat:
        chat.sleep = waits
        await collect(chat)

    [wait] = waits.seconds
    assert 1.0 < wait <= 3.0


async def test_a_retry_after_beyond_the_turn_budget_gives_up_at_once(connect: Connect) -> None:
    llm = ScriptedLLM([Fail(429, retry_after=30), Text("never")])
    waits = Waits()
    async with connect(llm, max_retries=2, timeouts=Timeouts(turn=4.5)) as chat:
        chat.sleep = waits
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.status == 429 and caught.value.retry_after == 30
    assert waits.seconds == []
    assert len(llm.requests) == 1


async def test_retry_after_values() -> None:
    def header(values: dict[str, str]) -> Any:
        return lambda name: values.get(name)

    assert retry_after(header({})) is None
    assert retry_after(header({"retry-after": "2"})) == 2.0
    assert retry_after(header({"retry-after": "0.5"})) == 0.5
    assert retry_after(header({"retry-after": "-3"})) == 0.0
    assert retry_after(header({"retry-after": "2", "retry-after-ms": "1250"})) == 1.25
    assert retry_after(header({"retry-after": "soon"})) is None
    date = "Sun, 06 Dec 2026 10:00:30 GMT"
    now = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after(header({"retry-after": date}), now=now) == 30.0
    assert retry_after(header({"retry-after": date}), now=now + 60) == 0.0


async def test_the_turn_budget_bounds_every_attempt(connect: Connect) -> None:
    llm = ScriptedLLM(default=Stall(30, then=Text("too late")))
    async with connect(llm, max_retries=10, timeouts=Timeouts(first_token=0.2, turn=0.3)) as chat:
        with pytest.raises(FirstTokenTimeout):
            await collect(chat)

    assert 1 <= len(llm.requests) <= 2  # not the 11 attempts max_retries allows
    assert chat.failures["timeout"] == len(llm.requests)


async def test_a_request_deadline_shortens_the_turn(connect: Connect) -> None:
    llm = ScriptedLLM(default=Stall(30, then=Text("too late")))
    request = dataclasses.replace(REQUEST, deadline=time.perf_counter() + 0.2)
    async with connect(llm, max_retries=5, timeouts=Timeouts(first_token=20, turn=20)) as chat:
        with pytest.raises(FirstTokenTimeout):
            await asyncio.wait_for(collect(chat, request), 10)

    assert len(llm.requests) == 1


async def test_a_slow_model_is_served_when_the_first_token_timeout_allows(
    connect: Connect,
) -> None:
    # RELAY_LLM_FIRST_TOKEN_TIMEOUT=120 for a slow local model: the turn budget (shorter by
    # default) never cuts a first-token wait short, and nothing else caps it.
    llm = ScriptedLLM([Stall(0.6, then=Text("Finally."))])
    async with connect(llm, max_retries=0, timeouts=Timeouts(first_token=5, turn=0.1)) as chat:
        events = await collect(chat)

    assert "".join(texts(events)) == "Finally."


async def test_per_request_timeouts_override_the_client(connect: Connect) -> None:
    llm = ScriptedLLM([Stall(0.6, then=Text("Agent's own limits."))])
    request = dataclasses.replace(REQUEST, timeouts=Timeouts(first_token=5))
    async with connect(llm, max_retries=0, timeouts=Timeouts(first_token=0.1)) as chat:
        events = await collect(chat, request)

    assert "".join(texts(events)) == "Agent's own limits."


async def test_a_pause_between_chunks_beyond_the_read_timeout_fails_the_stream(
    connect: Connect,
) -> None:
    llm = ScriptedLLM([Text("One two three.")], token_delay=1.0)
    received: list[LLMEvent] = []
    async with connect(llm, max_retries=2, timeouts=Timeouts(read=0.2)) as chat:
        with pytest.raises(LLMError) as caught:
            async for event in chat.stream(REQUEST):
                received.append(event)

    assert texts(received) == ["One"]
    assert caught.value.kind == "timeout" and not caught.value.retryable
    assert len(llm.requests) == 1


# --- Usage ------------------------------------------------------------------------------------


async def test_usage_from_the_stream_with_cached_tokens(connect: Connect) -> None:
    llm = ScriptedLLM([Text("Hello there."), Text("Sure.")])
    async with connect(llm) as chat:
        first = await collect(chat)
        longer = [*REQUEST.messages, {"role": "assistant", "content": "Hello there."},
                  {"role": "user", "content": "Can you help?"}]  # fmt: skip
        second = await collect(chat, dataclasses.replace(REQUEST, messages=longer))

    one, two = first[-1], second[-1]
    assert isinstance(one, Done) and isinstance(two, Done)
    assert one.usage is not None and two.usage is not None
    # system (4 + 3 tokens) + user (4 + 2 tokens); the reply is 3 deltas.
    assert one.usage == Usage(
        prompt_tokens=13, completion_tokens=3, cached_tokens=one.usage.cached_tokens
    )
    assert two.usage == Usage(prompt_tokens=13 + 7 + 8, completion_tokens=2, cached_tokens=13)
    assert not two.usage.estimated
    assert two.usage.as_dict() == {
        "prompt_tokens": 28, "completion_tokens": 2, "total_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 13}, "estimated": False,
    }  # fmt: skip


async def test_usage_is_estimated_when_the_server_sends_none(connect: Connect) -> None:
    body = b"data: " + chunk("Twelve chars") + b"\n\ndata: [DONE]\n\n"
    async with connect(sse_app(body)) as chat:
        events = await collect(chat)

    done = events[-1]
    assert isinstance(done, Done) and done.usage is not None
    # "Be brief." (9 chars) and "Hi there" (8): 4 + 2 and 4 + 2, plus 3 to prime the reply.
    assert done.usage == Usage(prompt_tokens=15, completion_tokens=3, estimated=True)


async def test_an_agents_llm_table_overrides_the_settings_it_names() -> None:
    agent = AgentProfile.model_validate(
        {
            "name": "slow", "business_name": "B", "system_prompt": "S", "welcome_greeting": "Hi",
            "relay": {"report_input_during_agent_speech": "none"},
            "llm": {"first_token_timeout": 120, "read_timeout": 30},
        }
    )  # fmt: skip
    settings = Timeouts(connect=3.0, first_token=3.0, read=10.0, turn=4.5)

    assert Timeouts.of(agent.llm).over(settings) == Timeouts(3.0, 120, 30, 4.5)
    with pytest.raises(ValidationError):
        AgentProfile.model_validate({**agent.model_dump(), "llm": {"first_token": 1}})


# --- The read watch: one timer for a stream's waits ----------------------------------------


async def test_the_read_watch_times_out_a_wait_past_its_limit_only() -> None:
    loop = asyncio.get_running_loop()
    watch = _ReadWatch(loop, loop.time() + 0.05)
    never: asyncio.Future[bytes] = loop.create_future()
    with pytest.raises(TimeoutError):
        await watch.wait(never)
    watch.close()


async def test_the_read_watch_never_cancels_the_consumers_work_between_waits() -> None:
    loop = asyncio.get_running_loop()
    watch = _ReadWatch(loop, loop.time() + 0.05)
    ready: asyncio.Future[bytes] = loop.create_future()
    ready.set_result(b"one")
    assert await watch.wait(ready) == b"one"
    await asyncio.sleep(0.12)  # the consumer's own work, past the limit: not cancelled
    late: asyncio.Future[bytes] = loop.create_future()
    late.set_result(b"two")  # already received: handed over, as asyncio.timeout_at would
    assert await watch.wait(late) == b"two"
    never: asyncio.Future[bytes] = loop.create_future()
    with pytest.raises(TimeoutError):
        await watch.wait(never)  # nothing received and past the limit
    watch.close()


async def test_the_read_watch_follows_a_limit_moved_by_each_chunk() -> None:
    loop = asyncio.get_running_loop()
    watch = _ReadWatch(loop, loop.time() + 0.2)
    for piece in (b"a", b"b", b"c", b"d", b"e", b"f"):
        arrives: asyncio.Future[bytes] = loop.create_future()
        loop.call_later(0.05, arrives.set_result, piece)  # each well within 0.2 s of the last
        assert await watch.wait(arrives) == piece
        watch.when = loop.time() + 0.2
    # six chunks 0.05 s apart outlived the first limit (0.2 s) without a timeout
    watch.close()


async def test_an_outside_cancellation_of_a_watched_wait_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()

    async def reader() -> bytes:
        watch = _ReadWatch(loop, loop.time() + 10)
        never: asyncio.Future[bytes] = loop.create_future()
        try:
            return await watch.wait(never)
        finally:
            watch.close()

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_reply_is_paced_after_its_first_clause_and_never_ahead_of_its_speech() -> None:
    pace = _Pace(0.25)
    pace.said("Sure")
    assert not pace.on  # no clause's end yet: chunk by chunk
    pace.said(",")
    assert pace.on
    assert pace.pause() == pytest.approx(5 / 60)  # "Sure," is a third of a second of speech
    pace.said(" the move is booked for Tuesday")
    assert pace.pause() == 0.25  # the interval, once enough has been said
    pace.stop()
    assert not pace.on and pace.next_read == 0.0
    pace.said(" and more words, many more.")
    assert not pace.on  # a tool call ended it for good

    off = _Pace(0.0)
    off.said("Sure, the move is booked for Tuesday.")
    assert not off.on
