"""A minimal HTTP/1.1 client for one job: POST a body and read the streamed response.

relay's LLM hop is always the same exchange: POST a JSON body to one URL, then read a
server-sent-event stream as its bytes arrive, once per turn of every call. This module does
only what the exchange needs, and is the ``lean`` transport (``RELAY_LLM_TRANSPORT=lean``):
the default, aiohttp (:mod:`relay.llm.transport`), spends about 85 us more CPU per request
(measured in the same process on loopback), which showed as 0.4-0.7 ms at the p50 of the LLM
hop on a loaded 2-core machine. :class:`LeanTransport` puts it behind the client's transport
interface.

- :class:`ConnectionPool` keeps idle keep-alive connections per origin (scheme, host, port)
  in a deque: checkout and release are O(1), the most recently used connection first. Idle
  connections are capped per origin (the longest idle is closed first) and expire.
- Each connection is an ``asyncio.Protocol`` whose bytes go through httptools (llhttp):
  Content-Length, chunked and close-delimited bodies. The body is handed to the reader as it
  arrives: whatever came in since the last read, in one piece. Response headers are limited
  as aiohttp's are (8,190 bytes a field, 128 fields).
- New connections race the host's addresses (RFC 8305 happy eyeballs, aiohappyeyeballs).
- ``https`` URLs use TLS with the default SSL context (system CAs, hostname check, SNI).
- Timeouts: connecting (TCP and TLS), and, only if ``read_timeout`` is given, reading (no
  byte for ``read_timeout`` while the reader waits). relay's client applies its own limits
  (first token, between chunks) and gives none here.
- A request sent on a pooled connection that the server had closed (it answered nothing at
  all) is sent once more on a fresh connection: servers close idle connections whenever they
  like, and the close can cross the request on the wire.
- Only a connection whose response was read to the end goes back to the pool. A response
  closed early (a cancelled turn, an error) closes its connection.

Not supported, on purpose: proxies (:class:`relay.llm.client.OpenAIChat` refuses to start on
this transport when the environment sets one for the URL; behind a proxy use ``aiohttp``),
compression (``Accept-Encoding: identity`` is sent),
redirects, HTTP/2, credentials in the URL, ``Expect: 100-continue``.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlsplit

import aiohappyeyeballs
import httptools

from relay.errors import LLMError

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionPool",
    "Endpoint",
    "HTTPError",
    "LeanResponse",
    "LeanTransport",
    "ProtocolError",
    "ReadTimeout",
    "Response",
]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: Body bytes buffered for a reader that is not keeping up before the socket stops being read.
_HIGH_WATER: Final = 256 * 1024
_FORBIDDEN_IN_HEADERS: Final = frozenset("\r\n\0")
#: Header limits (as the aiohttp transport's): bytes of one field, and fields per response.
MAX_FIELD_SIZE: Final = 8190
MAX_HEADERS: Final = 128
#: RFC 8305 happy eyeballs: the head start of one address family over the other.
HAPPY_EYEBALLS_DELAY: Final = 0.25

Origin = tuple[str, str, int]
"""(scheme, host, port): what a pooled connection is good for."""


class HTTPError(Exception):
    """Base class of this module's errors."""


class ConnectError(HTTPError):
    """The connection (TCP or TLS) could not be made."""


class ConnectTimeout(ConnectError):
    """The connection was not made within ``connect_timeout``."""


class ReadTimeout(HTTPError):
    """The server sent nothing for ``read_timeout`` seconds while a reader waited."""


class ConnectionClosed(HTTPError):
    """The server closed the connection before the response ended."""


class ProtocolError(HTTPError):
    """The server sent bytes that are not a valid HTTP/1.1 response."""


class _Stale(Exception):
    """A pooled connection turned out to be closed before any byte of the response."""


class _UnsolicitedResponse(Exception):
    """Raised from a parser callback to stop parsing bytes that follow a complete response."""


