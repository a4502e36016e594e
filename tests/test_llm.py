"""OpenAIChat against the scripted OpenAI-compatible server, over both transports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest
import pytest_asyncio
import respx
from starlette.types import Receive, Scope, Send

from relay.caller import serve_in_process
from relay.errors import FirstTokenTimeout, LLMError
from relay.llm import ChatRequest, Done, LLMEvent, OpenAIChat, TextDelta
from relay.testing import Break, Fail, ScriptedLLM, Stall, Text, ToolCall, ToolCalls

REQUEST = ChatRequest(
    model="gpt-4o-mini",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    temperature=0.3,
    max_tokens=100,
)

Connect = Callable[..., AbstractAsyncContextManager[OpenAIChat]]

# One server for the module (each start and stop costs a uvicorn tick); every test gets a
# fresh script, so nothing carries over between tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")


class Switchboard:
    """An ASGI app that hands each request to the current test's ScriptedLLM."""

    def __init__(self) -> None:
        self.llm = ScriptedLLM()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.llm.app(scope, receive, send)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[tuple[Switchboard, str]]:
    board = Switchboard()
    async with serve_in_process(board) as base:
        yield board, base + "/v1"


@pytest.fixture(params=["fast", "sdk"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(server: tuple[Switchboard, str], transport: str) -> Connect:
    """``async with connect(llm, **options) as chat``: an OpenAIChat on the fake LLM ``llm``."""
    board, base_url = server

    @asynccontextmanager
    async def make(llm: ScriptedLLM, **options: Any) -> AsyncIterator[OpenAIChat]:
        options.setdefault("backoff", 0.001)
        board.llm = llm
        async with httpx.AsyncClient() as http:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", http_client=http)
            yield OpenAIChat(client, http=http, transport=transport, **options)  # type: ignore[arg-type]

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
    assert events[-1] == Done(finish_reason="stop", tool_calls=(), attempts=1, usage=None)
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
    async with connect(llm, first_token_timeout=0.2, max_retries=0) as chat:
        with pytest.raises(FirstTokenTimeout):
            await collect(chat)

    assert len(llm.requests) == 1


async def test_a_first_token_timeout_is_retried(connect: Connect) -> None:
    llm = ScriptedLLM([Stall(30, then=Text("too late")), Text("On time.")])
    async with connect(llm, first_token_timeout=0.5, max_retries=1) as chat:
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
    async with httpx.AsyncClient() as http:
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k", http_client=http)
        chat = OpenAIChat(client, http=http, transport=transport, max_retries=1, backoff=0.001)  # type: ignore[arg-type]
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.retryable


async def test_an_error_object_in_the_stream_is_an_llm_error(transport: str) -> None:
    # Some OpenAI-compatible servers (vLLM, proxies) report a failure as a data: line.
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}  # fmt: skip
    body = (
        b"data: "
        + orjson.dumps(chunk)
        + b"\n\ndata: "
        + orjson.dumps({"error": {"message": "model overloaded"}})
        + b"\n\n"
    )
    received: list[LLMEvent] = []
    with respx.mock(assert_all_called=True) as mock:
        mock.post("http://llm.test/v1/chat/completions").respond(
            200, content=body, headers={"content-type": "text/event-stream"}
        )
        async with httpx.AsyncClient() as http:
            client = openai.AsyncOpenAI(
                base_url="http://llm.test/v1", api_key="k", http_client=http
            )
            chat = OpenAIChat(client, http=http, transport=transport, max_retries=0)  # type: ignore[arg-type]
            with pytest.raises(LLMError, match="model overloaded"):
                async for event in chat.stream(REQUEST):
                    received.append(event)

    assert texts(received) == ["Hi"]
