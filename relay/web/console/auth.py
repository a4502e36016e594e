"""Sign-in, signed session cookies, CSRF tokens and role checks for the console.

The session lives in the cookie itself (signed with HMAC-SHA256 under a secret stored once in
the database, so any worker can check it): the user, the role, a per-session CSRF token and an
expiry. Every request re-checks that the user still exists with that role (or, for an admin
token session, that ``RELAY_ADMIN_TOKEN`` is still the same), so removing a user signs them out.
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
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from relay.storage import console as store

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
    stored = await store.user_role(runtime.deps.db, user)
    if stored is None or stored != role:
        return None
    return Session(user, role, csrf, False, nonce, expires)


async def start_session(
    request: Request, response: Response, *, user: str, role: str, token: bool
) -> None:
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


def _failures(request: Request) -> list[float]:
    table: dict[str, list[float]] | None = getattr(request.app.state, "console_failures", None)
    if table is None:
        table = {}
        request.app.state.console_failures = table
    address = request.client.host if request.client else "?"
    now = time.monotonic()
    recent = [t for t in table.get(address, []) if now - t < FAILURE_WINDOW]
    table[address] = recent
    return recent


def throttled(request: Request) -> float | None:
    """Seconds to wait when this address failed to sign in too often, else None."""
    recent = _failures(request)
    if len(recent) < MAX_FAILURES:
        return None
    return max(1.0, FAILURE_WINDOW - (time.monotonic() - recent[0]))


def failed(request: Request) -> None:
    _failures(request).append(time.monotonic())


def api_path(request: Request) -> bool:
    return request.url.path.startswith("/console/api/")


def not_found() -> Response:
    return PlainTextResponse("Not Found", status_code=404)


Handler = Callable[[Request, Session], Awaitable[Response]]


def guard(*, role: str = "owner") -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: 404 while the console is off; no session: sign-in redirect (pages) or
    401 (API); wrong role: 403; a POST without the session's CSRF token: 403."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not await enabled(request):
                return not_found()
            session = await current(request)
            if session is None:
                if api_path(request) or request.method != "GET":
                    return JSONResponse(
                        {"error": "sign in first"},
                        status_code=401,
                        headers={"Cache-Control": "no-store"},
                    )
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"/console/sign-in?next={quote(target, safe='')}", status_code=303
                )
            if role == "owner" and not session.owner:
                return forbidden(request, "This part of the console is for owners only.", session)
            if request.method not in ("GET", "HEAD") and not await csrf_ok(request, session):
                return forbidden(
                    request, "The form was out of date or forged (CSRF check).", session
                )
            try:
                response = await handler(request, session)
            finally:
                await request.close()  # uploaded files' temporary files
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            return response

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


async def csrf_ok(request: Request, session: Session) -> bool:
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form(max_files=50)
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())


def forbidden(request: Request, message: str, session: Session | None = None) -> Response:
    """403: JSON for the API and actions; for a page, the error page with the user's own
    navigation and a link to their landing page (an editor's is the knowledge page)."""
    if api_path(request) or request.method != "GET":
        return JSONResponse({"error": message}, status_code=403)
    from relay.web.console.render import render_error

    return render_error(request, 403, "Not allowed", message, session)
