"""relay.llm.http1 against scripted raw HTTP/1.1 servers (plain and TLS) on loopback.

The servers are bare ``asyncio`` streams that write exactly the bytes a test gives, so the
tests can cut responses anywhere, close connections at awkward moments and count the TCP
connections a client opened. The last tests run :class:`OpenAIChat` on the lean transport
end to end: over TLS with a real uvicorn, and across a stale pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import orjson
import pytest
import uvicorn

from relay.llm import http1
from relay.llm.client import OpenAIChat
from relay.llm.types import ChatRequest, Done, TextDelta
from relay.testing import ScriptedLLM, Text

PATH = "/v1/chat/completions"
REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}])


# --- A scripted raw server --------------------------------------------------------------------


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

    async def closed_by_client(self) -> bool:
        """True once the client closes the connection (waits for it, bounded)."""
        try:
            async with asyncio.timeout(5):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """Runs ``handler`` for each connection; the connection is closed when it returns."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{PATH}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
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
        try:
            await self.handler(_Recording(peer, self.requests))
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()


class _Recording(Peer):
    def __init__(self, peer: Peer, requests: list[bytes]) -> None:
        super().__init__(peer.reader, peer.writer, peer.index)
        self._requests = requests

    async def request(self) -> bytes | None:
        request = await super().request()
        if request is not None:
            self._requests.append(request)
        return request


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def ok(body: bytes, *headers: bytes) -> bytes:
    """A 200 with a Content-Length body."""
    lines = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def answer_every_request(response: bytes) -> Handler:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handler


async def post(pool: http1.ConnectionPool, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.post(http1.Endpoint(url), body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (checked every millisecond), failing after ``within``."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (the condition changes in protocol callbacks)
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def pool_of(**options: float | ssl.SSLContext) -> AsyncIterator[http1.ConnectionPool]:
    pool = http1.ConnectionPool(**options)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.aclose()


# --- Bodies and framing -----------------------------------------------------------------------


async def test_content_length_chunked_and_close_delimited_bodies_on_one_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"sized"))
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunked(b"chun", b"ked"))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")

    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"sized")
        assert await post(pool, server.url()) == (200, b"chunked")
        assert await post(pool, server.url()) == (200, b"until the end")

        assert pool.connections_opened == 1
        assert pool.idle_connections() == 0  # a close-delimited body ends the connection
    assert server.connections == 1


async def test_the_body_is_handed_over_as_it_arrives() -> None:
    go_on = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        await go_on.wait()  # only once the client has the first piece
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await peer.request()

    async with RawServer(handler) as server, pool_of() as pool:
        response = await pool.post(http1.Endpoint(server.url()), b"{}")
        assert await asyncio.wait_for(response.receive(), 5) == b"first"
        go_on.set()
        assert await response.receive() == b"second"
        assert await response.receive() == b""
        assert response.complete
        response.close()
        assert pool.idle_connections() == 1


async def test_a_response_cut_at_every_byte_reads_the_same() -> None:
    response = CHUNKED_HEAD + chunked(b"data: one\n\n", b"data: two\n\n")

    async def handler(peer: Peer) -> None:
        await peer.request()
        for index in range(len(response)):
            await peer.send(response[index : index + 1])
            await asyncio.sleep(0.0005)
        await peer.request()

    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"data: one\n\ndata: two\n\n")


async def test_informational_responses_are_skipped() -> None:
    handler = answer_every_request(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"final")
        assert await post(pool, server.url()) == (200, b"final")
        assert pool.connections_opened == 1


async def test_a_reader_that_falls_behind_gets_every_byte() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses above the high-water mark

    async with RawServer(answer_every_request(ok(body))) as server, pool_of() as pool:
        response = await pool.post(http1.Endpoint(server.url()), b"{}")
        await asyncio.sleep(0.1)  # let the socket fill up
        assert await response.read() == body
        response.close()
        assert pool.idle_connections() == 1


