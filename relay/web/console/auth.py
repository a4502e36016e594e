"""Sign-in, signed session cookies, CSRF tokens and role checks for the console.

The session lives in the cookie itself (signed with HMAC-SHA256 under a secret stored once in
the database, so any worker can check it): the user, the role, the stamp of the user's password
(``store.credential_stamp``), a per-session CSRF token and an expiry. Every request re-checks
that the user still exists with that role and that password setting (or, for an admin token
session, that ``RELAY_ADMIN_TOKEN`` is still the same), so removing a user, or setting their
password again, signs them out.

Request bodies are read only through :func:`form`, which counts the bytes as they arrive and
stops at a cap (``FORM_LIMIT`` for forms, ``UPLOAD_LIMIT`` for the knowledge upload).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from relay.storage import console as store
from relay.web import limits

COOKIE = "relay_console"
PRE_COOKIE = "relay_console_signin"  # the sign-in form's CSRF token (double submit)
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
ADMIN_USER = "admin"
#: Scripts and styles only from the console itself (the waterfall bars use style attributes).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'"
)
_ENABLED_TTL = 5.0  # seconds the "are there console users?" answer is cached per worker
#: The largest form the console reads (bytes, counted as they arrive): every form but the
#: knowledge upload is a few fields.
FORM_LIMIT = 64 * 1024
#: The largest knowledge upload, all files together (five files at the 20 MB a file that
#: ``views.MAX_UPLOAD_BYTES`` allows; the admin API's upload has the same total).
UPLOAD_LIMIT = 100_000_000
#: Files one upload may carry.
UPLOAD_FILES = 50
_FORM_KEY = "relay.console.form"  # the request's form, once read (in the ASGI scope)
_ATTEMPT_KEY = "relay.console.sign_in_attempt"


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str
    token_session: bool  # signed in with RELAY_ADMIN_TOKEN
    nonce: str = ""  # names this session (sign-out revokes it)
    expires: int = 0

    @property
    def owner(self) -> bool:
        return self.role == "owner"


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


async def _key(request: Request) -> bytes:
    runtime = _runtime(request)
    key: bytes | None = runtime.console_key
    if key is None:
        secret = await store.shared_secret(runtime.deps.db)
        key = hashlib.sha256(b"relay-console\0" + secret.encode()).digest()
        runtime.console_key = key
    return key


def _admin_fingerprint(token: str) -> str:
    return hashlib.sha256(b"relay-console-admin\0" + token.encode()).hexdigest()[:16]


def sign(key: bytes, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return body + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def unsign(key: bytes, value: str) -> dict[str, Any] | None:
    body, _, mac = value.partition(".")
    if not body or not mac:
        return None
    expected = base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.decode().rstrip("="), mac):
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


async def enabled(request: Request) -> bool:
    """The console is on when an admin token is set or at least one console user exists."""
    runtime = _runtime(request)
    if runtime.settings.admin_token:
        return True
    cached = runtime.console_users_cached
    now = time.monotonic()
    if cached is not None and now - cached[0] < _ENABLED_TTL:
        return bool(cached[1])
    has = await store.has_users(runtime.deps.db)
    runtime.console_users_cached = (now, has)
    return has


def secure(request: Request) -> bool:
    """True when the browser reached us over https (directly or through a proxy)."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


async def current(request: Request) -> Session | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    payload = unsign(await _key(request), raw)
    if payload is None or float(payload.get("exp", 0)) < time.time():
        return None
    runtime = _runtime(request)
    user, role, csrf = str(payload.get("u", "")), str(payload.get("r", "")), str(payload.get("c"))
    nonce, expires = str(payload.get("n", "")), int(payload.get("exp", 0))
    if await store.session_revoked(runtime.deps.db, nonce):
        return None
    if payload.get("t"):
        token = runtime.settings.admin_token
        if not token or payload.get("f") != _admin_fingerprint(token):
            return None
        return Session(user, "owner", csrf, True, nonce, expires)
    stored = await store.user_credential(runtime.deps.db, user)
    # A session begun before the password was set again (or before the user was removed and
    # added back) carries another stamp; one from before stamps existed carries none.
    if stored is None or stored != (role, payload.get("s")):
        return None
    return Session(user, role, csrf, False, nonce, expires)


async def start_session(
    request: Request, response: Response, *, user: str, role: str, token: bool, stamp: str = ""
) -> None:
    """Set the session cookie; ``stamp`` is a user's ``store.credential_stamp``."""
    payload: dict[str, Any] = {
        "u": user,
        "r": role,
        "c": secrets.token_urlsafe(24),
        "exp": int(time.time()) + SESSION_SECONDS,
        "n": secrets.token_hex(12),
    }
    if token:
        payload["t"] = 1
        payload["f"] = _admin_fingerprint(_runtime(request).settings.admin_token or "")
    else:
        payload["s"] = stamp
    response.set_cookie(
        COOKIE,
        sign(await _key(request), payload),
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="lax",
        secure=secure(request),
    )
    response.delete_cookie(PRE_COOKIE, path="/console")


