"""The scripted fake LLM, checked through the real openai client and on the raw wire."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from relay.testing import (
    Break,
    Fail,
    FakeLLMServer,
    JSONBody,
    Malformed,
    NoDone,
    Redirect,
    ScriptedLLM,
    Stall,
    Text,
    ToolCall,
    ToolCalls,
    echo_reply,
)

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer the phone."},
    {"role": "user", "content": "Hello, is anyone there?"},
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def client(server: FakeLLMServer, http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", http_client=http, max_retries=0
    )


async def stream_chunks(client: openai.AsyncOpenAI, **extra: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model="scripted", messages=MESSAGES, stream=True, **extra
    )
    return [chunk async for chunk in stream]


def content_of(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def assemble_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """Tool calls put together from their deltas, the way a client has to."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    return calls


# --- Text -------------------------------------------------------------------------------------


async def test_streamed_text_assembles_with_spaces_intact(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    text = "  Hello there, it's Relay.\nHow can I  help?  "
    server.llm.push(Text(text))

    chunks = await stream_chunks(client)

    first = chunks[0].choices[0].delta
    assert (first.role, first.content) == ("assistant", "")
    pieces = content_of(chunks)
    assert "".join(pieces) == text
    assert len(pieces) > 5
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"scripted"}


async def test_text_is_split_into_word_tokens_with_leading_spaces(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Text("Hello there."))

    assert content_of(await stream_chunks(client)) == ["Hello", " there", "."]


async def test_explicit_chunks_are_streamed_as_given(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Text("Good morning!", chunks=["Go", "od mor", "ning!"]))

    assert content_of(await stream_chunks(client)) == ["Go", "od mor", "ning!"]


def test_replies_are_checked_when_scripted() -> None:
    with pytest.raises(ValueError, match="join back"):
        Text("Hello", chunks=["Hel", "p"])
    with pytest.raises(ValueError, match="at least one"):
        ToolCalls([])
    with pytest.raises(ValueError, match="error status"):
        Fail(200)


async def test_paced_stream_assembles_the_same(http: httpx.AsyncClient) -> None:
    llm = ScriptedLLM([Text("One, two, three.")], token_delay=0.001, first_token_delay=0.001)
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        chunks = await stream_chunks(client)

    assert "".join(content_of(chunks)) == "One, two, three."
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- Tool calls -------------------------------------------------------------------------------


async def test_tool_call_deltas_assemble_to_the_exact_arguments(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    weather = {"city": "São Paulo", "days": 3, "units": ["c", "mm"], "note": 'say "hi"'}
    raw = '{"query": "piano   removal",\n "limit": 2}'
    server.llm.push(
        ToolCalls(
            [ToolCall("get_weather", weather, id="call_weather1"), ToolCall("search", raw)],
            text="Let me check that.",
        )
    )

    chunks = await stream_chunks(client)

    assert "".join(content_of(chunks)) == "Let me check that."
    calls = assemble_tool_calls(chunks)
    assert calls[0] == {
        "id": "call_weather1",
        "name": "get_weather",
        "arguments": orjson.dumps(weather).decode(),
    }
    assert orjson.loads(calls[0]["arguments"]) == weather
    assert calls[1]["name"] == "search"
    assert calls[1]["id"].startswith("call_")
    assert calls[1]["arguments"] == raw
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_call_arguments_arrive_in_pieces_after_an_opening_delta(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(ToolCalls([ToolCall("book", {"date": "2026-03-01", "slot": "morning"})]))

    chunks = await stream_chunks(client)

    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    opening, *pieces = deltas
    assert opening.id and opening.type == "function"
    assert opening.function.name == "book" and opening.function.arguments == ""
    assert len(pieces) > 3
    assert all(p.id is None and p.function.name is None for p in pieces)
    assert all(p.index == 0 for p in deltas)


# --- Errors -----------------------------------------------------------------------------------


async def test_fail_500_is_an_internal_server_error(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Fail(500))

    with pytest.raises(openai.InternalServerError) as caught:
        await stream_chunks(client)

    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"


async def test_fail_429_is_a_rate_limit_error_with_retry_after(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Fail(429, retry_after=1.5))

    with pytest.raises(openai.RateLimitError) as caught:
        await stream_chunks(client)

    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "1500"


async def test_fail_with_a_custom_body(server: FakeLLMServer, client: openai.AsyncOpenAI) -> None:
    body = {"error": {"message": "Bad tools", "type": "invalid_request_error", "param": "tools"}}
    server.llm.push(Fail(400, body=body))

    with pytest.raises(openai.BadRequestError) as caught:
        await stream_chunks(client)

    assert caught.value.body == body["error"]
    assert caught.value.param == "tools"


async def test_a_retrying_client_gets_the_next_reply(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(Fail(503, retry_after=0.001), Text("Back again."))
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", http_client=http, max_retries=1
    )

    chunks = await stream_chunks(client)

    assert "".join(content_of(chunks)) == "Back again."
    assert len(server.llm.requests) == 2


@pytest.mark.parametrize("token_delay", [0.0, 0.001])
async def test_break_fails_mid_stream_after_some_chunks(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, token_delay: float
) -> None:
    llm = ScriptedLLM([Break("One two three four five.", after_chunks=2)], token_delay=token_delay)
    received: list[str] = []
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        stream = await client.chat.completions.create(
            model="scripted", messages=MESSAGES, stream=True
        )
        with pytest.raises(openai.APIConnectionError) as caught:
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)

    assert received == ["One", " two"]
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    # The scripted break is not reported as a server bug.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_break_on_a_non_streaming_request(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Break("Never finished.", after_chunks=1))

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="scripted", messages=MESSAGES)


