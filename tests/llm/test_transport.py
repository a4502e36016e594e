"""OpenAIChat on each transport against scripted raw HTTP/1.1 servers on loopback.

Each server runs a handler per accepted connection and records what it received, so a test
states exactly which bytes the client sends, which connections it opens or reuses, and how it
takes what a server (or a proxy) gets wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import orjson
import pytest

from relay.errors import ConfigError, LLMError
from relay.llm.client import OpenAIChat
from relay.llm.transport import MAX_LINE_SIZE
from relay.llm.types import ChatRequest, Done, LLMEvent, TextDelta, Timeouts

pytestmark = pytest.mark.asyncio

REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}], include_usage=False)
_transport = ["aiohttp"]  # the current test's, set by the fixture below


@pytest.fixture(autouse=True, params=["aiohttp", "lean"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every test runs on both transports: the behaviour must not depend on the HTTP client."""
    _transport[0] = str(request.param)
    return _transport[0]


class Peer:
    """The server's side of one connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.index = index  # 0 for the first connection the server accepted

    async def request(self) -> bytes | None:
        """The next request (head and body), or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await self.reader.readexactly(int(found.group(1))) if found else b""
        return head + body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """Runs ``handler`` for each connection; the connection is closed when it returns."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer, self.connections)
        self.connections += 1
        original = peer.request

        async def recording() -> bytes | None:
            request = await original()
            if request is not None:
                self.requests.append(request)
            return request

        peer.request = recording  # type: ignore[method-assign]
        try:
            await self.handler(peer)
        except ConnectionError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def event(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"


def sse(text: str) -> bytes:
    return CHUNKED_HEAD + chunked(event(text), event(finish="stop"), b"data: [DONE]\n\n")


@contextlib.asynccontextmanager
async def chat_on(base_url: str, **options: Any) -> AsyncIterator[OpenAIChat]:
    options.setdefault("backoff", 0.001)
    options.setdefault("max_retries", 0)
    options.setdefault("transport", _transport[0])
    chat = OpenAIChat(base_url, "sk-test", **options)
    try:
        yield chat
    finally:
        await chat.aclose()


async def collect(chat: OpenAIChat) -> list[LLMEvent]:
    return [e async for e in chat.stream(REQUEST)]


async def test_the_request_is_what_openai_expects() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(sse("Hi."))

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        first = await collect(chat)
        assert first[0] == TextDelta("Hi.") and isinstance(first[-1], Done)
        await collect(chat)

    head, body = server.requests[0].split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
    assert headers[b"host"] == b"127.0.0.1:%d" % server.port
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"accept"] == b"text/event-stream"
    assert headers[b"accept-encoding"] == b"identity"
    assert headers[b"authorization"] == b"Bearer sk-test"
    assert headers[b"content-length"] == b"%d" % len(body)
    assert b"cookie" not in headers
    assert orjson.loads(body) == REQUEST.body()
    assert server.connections == 1  # the second request reused the connection


async def test_a_pooled_connection_the_server_closed_is_sent_again_on_a_fresh_one() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(sse("Hello."))
        if peer.index == 0:
            await peer.request()  # the close crosses the next request on the wire
            return
        while await peer.request() is not None:
            await peer.send(sse("Again."))

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        await collect(chat)
        second = await collect(chat)  # max_retries=0: this is the transport's resend

    assert second[0] == TextDelta("Hello.")  # the fresh connection's first answer
    assert isinstance(second[-1], Done) and second[-1].attempts == 1
    assert server.connections == 2
    assert chat.failures.total == 0


async def test_a_connection_closed_without_an_answer_twice_is_a_connect_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.kind == "connect" and caught.value.retryable
    assert server.connections <= 2  # sent once more at most (aiohttp), never a third time


@pytest.mark.parametrize("transport", ["aiohttp"], indirect=True)
async def test_aiohttp_failing_inside_itself_is_a_connect_error_that_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiohttp

    start = aiohttp.ClientResponse.start
    broken = [1]  # starts that fail, as 3.14.5's does when a response was repr'd too early

    async def failing_start(self: aiohttp.ClientResponse, connection: Any) -> Any:
        if broken[0]:
            broken[0] -= 1
            raise AttributeError("'NoneType' object has no attribute 'getall'")
        return await start(self, connection)

    monkeypatch.setattr(aiohttp.ClientResponse, "start", failing_start)

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(sse("Hello."))

    async with RawServer(handler) as server:
        async with chat_on(server.base_url, max_retries=1) as chat:
            events = await collect(chat)  # the caller heard nothing: one more attempt
        assert events[0] == TextDelta("Hello.")
        assert isinstance(events[-1], Done) and events[-1].attempts == 2
        assert chat.failures["connect"] == 1 and chat.failures.total == 1

        broken[0] = 1
        async with chat_on(server.base_url) as chat:  # no retries left: the error, typed
            with pytest.raises(LLMError) as caught:
                await collect(chat)
        assert caught.value.kind == "connect" and caught.value.retryable
        assert "failed inside aiohttp" in str(caught.value)
        assert isinstance(caught.value.__cause__, AttributeError)


async def test_a_server_that_stops_talking_mid_body_is_a_read_timeout() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"%x\r\n%b\r\n" % (len(event("first")), event("first")))
        await asyncio.sleep(30)

    received: list[LLMEvent] = []
    async with (
        RawServer(handler) as server,
        chat_on(server.base_url, timeouts=Timeouts(read=0.2)) as chat,
    ):
        with pytest.raises(LLMError) as caught:
            async for item in chat.stream(REQUEST):
                received.append(item)

    assert received == [TextDelta("first")]
    assert caught.value.kind == "timeout"
    assert "paused for more than 0.2s" in str(caught.value)


async def test_a_broken_response_is_malformed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.kind == "malformed" and caught.value.retryable


async def test_headers_beyond_the_limits_are_refused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        huge = b"X-Padding: " + b"a" * (MAX_LINE_SIZE + 10) + b"\r\n"
        await peer.send(b"HTTP/1.1 200 OK\r\n" + huge + b"Content-Length: 0\r\n\r\n")

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.kind == "malformed"


async def test_a_body_cut_short_is_a_broken_stream_after_what_came_before() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"%x\r\n%b\r\n" % (len(event("first")), event("first")))

    received: list[LLMEvent] = []
    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        with pytest.raises(LLMError) as caught:
            async for item in chat.stream(REQUEST):
                received.append(item)

    assert received == [TextDelta("first")]
    assert caught.value.kind == "stream-broken" and not caught.value.retryable


async def test_a_close_delimited_stream_with_a_finish_reason_is_complete() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        await peer.send(head + event("Done") + event(finish="stop"))

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        events = await collect(chat)

    assert events[0] == TextDelta("Done")
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"


async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    async with chat_on(f"http://127.0.0.1:{port}/v1") as chat:
        with pytest.raises(LLMError) as caught:
            await collect(chat)

    assert caught.value.kind == "connect"
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_the_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(peer: Peer) -> None:
        await asyncio.sleep(30)  # takes the TCP connection, never answers the TLS hello

    async with (
        RawServer(silent) as server,
        chat_on(
            f"https://127.0.0.1:{server.port}/v1", timeouts=Timeouts(connect=0.2, first_token=20)
        ) as chat,
    ):
        with pytest.raises(LLMError) as caught:
            await asyncio.wait_for(collect(chat), 10)

    assert caught.value.kind == "connect"
    assert "within 0.2s" in str(caught.value)


async def test_the_proxy_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    if transport == "lean":
        pytest.skip("the lean transport refuses proxies (next test)")

    async def proxy(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(sse("Via the proxy."))

    async with RawServer(proxy) as server:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with chat_on("http://llm.internal.example/v1") as chat:
            events = await collect(chat)

    assert events[0] == TextDelta("Via the proxy.")
    assert server.requests[0].startswith(
        b"POST http://llm.internal.example/v1/chat/completions HTTP/1.1\r\n"
    )


async def test_the_lean_transport_refuses_a_proxy_it_would_ignore(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    if transport == "aiohttp":
        pytest.skip("aiohttp uses the proxy (previous test)")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    with pytest.raises(ConfigError, match="RELAY_LLM_TRANSPORT=lean connects directly") as caught:
        OpenAIChat("https://api.openai.com/v1", "k", transport="lean")
    assert "http://proxy.example:3128" in str(caught.value)  # named, without its password

    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    await OpenAIChat("https://api.openai.com/v1", "k", transport="lean").aclose()


def _pieces(*pieces: bytes) -> bytes:
    """Chunked-encoding pieces without the terminating chunk (more follow)."""
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces)


async def test_after_its_first_clause_a_reply_is_read_one_delta_a_read() -> None:
    """``read_interval``: the first words go on chunk by chunk, even when one read brought
    them all; once the reply has said a clause's end, what a read brings is one delta."""
    go, written = asyncio.Event(), asyncio.Event()
    first = ["Sure", ",", " the", " move"]  # one write: "Sure", "," then " the move" as one
    later = [" is", " booked", " for", " Tuesday."]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + _pieces(*(event(text) for text in first)))
        await go.wait()
        for text in later:  # four writes
            await peer.send(_pieces(event(text)))
        await peer.send(chunked(event(finish="stop"), b"data: [DONE]\n\n"))
        written.set()

    async with RawServer(handler) as server, chat_on(server.base_url, read_interval=0.05) as chat:
        stream = chat.stream(REQUEST)
        said = [await anext(stream) for _ in range(3)]
        go.set()
        await written.wait()  # all of it is on its way before the stream is read again
        rest = [event async for event in stream]

    assert said == [TextDelta("Sure"), TextDelta(","), TextDelta(" the move")]
    assert rest[0] == TextDelta("".join(later))
    assert isinstance(rest[-1], Done) and len(rest) == 2