async def end_session(request: Request, response: Response, session: Session) -> None:
    """Sign out: this session's cookie is refused from now on, on every worker."""
    await store.revoke_session(_runtime(request).deps.db, session.nonce, session.expires)
    response.delete_cookie(
        COOKIE, path="/console", httponly=True, samesite="lax", secure=secure(request)
    )


async def signin_token(request: Request, response: Response | None = None) -> str:
    """The sign-in form's CSRF token: kept in a signed cookie and echoed by the form."""
    key = await _key(request)
    raw = request.cookies.get(PRE_COOKIE)
    payload = unsign(key, raw) if raw else None
    if payload is not None and isinstance(payload.get("c"), str):
        return str(payload["c"])
    token = secrets.token_urlsafe(24)
    if response is not None:
        response.set_cookie(
            PRE_COOKIE,
            sign(key, {"c": token}),
            max_age=3600,
            path="/console",
            httponly=True,
            samesite="lax",
            secure=secure(request),
        )
    return token


async def signin_csrf_ok(request: Request, given: str) -> bool:
    raw = request.cookies.get(PRE_COOKIE)
    payload = unsign(await _key(request), raw) if raw else None
    if payload is None or not isinstance(payload.get("c"), str):
        return False
    return hmac.compare_digest(str(payload["c"]).encode(), given.encode())


#: Failed sign-ins allowed per client address in ``FAILURE_WINDOW`` seconds (per worker).
MAX_FAILURES = 10
FAILURE_WINDOW = 300.0


def address(request: Request) -> str:
    """The client's address, as uvicorn gives it (from ``X-Forwarded-For`` only when the
    connection comes from a trusted proxy)."""
    return request.client.host if request.client else "?"


def _failures(request: Request) -> list[float]:
    table: dict[str, list[float]] | None = getattr(request.app.state, "console_failures", None)
    if table is None:
        table = {}
        request.app.state.console_failures = table
    now, source = time.monotonic(), address(request)
    recent = [t for t in table.get(source, []) if now - t < FAILURE_WINDOW]
    table[source] = recent
    return recent


def attempt(request: Request) -> float | None:
    """Count a sign-in attempt before its password is checked: None when it may go ahead, else
    the seconds to wait (this address failed too often).

    The attempt counts as a failure from now on, so sign-ins sent in parallel cannot all pass
    the check while the (slow) password checks run: at most ``MAX_FAILURES`` are checked.
    :func:`succeeded` takes it back. No ``await`` between the check and the count."""
    recent = _failures(request)
    if len(recent) >= MAX_FAILURES:
        return max(1.0, FAILURE_WINDOW - (time.monotonic() - recent[0]))
    stamp = time.monotonic()
    recent.append(stamp)
    request.scope[_ATTEMPT_KEY] = stamp
    return None


def succeeded(request: Request) -> None:
    """The attempt counted by :func:`attempt` signed in: it is no failure."""
    stamp = request.scope.pop(_ATTEMPT_KEY, None)
    recent = _failures(request)
    if stamp in recent:
        recent.remove(stamp)


def api_path(request: Request) -> bool:
    return request.url.path.startswith("/console/api/")


def not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