async def test_the_request_is_what_was_asked_for() -> None:
    async with RawServer(answer_every_request(ok(b""))) as server, pool_of() as pool:
        endpoint = http1.Endpoint(
            server.url() + "?api-version=1", {"Authorization": "Bearer k", "X-Custom": "yes"}
        )
        response = await pool.post(endpoint, b'{"a":1}')
        response.close()

    [request] = server.requests
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?api-version=1 HTTP/1.1"
    assert lines[1] == b"Host: 127.0.0.1:%d" % server.port
    assert b"Authorization: Bearer k" in lines
    assert b"X-Custom: yes" in lines
    assert b"Accept-Encoding: identity" in lines
    assert b"User-Agent: relay" in lines
    assert b"Content-Length: 7" in lines
    assert body == b'{"a":1}'


async def test_endpoints_check_what_they_are_given() -> None:
    assert http1.Endpoint("https://api.openai.com/v1/x").origin == ("https", "api.openai.com", 443)
    assert b"Host: [::1]:8080\r\n" in http1.Endpoint("http://[::1]:8080/").encode(b"")
    assert b"Host: example.com\r\n" in http1.Endpoint("http://example.com:80/").encode(b"")
    with pytest.raises(ValueError, match="only http"):
        http1.Endpoint("ftp://example.com/")
    with pytest.raises(ValueError, match="credentials"):
        http1.Endpoint("https://user:secret@example.com/")
    with pytest.raises(ValueError, match="invalid header"):
        http1.Endpoint("https://example.com/", {"X-Evil": "a\r\nHost: other"})


# --- Keep-alive and the pool --------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    async with RawServer(answer_every_request(ok(b"hi"))) as server, pool_of() as pool:
        for _ in range(5):
            assert await post(pool, server.url()) == (200, b"hi")

        assert pool.connections_opened == 1
        assert pool.idle_connections() == 1
    assert server.connections == 1
    assert len(server.requests) == 5


async def test_a_pooled_connection_the_server_closed_is_retried_once_on_a_fresh_one() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"first"))
        if peer.index == 0:
            await peer.request()  # the close crosses the next request on the wire
            return
        while await peer.request() is not None:
            await peer.send(ok(b"fresh"))

    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"first")
        assert await post(pool, server.url()) == (200, b"first")  # on the second connection
        assert pool.connections_opened == 2
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_fresh_connection_closed_without_an_answer_is_an_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()

    async with RawServer(handler) as server, pool_of() as pool:
        with pytest.raises(http1.ConnectionClosed):
            await post(pool, server.url())
    assert server.connections == 1  # no retry: the connection was not a pooled one


async def test_a_stale_pooled_connection_is_retried_only_once() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(ok(b"first"))
            await peer.request()

    async with RawServer(handler) as server, pool_of() as pool:
        await post(pool, server.url())
        with pytest.raises(http1.ConnectionClosed):
            await post(pool, server.url())
    assert server.connections == 2


async def test_a_connection_closed_while_idle_is_not_used_again() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"bye"))  # and close

    async with RawServer(handler) as server, pool_of() as pool:
        await post(pool, server.url())
        await asyncio.sleep(0.05)  # the client sees the close
        assert await post(pool, server.url()) == (200, b"bye")
        assert pool.connections_opened == 2
    assert len(server.requests) == 2


async def test_bytes_on_an_idle_connection_end_it() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"one"))
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await peer.request()
        await peer.send(ok(b"two"))

    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"one")
        await until(lambda: pool.idle_connections() == 0)  # the 408 arrived: dropped
        assert await post(pool, server.url()) == (200, b"one")  # a fresh connection
        assert pool.connections_opened == 2


