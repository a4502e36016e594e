"""The HTTP under the LLM client: aiohttp, one pooled session per client.

The exchange is always the same: POST a JSON body to ``…/chat/completions`` and read the
event stream as its bytes arrive. aiohttp does it with its C (llhttp) response parser and
a connection pool; this module only sets it up for that job and turns its errors into
:class:`~relay.errors.LLMError` with a ``kind``:

- **Pool**: keep-alive connections, at most ``max_connections`` in all (a request waits for a
  free one within the connect timeout); idle ones are closed after ``keepalive`` seconds.
- **Proxies** from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, with
  credentials in the proxy URL), looked up once per URL: aiohttp's ``trust_env`` would look
  them up (and read ``~/.netrc``) in a worker thread on every request, which cost 0.3 ms a
  request here and queues behind the thread pool under load. **Happy eyeballs** (RFC 8305, 250 ms) when a name has IPv6 and IPv4
  addresses, and **header limits** (8,190 bytes a line or field, 128 fields).
- No redirects are followed (a 3xx is a misconfigured URL, reported by the client), no
  compression is asked for (``Accept-Encoding: identity``: a compressed stream can be held
  back by the compressor), no cookies are kept.
- A request whose pooled connection turns out to have been closed by the server (it answered
  nothing at all) is sent once more on a new connection: servers close idle connections
  whenever they like, and the close can cross the request on the wire.
- aiohttp raising anything else of its own before a response reached relay is a ``connect``
  failure too (logged ``llm_transport_internal_error`` with the traceback), so the client
  retries it as it would a broken connection: the caller has heard nothing yet.

Time limits other than connecting are the client's (:mod:`relay.llm.client`): it bounds each
wait on :meth:`Response.receive` itself, so the first-token and between-chunk limits can
differ and nothing here caps them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Final

import aiohttp
import structlog
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from relay.errors import LLMError

log = structlog.get_logger("relay.llm.transport")

#: Header limits: aiohttp's defaults, stated here so that they are a decision.
MAX_LINE_SIZE: Final = 8190
MAX_FIELD_SIZE: Final = 8190
MAX_HEADERS: Final = 128
#: After ``[DONE]``, how long and how much more body to read for the connection to be reused.
#: The chunked terminator normally arrives with ``[DONE]`` or right after it.
DRAIN_SECONDS: Final = 0.1
DRAIN_BYTES: Final = 64 * 1024


class Response:
    """A streamed response. Close it (:meth:`close`) when done, even after an error."""

    __slots__ = ("_closed", "_content", "_held", "_response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self._closed = False
        self._held: asyncio.Transport | None = None
        self.status = response.status

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        return self._response.headers.get(name)

    def hold(self) -> None:
        """Leave the socket unread until the next :meth:`receive`. What the server sends
        meanwhile waits in the kernel and is then read at once: no wake-up for each piece."""
        connection = self._response.connection
        transport = connection.transport if connection is not None else None
        if self._held is None and transport is not None and transport.is_reading():
            transport.pause_reading()
            self._held = transport

    async def receive(self) -> bytes:
        """The next body bytes, whatever arrived since the last call; ``b""`` at the end."""
        if self._held is not None:
            held, self._held = self._held, None
            if not held.is_closing():
                held.resume_reading()
        try:
            return await self._content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise LLMError(f"the LLM stream broke: {exc!r}", retryable=True) from exc

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the rest of the body (error bodies)."""
        parts: list[bytes] = []
        size = 0
        while size < limit:
            data = await self.receive()
            if not data:
                break
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:limit]

    async def finish(self) -> None:
        """After ``[DONE]``: read the rest (bounded) so the connection goes back to the pool."""
        content = self._content
        if not content.at_eof():
            read = 0
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    while data := await content.readany():
                        read += len(data)
                        if read > DRAIN_BYTES:
                            break
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass  # the answer is complete; only the connection is lost (closed, not pooled)
        self.close()

    def close(self) -> None:
        """Back to the pool when the body was read to the end, else close the connection."""
        if self._closed:
            return
        self._closed = True
        if self._content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport:
    """POSTs to one server through a pooled :class:`aiohttp.ClientSession`, made on first use."""

    def __init__(
        self,
        *,
        max_connections: int = 4000,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive = keepalive
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._targets: dict[str, tuple[URL, URL | None, aiohttp.BasicAuth | None]] = {}

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        loop = asyncio.get_running_loop()
        if session is None or session.closed or self._loop is not loop:
            self._loop = loop  # a session from an event loop that is gone (tests) is dropped
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                keepalive_timeout=self.keepalive,
                ssl=self._ssl_context if self._ssl_context is not None else True,
                happy_eyeballs_delay=0.25,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # proxies: see _proxy
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                max_line_size=MAX_LINE_SIZE,
                max_field_size=MAX_FIELD_SIZE,
                max_headers=MAX_HEADERS,
            )
        return session

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, connect_timeout: float | None
    ) -> Response:
        """Send ``body``; returns once the status line and headers arrived."""
        session = self._open()
        target, proxy, proxy_auth = self._target(url)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=None
        )
        for again in (True, False):
            try:
                response = await session.post(
                    target, data=body, headers=headers, allow_redirects=False, timeout=timeout,
                    proxy=proxy, proxy_auth=proxy_auth,
                )  # fmt: skip
            except aiohttp.ServerDisconnectedError as exc:
                if again:
                    continue  # a pooled connection the server had closed: once more, fresh
                raise LLMError(
                    f"the LLM at {url} closed the connection: {exc!r}", retryable=True,
                    kind="connect",
                ) from exc  # fmt: skip
            except aiohttp.ConnectionTimeoutError as exc:
                raise LLMError(
                    f"no connection to the LLM at {url} within {connect_timeout}s",
                    retryable=True, kind="connect",
                ) from exc  # fmt: skip
            except (aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
                raise LLMError(
                    f"cannot reach the LLM at {url}: {exc}", retryable=True, kind="connect"
                ) from exc
            except aiohttp.ClientResponseError as exc:  # a response aiohttp could not parse
                raise LLMError(
                    f"the LLM at {url} sent an invalid HTTP response: {exc.message}",
                    retryable=True, kind="malformed",
                ) from exc  # fmt: skip
            except aiohttp.ClientError as exc:
                raise LLMError(
                    f"LLM request to {url} failed: {exc!r}", retryable=True, kind="connect"
                ) from exc
            except Exception as exc:
                # aiohttp failing inside itself before any response reached relay. Seen with
                # aiohttp 3.14.5: anything that takes a response's repr() before its headers
                # arrive (a diagnostic hook of ours did) caches `headers` as None, and start()
                # then raises AttributeError. Nothing was said yet, so the attempt is a failed
                # connection the client may retry; the traceback is logged, not lost in an
                # apology.
                log.error("llm_transport_internal_error", url=url, exc_info=exc)
                raise LLMError(
                    f"LLM request to {url} failed inside aiohttp: {exc!r}", retryable=True,
                    kind="connect",
                ) from exc  # fmt: skip
            return Response(response)
        raise AssertionError("unreachable")

    def _target(self, url: str) -> tuple[URL, URL | None, aiohttp.BasicAuth | None]:
        """``url`` parsed, and its proxy from the environment (as ``trust_env`` finds it)."""
        found = self._targets.get(url)
        if found is None:
            parsed = URL(url)
            try:
                proxy, auth = get_env_proxy_for_url(parsed)
            except LookupError:
                proxy, auth = None, None
            found = self._targets[url] = (parsed, proxy, auth)
        return found

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
