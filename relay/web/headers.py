"""Headers every HTTP answer carries, whichever part of the app (or Starlette itself) wrote it.

``X-Content-Type-Options: nosniff`` tells a browser to take a response's ``Content-Type`` at its
word: a plain-text 404 that echoes nothing today, or a JSON export, is never read as HTML or
script. The console sets it with its other headers (relay.web.console.auth.harden); this
middleware covers the rest: the webhooks, the admin API, the health routes, and Starlette's own
404 and 405 answers. Its 500 answer is written by ``ServerErrorMiddleware``, outside every other
middleware, so :func:`server_error` writes it with the header instead.

WebSocket traffic passes untouched, and an HTTP answer costs one scan of its header list.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOSNIFF = (b"x-content-type-options", b"nosniff")


class NoSniff:
    """Adds ``X-Content-Type-Options: nosniff`` to every HTTP response that lacks it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    message["headers"] = [*headers, NOSNIFF]
            await send(message)

        await self.app(scope, receive, send_with_header)


async def server_error(request: Request, exc: Exception) -> Response:
    """Starlette's plain 500 answer, with the header (the exception is logged by the server)."""
    return PlainTextResponse(
        "Internal Server Error", status_code=500, headers={"X-Content-Type-Options": "nosniff"}
    )