class Endpoint:
    """A URL and the headers sent with every request to it, encoded once.

    ``Host``, ``Content-Length`` and ``Accept-Encoding: identity`` are added; a ``User-Agent``
    is added unless given. Header names and values must not contain CR, LF or NUL.
    """

    __slots__ = ("_head", "origin", "url")

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"only http:// and https:// URLs are supported, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"the URL has no host: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in the URL are not supported; send a header instead")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        self.url = url
        self.origin: Origin = (scheme, host, port)

        authority = f"[{host}]" if ":" in host else _ascii_host(host)
        if port != _DEFAULT_PORTS[scheme]:
            authority += f":{port}"
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        lines = [f"POST {target} HTTP/1.1", f"Host: {authority}"]
        given = {name.lower() for name in (headers or {})}
        for name, value in (headers or {}).items():
            lowered = name.lower()
            if lowered in ("host", "content-length", "transfer-encoding", "accept-encoding"):
                continue  # this module's to set
            if _FORBIDDEN_IN_HEADERS.intersection(name + value) or ":" in name or not name:
                raise ValueError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}")
        if "user-agent" not in given:
            lines.append("User-Agent: relay")
        lines.append("Accept-Encoding: identity")
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def encode(self, body: bytes) -> bytes:
        """The whole request: head, ``Content-Length`` and ``body``."""
        return b"%bContent-Length: %d\r\n\r\n%b" % (self._head, len(body), body)


def _ascii_host(host: str) -> str:
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna").decode("ascii")
    return host