async def test_connection_close_and_http_1_0_are_not_pooled() -> None:
    responses = [ok(b"a", b"Connection: close"), b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(responses[peer.index])

    async with RawServer(handler) as server, pool_of() as pool:
        assert await post(pool, server.url()) == (200, b"a")
        assert await post(pool, server.url()) == (200, b"b")
        assert pool.idle_connections() == 0
    assert server.connections == 2


async def test_idle_connections_are_capped_per_origin() -> None:
    async with RawServer(answer_every_request(ok(b"x"))) as server:
        async with pool_of(max_idle_per_origin=2) as pool:
            await asyncio.gather(*(post(pool, server.url()) for _ in range(4)))
            assert pool.connections_opened == 4
            assert pool.idle_connections() == 2
            await asyncio.gather(*(post(pool, server.url()) for _ in range(2)))
            assert pool.connections_opened == 4
        async with pool_of(max_idle_per_origin=0) as pool:
            await post(pool, server.url())
            assert pool.idle_connections() == 0


async def test_idle_connections_expire() -> None:
    async with (
        RawServer(answer_every_request(ok(b"x"))) as server,
        pool_of(keepalive_expiry=0.05) as pool,
    ):
        await post(pool, server.url())
        await asyncio.sleep(0.1)
        await post(pool, server.url())
        assert pool.connections_opened == 2


# --- Ending early -------------------------------------------------------------------------------


async def test_a_response_closed_before_its_end_closes_the_connection() -> None:
    client_left = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        if await peer.closed_by_client():
            client_left.set()

    async with RawServer(handler) as server, pool_of() as pool:
        response = await pool.post(http1.Endpoint(server.url()), b"{}")
        assert await response.receive() == b"first"
        response.close()
        assert pool.idle_connections() == 0
        await asyncio.wait_for(client_left.wait(), 5)


async def test_cancelling_a_request_closes_its_connection() -> None:
    asked, client_left = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()  # and never answer
        asked.set()
        if await peer.closed_by_client():
            client_left.set()

    async with RawServer(handler) as server, pool_of() as pool:
        task = asyncio.create_task(post(pool, server.url()))
        await asyncio.wait_for(asked.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(client_left.wait(), 5)
        assert pool.idle_connections() == 0


async def test_cancelling_a_body_read_closes_its_connection() -> None:
    client_left = asyncio.Event()
    reading: list[http1.Response] = []

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        if await peer.closed_by_client():
            client_left.set()

    async def read_all(pool: http1.ConnectionPool, url: str) -> bytes:
        response = await pool.post(http1.Endpoint(url), b"{}")
        reading.append(response)
        try:
            return await response.read()
        finally:
            response.close()

    async with RawServer(handler) as server, pool_of() as pool:
        task = asyncio.create_task(read_all(pool, server.url()))
        await until(lambda: bool(reading))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(client_left.wait(), 5)
        assert pool.idle_connections() == 0


# --- Failures -----------------------------------------------------------------------------------


async def test_a_server_that_stops_talking_is_a_read_timeout() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 1:
            await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        await peer.closed_by_client()

    async with RawServer(handler) as server, pool_of(read_timeout=0.25) as pool:
        with pytest.raises(http1.ReadTimeout):
            await post(pool, server.url())  # no status line
        response = await pool.post(http1.Endpoint(server.url()), b"{}")
        assert await response.receive() == b"first"
        with pytest.raises(http1.ReadTimeout):
            await response.receive()  # silence mid-body
        response.close()
        assert pool.idle_connections() == 0


async def test_a_broken_response_is_a_protocol_error() -> None:
    handler = answer_every_request(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
    async with RawServer(handler) as server, pool_of() as pool:
        with pytest.raises(http1.ProtocolError):
            await post(pool, server.url())


async def test_a_body_cut_short_is_connection_closed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")

    async with RawServer(handler) as server, pool_of() as pool:
        response = await pool.post(http1.Endpoint(server.url()), b"{}")
        assert await response.receive() == b"first"  # what came before the cut
        with pytest.raises(http1.ConnectionClosed):
            await response.receive()
        response.close()


async def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    async with pool_of() as pool:
        with pytest.raises(http1.ConnectError):
            await post(pool, f"http://127.0.0.1:{port}/")


async def test_the_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(peer: Peer) -> None:
        await asyncio.sleep(30)  # takes the TCP connection, never answers the TLS hello

    async with RawServer(silent) as server, pool_of(connect_timeout=0.1) as pool:
        with pytest.raises(http1.ConnectTimeout):
            await post(pool, f"https://127.0.0.1:{server.port}/")


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, made with the ``cryptography``
    package when it is installed, else with the ``openssl`` command."""
    paths = Certificate(*(tmp_path_factory.mktemp("tls") / name for name in ("c.pem", "k.pem")))
    try:
        _certificate_with_cryptography(paths)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("HTTPS tests need the cryptography package or the openssl command")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(paths.key), "-out", str(paths.cert), "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    return paths


def _certificate_with_cryptography(paths: Certificate) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_https_sends_sni_checks_the_certificate_and_keeps_the_connection(
    certificate: Certificate,
) -> None:
    server_context = certificate.server_context()
    names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _context: names.append(name)  # type: ignore[assignment,misc,return-value]

    async with (
        RawServer(answer_every_request(ok(b"secret")), tls=server_context) as server,
        pool_of(ssl_context=certificate.client_context()) as pool,
    ):
        for _ in range(3):
            assert await post(pool, server.url("localhost")) == (200, b"secret")
        assert pool.connections_opened == 1
    assert names == ["localhost"]


async def test_https_with_the_default_context_refuses_an_untrusted_certificate(
    certificate: Certificate,
) -> None:
    handler = answer_every_request(ok(b"secret"))
    async with (
        RawServer(handler, tls=certificate.server_context()) as server,
        pool_of() as pool,
    ):
        with pytest.raises(http1.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(pool, server.url("localhost"))


# --- OpenAIChat on the lean transport -----------------------------------------------------------


@contextlib.asynccontextmanager
async def lean_chat(base_url: str, pool: http1.ConnectionPool) -> AsyncIterator[OpenAIChat]:
    http = http1.LeanTransport(pool)
    yield OpenAIChat(base_url, "k", transport="lean", http=http, backoff=0.001)


async def test_openai_chat_streams_over_https_from_uvicorn(certificate: Certificate) -> None:
    llm = ScriptedLLM(default=Text("Over TLS."))
    config = uvicorn.Config(
        llm.app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="on",
        ssl_certfile=str(certificate.cert),
        ssl_keyfile=str(certificate.key),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with (
            pool_of(ssl_context=certificate.client_context()) as pool,
            lean_chat(f"https://localhost:{port}/v1", pool) as chat,
        ):
            for _ in range(3):
                events = [event async for event in chat.stream(REQUEST)]
                assert [e.text for e in events if isinstance(e, TextDelta)] == [
                    "Over", " TLS", ".",
                ]  # fmt: skip
            assert pool.connections_opened == 1
    finally:
        server.should_exit = True
        await serving
    assert len(llm.requests) == 3


def sse(*texts: str) -> bytes:
    events = [
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]})
        + b"\n\n"
        for t in texts
    ]
    return CHUNKED_HEAD + chunked(*events, b"data: [DONE]\n\n")


async def test_openai_chat_moves_past_a_stale_connection_without_a_retry() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(sse("Hello."))
        if peer.index == 0:
            await peer.request()  # the server had given up on the connection
            return
        while await peer.request() is not None:
            await peer.send(sse("Again."))

    async with (
        RawServer(handler) as server,
        pool_of() as pool,
        lean_chat(f"http://127.0.0.1:{server.port}/v1", pool) as chat,
    ):
        first = [event async for event in chat.stream(REQUEST)]
        second = [event async for event in chat.stream(REQUEST)]

    assert first[0] == TextDelta("Hello.") and isinstance(first[-1], Done)
    assert second[0] == TextDelta("Hello.")
    assert isinstance(second[-1], Done) and second[-1].attempts == 1
    assert server.connections == 2