async def test_exhausted_script_fails_loudly(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.InternalServerError, match="script exhausted"):
        await stream_chunks(client)


async def test_stall_ends_when_the_client_gives_up(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(Stall(60, then=Text("Too late.")), Text("On time."))
    impatient = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", http_client=http, max_retries=0, timeout=0.05
    )

    with pytest.raises(openai.APITimeoutError):
        await stream_chunks(impatient)
    patient = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", http_client=http, max_retries=0
    )
    assert "".join(content_of(await stream_chunks(patient))) == "On time."
    # Leaving the fixture must not wait out the stall: the server sees the hang-up.


async def test_stall_then_reply(server: FakeLLMServer, client: openai.AsyncOpenAI) -> None:
    server.llm.push(Stall(0.001, then=Text("Sorry for the wait.")))

    assert "".join(content_of(await stream_chunks(client))) == "Sorry for the wait."


# --- Usage, requests, queue -------------------------------------------------------------------


async def test_usage_chunk_only_when_asked(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Text("Hi there."), Text("Hi there."))

    with_usage = await stream_chunks(client, stream_options={"include_usage": True})
    without = await stream_chunks(client)

    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 3
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in with_usage[:-1])
    assert with_usage[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in without)


async def test_requests_are_recorded_in_order(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "end_call", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    server.llm.push(Text("One."), Text("Two."))

    await stream_chunks(client, tools=tools)
    await client.chat.completions.create(model="other", messages=[{"role": "user", "content": "2"}])

    first, second = server.llm.requests
    assert first["messages"] == MESSAGES
    assert first["tools"] == tools
    assert first["stream"] is True
    assert second["model"] == "other"
    assert second["messages"] == [{"role": "user", "content": "2"}]


async def test_queue_in_order_then_the_default(http: httpx.AsyncClient) -> None:
    seen: list[dict[str, Any]] = []

    def default(body: dict[str, Any]) -> Text:
        seen.append(body)
        return Text(f"Default for {body['messages'][-1]['content']}.")

    llm = ScriptedLLM([Text("First.")], default=default)
    llm.push(Text("Second."))
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        answers = [
            "".join(content_of(await stream_chunks(client))),
            "".join(content_of(await stream_chunks(client))),
            "".join(content_of(await stream_chunks(client))),
        ]

    assert answers == ["First.", "Second.", "Default for Hello, is anyone there?."]
    assert seen == [llm.requests[2]]


async def test_recording_can_be_turned_off(http: httpx.AsyncClient) -> None:
    llm = ScriptedLLM([Text("Once.")], record=False)
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        await stream_chunks(client)
        with pytest.raises(openai.InternalServerError, match="request #2"):
            await stream_chunks(client)

    assert llm.requests == []


async def test_fixed_default_reply(http: httpx.AsyncClient) -> None:
    async with FakeLLMServer(ScriptedLLM(default=Text("Always this."))) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        for _ in range(2):
            assert "".join(content_of(await stream_chunks(client))) == "Always this."


async def test_echo_reply(http: httpx.AsyncClient) -> None:
    async with FakeLLMServer(ScriptedLLM(default=echo_reply)) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        chunks = await stream_chunks(client)

    pieces = content_of(chunks)
    assert "".join(pieces).startswith("You said: Hello, is anyone there.")
    assert 10 <= len(pieces) <= 20


def test_echo_reply_says_when_it_cut_a_long_message() -> None:
    def said(text: str) -> str:
        reply = echo_reply({"messages": [{"role": "user", "content": text}]})
        assert isinstance(reply, Text)
        return reply.text

    assert said("One two three four five six seven eight.") == (
        "You said: One two three four five six seven eight. What else can I do for you?"
    )
    assert said("how much to move an upright piano from Brunswick to Geelong?") == (
        "You said: how much to move an upright piano from… What else can I do for you?"
    )
    assert said("  ") == "I did not catch that. What else can I do for you?"


# --- Non-streaming ----------------------------------------------------------------------------


async def test_non_streaming_text(server: FakeLLMServer, client: openai.AsyncOpenAI) -> None:
    server.llm.push(Text("Plain answer."))

    completion = await client.chat.completions.create(model="scripted", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == "scripted"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Plain answer."
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_non_streaming_tool_calls(server: FakeLLMServer, client: openai.AsyncOpenAI) -> None:
    server.llm.push(ToolCalls([ToolCall("end_call", {"reason": "done"}, id="call_1")]))

    completion = await client.chat.completions.create(model="scripted", messages=MESSAGES)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id == "call_1"
    assert call.function.name == "end_call"  # type: ignore[union-attr]
    assert call.function.arguments == '{"reason":"done"}'  # type: ignore[union-attr]


# --- The raw wire -----------------------------------------------------------------------------


async def test_the_exact_sse_wire_format(server: FakeLLMServer, http: httpx.AsyncClient) -> None:
    server.llm.push(ToolCalls([ToolCall("f", {"a": 1})], text="Hi."))
    body = {
        "model": "wire",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async with http.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        raw = await response.aread()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = raw.split(b"\n\n")
    assert events.pop() == b""
    assert events.pop() == b"data: [DONE]"
    assert all(event.startswith(b"data: {") for event in events)
    parsed = [orjson.loads(event.removeprefix(b"data: ")) for event in events]
    *streamed, usage = parsed
    for chunk in streamed:
        assert list(chunk) == [
            "id",
            "object",
            "created",
            "model",
            "system_fingerprint",
            "choices",
            "usage",
        ]
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "wire"
        assert chunk["system_fingerprint"] is None
        assert chunk["usage"] is None
        (choice,) = chunk["choices"]
        assert list(choice) == ["index", "delta", "logprobs", "finish_reason"]
        assert choice["index"] == 0 and choice["logprobs"] is None
    assert streamed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed[1]["choices"][0]["delta"] == {"content": "Hi"}
    opening = streamed[3]["choices"][0]["delta"]["tool_calls"][0]
    assert list(opening) == ["index", "id", "type", "function"]
    assert opening["function"] == {"name": "f", "arguments": ""}
    assert streamed[4]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"'}}]
    }
    assert streamed[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert [c["choices"][0]["finish_reason"] for c in streamed[:-1]] == [None] * (len(streamed) - 1)
    assert usage["choices"] == [] and set(usage["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }
    assert set(usage["usage"]["prompt_tokens_details"]) == {"cached_tokens", "audio_tokens"}
    assert isinstance(usage["created"], int)
    assert len({c["id"] for c in parsed}) == 1


async def test_chunks_without_usage_have_no_usage_key(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(Text("Hi."))
    body = {"model": "m", "messages": MESSAGES, "stream": True}

    response = await http.post(server.base_url + "/chat/completions", json=body)

    events = response.content.split(b"\n\n")[:-2]
    assert all("usage" not in orjson.loads(e.removeprefix(b"data: ")) for e in events)


async def test_path_without_v1(server: FakeLLMServer, http: httpx.AsyncClient) -> None:
    server.llm.push(Text("Root."))
    root = server.base_url.removesuffix("/v1")

    hello = [{"role": "user", "content": "hi"}]
    response = await http.post(root + "/chat/completions", json={"model": "m", "messages": hello})

    assert response.json()["choices"][0]["message"]["content"] == "Root."


async def test_models_and_health(server: FakeLLMServer, http: httpx.AsyncClient) -> None:
    root = server.base_url.removesuffix("/v1")

    models = await http.get(server.base_url + "/models")
    health = await http.get(root + "/healthz")

    assert models.json()["object"] == "list"
    assert models.json()["data"][0]["object"] == "model"
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_the_server_reports_how_late_it_wrote_each_first_delta(
    http: httpx.AsyncClient,
) -> None:
    llm = ScriptedLLM(default=Text("One, two."), first_token_delay=0.02, token_delay=0.001)
    async with FakeLLMServer(llm) as server:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", http_client=http, max_retries=0
        )
        before = time.time()
        for _ in range(3):
            assert "".join(content_of(await stream_chunks(client))) == "One, two."
        await client.chat.completions.create(model="scripted", messages=MESSAGES)  # not streamed
        after = time.time()
        url = server.base_url + "/_scripted/lateness"
        every = (await http.get(url)).json()
        since = (await http.get(url, params={"since": before})).json()
        none_after = (await http.get(url, params={"since": after})).json()
        none_before = (await http.get(url, params={"since": 0, "until": before})).json()
        bad = await http.get(url, params={"since": "yesterday"})
        post = await http.post(url)

    # one record per streamed reply, written when its first delta went (time.time())
    assert [at for at, _ in llm.first_token_late] == sorted(at for at, _ in llm.first_token_late)
    assert len(llm.first_token_late) == 3
    assert all(before <= at <= after for at, _ in llm.first_token_late)
    late = [seconds for _, seconds in llm.first_token_late]
    assert every == since == {"first_token_late_s": late}
    assert none_after == none_before == {"first_token_late_s": []}
    assert llm.lateness(before, after) == late and llm.lateness(after) == []
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert post.status_code == 405
    assert len(llm.requests) == 4  # the lateness route is not a model request


async def test_no_lateness_without_a_first_token_delay(
    server: FakeLLMServer, client: openai.AsyncOpenAI
) -> None:
    server.llm.push(Text("Hello."))
    await stream_chunks(client)

    assert list(server.llm.first_token_late) == []


async def test_bad_requests(server: FakeLLMServer, http: httpx.AsyncClient) -> None:
    url = server.base_url + "/chat/completions"

    not_json = await http.post(url, content=b"{nope")
    not_object = await http.post(url, content=b"[1, 2]")
    unknown = await http.get(server.base_url + "/embeddings")
    wrong_method = await http.get(url)

    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert not_object.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (GET /v1/embeddings)"
    assert wrong_method.status_code == 405
    assert server.llm.requests == []


# --- Running it -------------------------------------------------------------------------------


def fake_llm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fake-llm-")]


def test_sync_server_runs_in_a_thread_and_stops_cleanly() -> None:
    llm = ScriptedLLM([Text("From a thread.")])
    with FakeLLMServer(llm) as server:
        assert server.llm is llm
        assert fake_llm_threads()
        with httpx.Client() as http:
            client = openai.OpenAI(
                base_url=server.base_url, api_key="test", http_client=http, max_retries=0
            )
            stream = client.chat.completions.create(
                model="scripted", messages=MESSAGES, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream)
            port = int(server.base_url.rsplit(":", 1)[1].removesuffix("/v1"))

    assert text == "From a thread."
    assert fake_llm_threads() == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_a_server_runs_once() -> None:
    server = FakeLLMServer()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    async with server:
        pass
    with pytest.raises(RuntimeError):
        async with server:
            pass


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_serve_fake_llm_answers_with_the_requested_length(free_port: int) -> None:
    code = (
        "from relay.testing import serve_fake_llm; "
        f"serve_fake_llm('127.0.0.1', {free_port}, token_delay=0.0, "
        "first_token_delay=0.0, reply_tokens=7)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{free_port}") as http:
            for _ in range(500):
                try:
                    http.get("/healthz")
                    break
                except httpx.ConnectError:
                    if proc.poll() is not None:
                        break
                    threading.Event().wait(0.02)  # not a timing assertion: waiting for startup
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{free_port}/v1",
                api_key="test",
                http_client=http,
                max_retries=0,
            )
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            pieces = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)

    assert len(pieces) == 7, stderr
    assert "".join(pieces).startswith("You said: hi.")


# --- Faults a client must take (relay.llm's tests use them) ------------------------------------


async def _raw(server: FakeLLMServer, http: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": MESSAGES, "stream": True, **extra}
    response = await http.post(server.base_url + "/chat/completions", json=body)
    return response


async def test_no_done_ends_after_the_finish_and_usage_chunks(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(NoDone(Text("Bye.")))
    response = await _raw(server, http, stream_options={"include_usage": True})

    events = response.content.split(b"\n\n")
    assert events.pop() == b""
    assert b"[DONE]" not in response.content
    *_, finish, usage = (orjson.loads(e.removeprefix(b"data: ")) for e in events)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2


async def test_malformed_json_body_and_redirect(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(Malformed(b"{oops"), JSONBody("Hi."), Redirect("https://x.example/v1", 307))

    malformed = await _raw(server, http)
    assert malformed.status_code == 200
    assert malformed.headers["content-type"].startswith("text/event-stream")
    assert malformed.content == b"data: {oops\n\n"

    json_body = await _raw(server, http)
    assert json_body.status_code == 200
    assert json_body.headers["content-type"] == "application/json"
    assert json_body.json()["choices"][0]["message"]["content"] == "Hi."

    redirect = await _raw(server, http)
    assert (redirect.status_code, redirect.headers["location"]) == (307, "https://x.example/v1")


async def test_retry_after_as_an_http_date_is_sent_verbatim(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.push(Fail(503, retry_after="Sun, 06 Dec 2026 10:00:30 GMT"))
    response = await _raw(server, http)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "Sun, 06 Dec 2026 10:00:30 GMT"
    assert "retry-after-ms" not in response.headers


async def test_cached_tokens_are_the_prefix_shared_with_the_previous_request(
    server: FakeLLMServer, http: httpx.AsyncClient
) -> None:
    server.llm.default = Text("Ok.")
    options = {"stream_options": {"include_usage": True}}

    def usage_of(response: httpx.Response) -> dict[str, Any]:
        last = response.content.split(b"\n\n")[-3]  # before [DONE] and the final blank
        usage: dict[str, Any] = orjson.loads(last.removeprefix(b"data: "))["usage"]
        return usage

    first = usage_of(await _raw(server, http, **options))
    longer = [*MESSAGES, {"role": "assistant", "content": "Ok."}, {"role": "user", "content": "Hi"}]
    second = usage_of(await _raw(server, http, **{**options, "messages": longer}))
    changed = [{"role": "system", "content": "Now 10:31."}, *longer[1:]]
    third = usage_of(await _raw(server, http, **{**options, "messages": changed}))

    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] == first["prompt_tokens"]
    assert second["prompt_tokens"] == first["prompt_tokens"] + (4 + 2) + (4 + 1)
    assert third["prompt_tokens_details"]["cached_tokens"] == 2  # only the system's framing


def _flat_prompt(body: dict[str, Any]) -> list[str]:
    """The fake tokenizer's prompt as one flat list, the plain way (the reference)."""
    word = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
    tokens: list[str] = []
    if body.get("tools"):
        tokens += word.findall(orjson.dumps(body["tools"]).decode())
    for message in body["messages"]:
        role = message.get("role") if isinstance(message, dict) else None
        tokens += [f"<|{role}|>", "<|content|>"]
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(part["text"] for part in content)
            tokens += word.findall(content if isinstance(content, str) else "")
            if message.get("tool_calls"):
                tokens += word.findall(orjson.dumps(message["tool_calls"]).decode())
        tokens += ["<|end|>", "\n"]
    return tokens


def test_prompt_and_cached_tokens_match_a_plain_flat_count() -> None:
    """Tokens kept per message and compared part by part count exactly as a flat list would."""
    rng = random.Random(5)
    words = ["the", "piano", "move", "costs,", "how", "much?", "insured", "'quote'", "$420", "!"]

    def message() -> Any:
        if rng.random() < 0.03:
            return "not a message"
        text = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        item: dict[str, Any] = {"role": rng.choice(["system", "user", "assistant", "tool"])}
        item["content"] = [{"type": "text", "text": text}] if rng.random() < 0.1 else text
        if rng.random() < 0.1:
            item["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": "q"}}]
        return item

    shared = [message() for _ in range(4)]
    llm = ScriptedLLM()
    previous: list[str] = []
    for _ in range(400):
        messages = shared[: rng.randint(0, 4)] + [message() for _ in range(rng.randint(0, 4))]
        body: dict[str, Any] = {"messages": messages}
        if rng.random() < 0.3:
            body["tools"] = [{"type": "function", "function": {"name": rng.choice("ab")}}]
        flat = _flat_prompt(body)
        cached = next(
            (n for n, (a, b) in enumerate(zip(flat, previous, strict=False)) if a != b), None
        )
        expected_cached = min(len(flat), len(previous)) if cached is None else cached

        assert llm._prompt_tokens(body) == (len(flat), expected_cached)
        previous = flat
