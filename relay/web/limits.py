"""Request bodies read under a cap, counted as the bytes arrive.

Starlette's ``request.form()`` reads a body of any size before the handler can look at it, and
spools a multipart body's files to temporary files: an unsigned client could make the server
write gigabytes to disk before it answered 403. :func:`read_form` instead refuses a media type
the route does not take before reading anything (415), refuses a ``Content-Length`` over the cap
at once, and counts the bytes of every body, chunked or not, as they arrive: past the cap it
stops reading (413). Its refusals ask the server to close the connection, so that the rest of a
refused body is not read either (uvicorn would otherwise read and discard it to reuse the
connection).

Use it in place of ``request.form()`` wherever a client that has not yet proved who it is can
send a body (Twilio's webhooks, the console's forms, the admin API's upload)::

    try:
        form = await limits.read_form(request, limit=limits.SMALL_FORM_BYTES)
    except limits.BodyRefused as refused:
        return refused.response()  # 400, 413 or 415, plain text, Connection: close
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Collection

from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"

#: The cap for a form with no files: Twilio's webhooks (a voice request is about 25 short
#: fields, 1-2 KB; ConversationRelay's action adds the session's ``HandoffData``, relay's own
#: short JSON) and the console's forms (a sign-in, a booking, a profile's text fields), with
#: room to spare, while a flood of them holds at most this much per request in memory.
SMALL_FORM_BYTES = 64 * 1024

#: Where a form read by :func:`read_form` is kept for the rest of the request (``request.state``
#: is shared by every ``Request`` made on the same scope): a second read returns it.
_STATE_KEY = "relay_limited_form"


class BodyRefused(Exception):
    """The body was refused, unread or partly read: ``status_code`` 400 (a malformed multipart
    body), 413 (over the cap) or 415 (a media type the route does not take)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def response(self) -> Response:
        """The plain-text answer, which also closes the connection (the body's unread rest is
        then never received)."""
        return Response(
            self.message + "\n",
            status_code=self.status_code,
            media_type="text/plain",
            headers={"Connection": "close"},
        )


def media_type(headers: Headers) -> str:
    """The request's media type, lower case, without parameters (``""`` when none is sent)."""
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def declared_length(headers: Headers) -> int | None:
    """The ``Content-Length`` the client sent, or None (absent, chunked, or not a number)."""
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def capped_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive, raising :class:`BodyRefused` (413) as soon as more
    than ``limit`` bytes have arrived, or before reading anything when the ``Content-Length``
    says more."""
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise too_large(limit)
    received = 0
    async with contextlib.aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            yield chunk


def too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, f"Payload too large: the body is limited to {limit} bytes")


async def read_form(
    request: Request,
    *,
    limit: int,
    accept: Collection[str] = (URLENCODED,),
    max_files: int = 1000,
    max_fields: int = 1000,
) -> FormData:
    """The request's form, read under ``limit`` bytes in all (see the module's docstring).

    ``accept``: the media types taken (:data:`URLENCODED`, :data:`MULTIPART`); any other,
    or none, is refused before reading (415). Raises :class:`BodyRefused`. A second call for the
    same request returns the same form. A multipart form's files are temporary files: close the
    form (``await form.close()``) once done with them."""
    kept = getattr(request.state, _STATE_KEY, None)
    if isinstance(kept, FormData):
        return kept
    kind = media_type(request.headers)
    if kind not in accept:
        taken = " or ".join(sorted(accept))
        raise BodyRefused(415, f"Unsupported media type {kind or '(none)'!r}: send {taken}")
    stream = capped_stream(request, limit)
    try:
        if kind == MULTIPART:  # its parser closes the files it made when reading fails
            parser = MultiPartParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            )
            form = await parser.parse()
        else:
            form = await FormParser(request.headers, stream, max_fields=max_fields).parse()
    except MultiPartException as exc:
        raise BodyRefused(400, exc.message) from exc
    finally:
        await stream.aclose()
    setattr(request.state, _STATE_KEY, form)
    return form