async def test_without_a_read_interval_every_chunk_is_its_own_delta() -> None:
    chunks = ["Sure", ",", " the", " move", " is", " booked", " for", " Tuesday."]

    async def handler(peer: Peer) -> None:
        await peer.request()
        body = [event(text) for text in chunks] + [event(finish="stop"), b"data: [DONE]\n\n"]
        await peer.send(CHUNKED_HEAD + chunked(*body))  # one write

    async with RawServer(handler) as server, chat_on(server.base_url, read_interval=0) as chat:
        events = await collect(chat)

    assert events[:-1] == [TextDelta(text) for text in chunks]


async def test_a_held_response_leaves_its_socket_unread_until_the_next_receive() -> None:
    go, written = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + _pieces(event("first")))
        await go.wait()
        await peer.send(chunked(event("second"), event(finish="stop"), b"data: [DONE]\n\n"))
        written.set()

    async with RawServer(handler) as server, chat_on(server.base_url) as chat:
        response = await chat._transport.post(
            chat.url, chat._headers, orjson.dumps(REQUEST.body()), connect_timeout=2.0
        )
        try:
            assert b"first" in await response.receive()
            response.hold()
            socket_transport = _socket_transport(response)
            assert not socket_transport.is_reading()
            go.set()
            await written.wait()
            assert not socket_transport.is_reading()
            assert b"second" in await response.receive()
            assert socket_transport.is_reading() or socket_transport.is_closing()
        finally:
            response.close()


def _socket_transport(response: Any) -> asyncio.Transport:
    inner = response._response
    if _transport[0] == "lean":
        return inner._conn.transport  # type: ignore[no-any-return]
    return inner.connection.transport  # type: ignore[no-any-return]