class _State(enum.Enum):
    IDLE = "idle"  # in the pool (or just connected): no request outstanding
    ACTIVE = "active"  # a request was sent and its response has not been handed back
    CLOSED = "closed"


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the parser's callbacks fill in the current response."""

    __slots__ = (
        "_informational",
        "_paused",
        "_timer",
        "body",
        "buffered",
        "close_delimited",
        "complete",
        "error",
        "got_bytes",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "loop",
        "origin",
        "parser",
        "read_timeout",
        "state",
        "status",
        "transport",
        "waiter",
        "waiting_since",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, origin: Origin, read_timeout: float | None
    ) -> None:
        self.loop = loop
        self.origin = origin
        self.read_timeout = read_timeout
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.state = _State.IDLE
        self.waiter: asyncio.Future[None] | None = None
        self.waiting_since = 0.0
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.close_delimited = True  # until a Content-Length or chunked coding says otherwise
        self._informational = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.error: HTTPError | None = None
        self.got_bytes = False

    # --- The request ---------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        """Start an exchange: write the request and arm the read timeout."""
        assert self.transport is not None
        self._reset()
        self.state = _State.ACTIVE
        self.transport.write(request)
        if self.read_timeout is not None:
            self._timer = self.loop.call_later(self.read_timeout, self._check_read_timeout)

    async def wait(self) -> None:
        """Until the parser has something new for the reader (or the connection ends)."""
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False  # held (nothing is buffered, or the reader would take it)
            self.transport.resume_reading()
        waiter = self.loop.create_future()
        self.waiter = waiter
        self.waiting_since = self.loop.time()
        try:
            await waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        """The body bytes received so far, at most once each."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def hold(self) -> None:
        """Stop reading the socket until :meth:`wait` (see ``Response.hold``)."""
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def idle(self, now: float) -> None:
        """The response was read to the end: the connection waits in the pool."""
        self.state = _State.IDLE
        self.idle_since = now
        self._cancel_timer()

    def close(self) -> None:
        """Close now, whatever is in flight (nothing on this connection is worth waiting for)."""
        if self.state is _State.CLOSED:
            return
        self.state = _State.CLOSED
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        transport = self.transport
        return self.state is _State.IDLE and transport is not None and not transport.is_closing()

    def _check_read_timeout(self) -> None:
        self._timer = None
        if self.state is not _State.ACTIVE or self.read_timeout is None:
            return
        now = self.loop.time()
        if self.waiter is not None and now - self.waiting_since >= self.read_timeout:
            self._fail(ReadTimeout(f"no data from the server for {self.read_timeout:g}s"))
            self.close()
            return
        since = self.waiting_since if self.waiter is not None else now
        self._timer = self.loop.call_at(since + self.read_timeout, self._check_read_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self.state is not _State.ACTIVE or self.complete or parser is None:
            # Bytes nobody asked for (e.g. a 408 sent before closing an idle connection):
            # this connection can no longer be trusted to frame a response.
            self.close()
            return
        self.got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:
                self._fail(ProtocolError(f"invalid HTTP response: {exc}"))
            self.close()  # a complete response stays readable; the connection is not reused

    def eof_received(self) -> bool:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        self.state = _State.CLOSED
        self._cancel_timer()
        self.parser = None  # it refers back to this object: let reference counting free both

    def pause_writing(self) -> None:  # requests are small; the transport buffers them
        pass

    def resume_writing(self) -> None:
        pass

    def _ended(self, exc: Exception | None = None) -> None:
        if self.state is not _State.ACTIVE or self.complete:
            return
        if self.headers_done and self.close_delimited and exc is None:
            self.complete = True  # a body without length or chunks ends with the connection
            self.keep_alive = False
            self._wake()
            return
        detail = f": {exc!r}" if exc is not None else ""
        self._fail(ConnectionClosed("the server closed the connection" + detail))

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same bytes: nobody asked for it
            raise _UnsolicitedResponse

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_SIZE or len(self.headers) >= MAX_HEADERS:
            raise ValueError(
                f"response headers beyond {MAX_FIELD_SIZE} bytes or {MAX_HEADERS} fields"
            )
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.close_delimited = False

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # called from parser.feed_data
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: informational, the real response follows
            self._informational = True
            self.headers = []
            self.close_delimited = True
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if status in (204, 304):
            self.close_delimited = False
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()


class Response:
    """A response whose body is read as it arrives. Close it when done, even after an error.

    ``close()`` puts the connection back in the pool only if the body was read to the end and
    the server keeps the connection alive; otherwise the connection is closed.
    """

    __slots__ = ("_closed", "_conn", "_pool", "headers", "status")

    def __init__(self, conn: _Connection, pool: ConnectionPool) -> None:
        self._conn = conn
        self._pool = pool
        self._closed = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def complete(self) -> bool:
        """True once the whole body has been received and read."""
        conn = self._conn
        return conn.complete and not conn.body

    def hold(self) -> None:
        """Leave the socket unread until the next :meth:`receive` (the kernel keeps what comes)."""
        self._conn.hold()

    async def receive(self) -> bytes:
        """The next body bytes, as they arrived; ``b""`` once the body is complete.

        Raises :class:`ReadTimeout`, :class:`ConnectionClosed` or :class:`ProtocolError`
        after handing over every byte received before the failure.
        """
        conn = self._conn
        while True:
            if conn.body:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            if self._closed:
                raise RuntimeError("the response is closed")
            await conn.wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body; with ``limit``, stop once that many bytes are in hand."""
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            data = await self.receive()
            if not data:
                break
            parts.append(data)
            size += len(data)
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def close(self) -> None:
        """Release the connection to the pool when the body was read to the end, else close it."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn.complete and not conn.body and conn.error is None and conn.keep_alive:
            self._pool._release(conn)
        else:
            conn.close()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections for streamed POSTs, per origin.

    ``max_idle_per_origin`` caps the idle connections kept for one origin (the longest idle
    one is closed to make room); ``keepalive_expiry`` closes connections idle for longer
    (servers drop them anyway). There is no cap on connections in use: each concurrent
    request has its own. ``ssl_context`` replaces the default TLS context (tests, private
    CAs). Close the pool with :meth:`aclose` on the event loop that used it.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = None,
        max_idle_per_origin: int = 1000,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._closed = False
        #: Connections opened so far (pool reuse shows as this staying low).
        self.connections_opened = 0

    def idle_connections(self, origin: Origin | None = None) -> int:
        """How many idle connections are pooled (for one origin, or all)."""
        if origin is not None:
            return len(self._idle.get(origin, ()))
        return sum(len(idle) for idle in self._idle.values())

    async def post(self, endpoint: Endpoint, body: bytes) -> Response:
        """Send ``body`` to ``endpoint``; returns once the status line and headers arrived.

        Raises :class:`ConnectError` (or :class:`ConnectTimeout`), :class:`ReadTimeout`,
        :class:`ConnectionClosed` or :class:`ProtocolError`. Cancelling closes the connection.
        """
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        request = endpoint.encode(body)
        conn = self._checkout(endpoint.origin, loop)
        if conn is not None:
            try:
                return await self._exchange(conn, request, reused=True)
            except _Stale:
                pass  # the server had closed it while idle: once more on a fresh connection
        conn = await self._connect(endpoint.origin, loop)
        return await self._exchange(conn, request, reused=False)

    async def aclose(self) -> None:
        """Close every idle connection; responses still open close theirs when closed."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                conn.close()
        if idle:
            await asyncio.sleep(0)  # let the transports' connection_lost run: sockets closed

    def _checkout(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_allowed = loop.time() - self.keepalive_expiry
        while idle:
            conn = idle.pop()
            if conn.loop is not loop:
                continue  # from an event loop that is gone (tests): drop it
            if conn.reusable and conn.idle_since >= oldest_allowed:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if self._closed or self.max_idle_per_origin <= 0 or conn.state is not _State.ACTIVE:
            conn.close()
            return
        transport = conn.transport
        if transport is None or transport.is_closing():
            conn.close()
            return
        conn.idle(conn.loop.time())
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        if len(idle) >= self.max_idle_per_origin:
            idle.popleft().close()
        idle.append(conn)

    async def _connect(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> _Connection:
        scheme, host, port = origin
        context = self._tls_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                sock = await aiohappyeyeballs.start_connection(
                    infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
                )
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, origin, self.read_timeout),
                    sock=sock,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise ConnectTimeout(
                f"no connection to {host}:{port} within {self.connect_timeout}s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self.connections_opened += 1
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    async def _exchange(self, conn: _Connection, request: bytes, *, reused: bool) -> Response:
        try:
            conn.send(request)
            while not conn.headers_done:
                error = conn.error
                if error is not None:
                    if reused and not conn.got_bytes and isinstance(error, ConnectionClosed):
                        raise _Stale from error
                    raise error
                await conn.wait()
        except BaseException:
            conn.close()  # half a request or response: never back to the pool
            raise
        return Response(conn, self)


class LeanResponse:
    """:class:`Response` with the interface of :class:`relay.llm.transport.Response`."""

    __slots__ = ("_response", "status")

    def __init__(self, response: Response) -> None:
        self._response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self._response.header(name)

    def hold(self) -> None:
        self._response.hold()

    async def receive(self) -> bytes:
        try:
            return await self._response.receive()
        except HTTPError as exc:
            raise LLMError(f"the LLM stream broke: {exc!r}", retryable=True) from exc

    async def read(self, limit: int) -> bytes:
        return await self._response.read(limit)

    async def finish(self) -> None:
        response = self._response
        if not response.complete:
            read = 0
            try:
                async with asyncio.timeout(0.1):
                    while data := await response.receive():
                        read += len(data)
                        if read > 64 * 1024:
                            break
            except (TimeoutError, HTTPError):
                pass
        response.close()

    def close(self) -> None:
        self._response.close()


class LeanTransport:
    """relay's own HTTP/1.1 client behind the transport interface (for comparison)."""

    def __init__(self, pool: ConnectionPool | None = None) -> None:
        self.pool = pool if pool is not None else ConnectionPool(read_timeout=None)
        self._endpoints: dict[tuple[str, tuple[tuple[str, str], ...]], Endpoint] = {}

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, connect_timeout: float | None
    ) -> LeanResponse:
        key = (url, tuple(headers.items()))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = Endpoint(url, headers)
        self.pool.connect_timeout = connect_timeout
        try:
            return LeanResponse(await self.pool.post(endpoint, body))
        except ConnectError as exc:
            raise LLMError(
                f"cannot reach the LLM at {url}: {exc}", retryable=True, kind="connect"
            ) from exc
        except ProtocolError as exc:
            raise LLMError(
                f"the LLM at {url} sent an invalid HTTP response: {exc}", retryable=True,
                kind="malformed",
            ) from exc  # fmt: skip
        except HTTPError as exc:
            raise LLMError(f"LLM request failed: {exc!r}", retryable=True, kind="connect") from exc

    async def aclose(self) -> None:
        await self.pool.aclose()
