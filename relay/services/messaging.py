"""Twilio's REST API (texts and outbound calls) through the ``twilio`` package, over httpx.

The ``twilio`` package builds every request (URL, form fields, auth); :class:`HttpxTwilioClient`
only carries them, over the service's shared ``httpx.AsyncClient``. Its own async client uses
aiohttp, which would open a second connection pool and which respx cannot intercept in tests.
Twilio's errors are converted to :class:`TwilioError` here, at the boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response

from relay.errors import RelayError

if TYPE_CHECKING:
    from twilio.rest import Client

__all__ = [
    "HTTP_TIMEOUT",
    "HttpxTwilioClient",
    "Sent",
    "TwilioCredentials",
    "TwilioError",
    "TwilioTimeout",
    "credentials",
    "place_call",
    "send_sms",
    "twilio_client",
]

_log = logging.getLogger("relay.twilio")


class TwilioError(RelayError):
    """Twilio refused a request or could not be reached. ``code`` is Twilio's error code."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TwilioTimeout(TwilioError):
    """The request may have reached Twilio but no answer came in time: whether it took effect
    is unknown, so it must not be repeated blindly (a text could arrive twice)."""


#: Seconds a request to Twilio may take. Tools that call Twilio allow more than this, so the
#: HTTP timeout (an answer Twilio may still have acted on) always fires before the tool's own.
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class TwilioCredentials:
    """The account to send from. ``from_number`` is the default SMS sender (``RELAY_SMS_FROM``);
    without it, texts go from the agent's own number."""

    account_sid: str
    auth_token: str
    from_number: str | None = None

    def __repr__(self) -> str:  # never print the token
        return (
            f"TwilioCredentials(account_sid={self.account_sid!r}, from_number={self.from_number!r})"
        )


def credentials(
    account_sid: str | None, auth_token: str | None, from_number: str | None = None
) -> TwilioCredentials | None:
    """Credentials when both the account SID and the auth token are set, else None."""
    if not account_sid or not auth_token:
        return None
    return TwilioCredentials(account_sid, auth_token, from_number or None)


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]  # twilio is untyped
    """A ``twilio`` HTTP client that sends through an injected ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = HTTP_TIMEOUT) -> None:
        super().__init__(_log, is_async=True, timeout=timeout)
        self._http = http

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        try:
            response = await self._http.request(
                method.upper(),
                uri,
                params=_query(params),
                data=data or None,
                headers=headers,
                auth=auth,
                timeout=timeout or self.timeout,
                follow_redirects=allow_redirects,
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing was sent: safe to report as a plain failure.
            raise TwilioError(f"could not reach Twilio: {exc.__class__.__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise TwilioTimeout(
                f"no answer from Twilio in time ({exc.__class__.__name__}); the request may "
                "have been carried out"
            ) from exc
        except httpx.HTTPError as exc:
            raise TwilioError(f"could not reach Twilio: {exc.__class__.__name__}: {exc}") from exc
        return Response(response.status_code, response.text, response.headers)


def _query(params: dict[str, object] | None) -> dict[str, Any] | None:
    return {k: v for k, v in params.items() if v is not None} if params else None


def twilio_client(creds: TwilioCredentials, http: httpx.AsyncClient) -> Client:
    """A ``twilio.rest.Client`` whose requests go through ``http``."""
    from twilio.rest import Client

    return Client(creds.account_sid, creds.auth_token, http_client=HttpxTwilioClient(http))


@dataclass(frozen=True)
class Sent:
    """What Twilio answered: the resource's SID (``SM…`` or ``CA…``) and its status."""

    sid: str
    status: str


async def send_sms(
    creds: TwilioCredentials, http: httpx.AsyncClient, *, to: str, from_: str, body: str
) -> Sent:
    """Send a text with the Messages API. Raises :class:`TwilioError`."""
    client = twilio_client(creds, http)
    try:
        message = await client.messages.create_async(to=to, from_=from_, body=body)
    except TwilioException as exc:
        raise _converted(exc) from exc
    return Sent(sid=str(message.sid or ""), status=str(message.status or "queued"))


async def place_call(
    creds: TwilioCredentials, http: httpx.AsyncClient, *, to: str, from_: str, twiml: str
) -> Sent:
    """Start an outbound call that runs ``twiml`` when answered. Raises :class:`TwilioError`."""
    client = twilio_client(creds, http)
    try:
        call = await client.calls.create_async(to=to, from_=from_, twiml=twiml)
    except TwilioException as exc:
        raise _converted(exc) from exc
    return Sent(sid=str(call.sid or ""), status=str(call.status or "queued"))


def _converted(exc: TwilioException) -> TwilioError:
    if isinstance(exc, TwilioRestException):
        return TwilioError(
            f"Twilio refused the request: {exc.msg} (HTTP {exc.status}, code {exc.code})",
            status=exc.status,
            code=exc.code,
        )
    return TwilioError(f"Twilio error: {exc}")