def harden(response: Response) -> Response:
    """The headers every console response carries (a handler's own value wins)."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


# -- request bodies -------------------------------------------------------------------------------


class Refusal(Exception):
    """A request the console refuses before (or instead of) doing its work: the status and the
    words for the user. Raised by the helpers that read a request; answered by the endpoint
    wrappers (:func:`guard`, :func:`public`)."""

    def __init__(self, status: int, title: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.close = close  # the body was not read to its end: the connection cannot go on


async def form(request: Request, *, upload: bool = False, multipart: bool = True) -> FormData:
    """The request's form, read once (the guard may have read it for the CSRF token) under a
    cap counted as the bytes arrive (``relay.web.limits``).

    ``application/x-www-form-urlencoded`` up to ``FORM_LIMIT`` bytes; ``multipart/form-data``
    when ``multipart`` (the console's script posts the command form as ``FormData``): without
    files and up to ``FORM_LIMIT``, or for an ``upload`` up to ``UPLOAD_FILES`` files and
    ``UPLOAD_LIMIT`` bytes in all. A body of another media type (or none) is an empty form,
    left unread. Raises :class:`Refusal` (413 over the cap, 415 multipart where it is not
    taken, 400 a malformed body)."""
    read: FormData | None = request.scope.get(_FORM_KEY)
    if read is not None:
        return read
    kind = limits.media_type(request.headers)
    if kind not in (limits.URLENCODED, limits.MULTIPART):
        read = FormData()
    else:
        limit = UPLOAD_LIMIT if upload else FORM_LIMIT
        try:
            read = await limits.read_form(
                request,
                limit=limit,
                accept=(limits.URLENCODED, limits.MULTIPART) if multipart else (limits.URLENCODED,),
                max_files=UPLOAD_FILES if upload else 0,
            )
        except limits.BodyRefused as refused:
            if refused.status_code == 413:
                what = "The upload (all its files together)" if upload else "The form"
                message = f"{what} is over the limit of {limit} bytes."
                raise Refusal(413, "Too large", message, close=True) from refused
            raise Refusal(
                refused.status_code, "Not taken", refused.message, close=True
            ) from refused
    request.scope[_FORM_KEY] = read
    return read


async def _close_form(request: Request) -> None:
    """Close an upload's files (their temporary files)."""
    read: FormData | None = request.scope.get(_FORM_KEY)
    if read is not None:
        await read.close()


def _refused(request: Request, refusal: Refusal, session: Session | None) -> Response:
    """A refusal in the form the client reads: JSON for the API and scripts (``X-CSRF-Token``),
    else the error page."""
    response: Response
    if api_path(request) or request.headers.get(CSRF_HEADER) is not None:
        response = JSONResponse({"error": refusal.message}, status_code=refusal.status)
    else:
        from relay.web.console.render import render_error

        response = render_error(request, refusal.status, refusal.title, refusal.message, session)
    if refusal.close:
        # What is left of the body is not read: uvicorn would otherwise read it to its end.
        response.headers["Connection"] = "close"
    return response


# -- endpoints ------------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Session], Awaitable[Response]]


def _nul_in(request: Request) -> bool:
    """A NUL in the path or the query: no name, id or filter of the console has one, and
    PostgreSQL refuses it in any text (a server error until late 7 December)."""
    if "\x00" in request.url.path:
        return True
    return any("\x00" in k or "\x00" in v for k, v in request.query_params.multi_items())


def _body_left(request: Request, response: Response) -> None:
    """A request whose body was not read (refused before it, or a handler that reads none): the
    connection is closed after the answer, or uvicorn would read the rest of the body, however
    large, to keep the connection for another request."""
    if request.method in ("GET", "HEAD") or _FORM_KEY in request.scope:
        return
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        response.headers["Connection"] = "close"


def public(handler: Endpoint) -> Endpoint:
    """Wrap an endpoint open without a session (sign-in, static files): the console's headers
    on every answer, and a :class:`Refusal` answered."""

    async def endpoint(request: Request) -> Response:
        if _nul_in(request):
            response: Response = PlainTextResponse("Bad Request", status_code=400)
        else:
            try:
                response = await handler(request)
            except Refusal as refusal:
                response = _refused(request, refusal, None)
        _body_left(request, response)
        return harden(response)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def guard(*, role: str = "owner", upload: bool = False) -> Callable[[Handler], Endpoint]:
    """Wrap a handler: 404 while the console is off; no session: sign-in redirect (pages) or
    401 (API); wrong role: 403; a POST without the session's CSRF token: 403. The body of a
    POST is read only after the session is checked, through :func:`form` (``upload``: the
    knowledge upload's cap). Every answer carries the console's headers."""

    def wrap(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                response = await _guarded(request, handler, role, upload)
            finally:
                await _close_form(request)  # uploaded files' temporary files
            _body_left(request, response)
            response.headers.setdefault("Cache-Control", "no-store")
            return harden(response)

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


async def _guarded(request: Request, handler: Handler, role: str, upload: bool) -> Response:
    if not await enabled(request):
        return not_found()
    if _nul_in(request):
        return PlainTextResponse("Bad Request", status_code=400)
    session = await current(request)
    if session is None:
        if api_path(request) or request.method != "GET":
            return JSONResponse({"error": "sign in first"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/sign-in?next={quote(target, safe='')}", status_code=303)
    if role == "owner" and not session.owner:
        return forbidden(request, "This part of the console is for owners only.", session)
    try:
        if request.method not in ("GET", "HEAD") and not await csrf_ok(request, session, upload):
            return forbidden(request, "The form was out of date or forged (CSRF check).", session)
        return await handler(request, session)
    except Refusal as refusal:
        return _refused(request, refusal, session)


async def csrf_ok(request: Request, session: Session, upload: bool = False) -> bool:
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        value = (await form(request, upload=upload)).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())


def forbidden(request: Request, message: str, session: Session | None = None) -> Response:
    """403: JSON for the API and actions; for a page, the error page with the user's own
    navigation and a link to their landing page (an editor's is the knowledge page)."""
    if api_path(request) or request.method != "GET":
        return JSONResponse({"error": message}, status_code=403)
    from relay.web.console.render import render_error

    return render_error(request, 403, "Not allowed", message, session)
