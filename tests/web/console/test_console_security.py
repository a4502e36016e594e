"""Console hardening over real HTTP: request bodies capped as they arrive, the sign-in limit
under parallel tries, sessions that end when a password is set again, numbers and dates out of
range, and the headers on every answer.

The raw exchanges write a body's start and never its end: a server that waited for the rest
would never answer, so an answer at all shows it stopped reading."""

from __future__ import annotations

import asyncio
import html
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from relay.storage import console as store
from relay.storage.models import Call
from relay.web.console import auth, views
from tests.conftest import fresh_logging, raw_exchange
from tests.web.console.conftest import ADMIN_TOKEN, Browser, csrf_in, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 10.0  # the longest a raw exchange waits for an answer (a limit, never an expectation)
HUGE = "9" * 26  # past any 64-bit integer


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.web.console.views")


def db(relay: Any) -> Any:
    return relay.runtime.deps.db


async def exchange(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], str]:
    """A raw request's head and body start, and the answer to the end of the connection."""
    return await raw_exchange(base_url, head, body, wait=WAIT)


def chunked(data: bytes, size: int = 4096) -> bytes:
    """``data`` in chunks of the chunked transfer coding, without the last (empty) one."""
    return b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (data[i : i + size] for i in range(0, len(data), size))
    )


def cookie_header(browser: Browser) -> str:
    return "; ".join(f"{name}={value}" for name, value in browser.http.cookies.items())


def multipart(fields: dict[str, str], file: bytes | None = None) -> bytes:
    """A multipart body (boundary ``B``): ``fields``, then a file when given."""
    parts = [
        b'--B\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (name.encode(), value.encode())
        for name, value in fields.items()
    ]
    if file is not None:
        parts.append(
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n%s\r\n" % file
        )
    return b"".join(parts) + b"--B--\r\n"


# -- request bodies ----------------------------------------------------------------------------


async def test_the_sign_in_form_is_capped_as_it_arrives(relay: Any) -> None:
    head = "POST /console/sign-in HTTP/1.1\nHost: x\n"
    urlencoded = head + "Content-Type: application/x-www-form-urlencoded\n"
    over, headers, text = await exchange(
        relay.base_url,
        urlencoded + "Transfer-Encoding: chunked\n",
        chunked(b"csrf=x&token=" + b"A" * (auth.FORM_LIMIT + 4096)),  # never its end
    )
    assert (over, headers["connection"]) == (413, "close")
    assert f"The form is over the limit of {auth.FORM_LIMIT} bytes." in text
    assert headers["x-content-type-options"] == "nosniff"

    declared, _, _ = await exchange(
        relay.base_url, urlencoded + f"Content-Length: {auth.FORM_LIMIT + 1}\n"
    )
    assert declared == 413

    # The sign-in form is never multipart: refused before any of it is read.
    status, headers, _ = await exchange(
        relay.base_url,
        head + "Content-Type: multipart/form-data; boundary=B\nContent-Length: 4000000000\n",
    )
    assert (status, headers["connection"]) == (415, "close")


async def test_a_signed_in_form_is_capped_as_it_arrives(relay: Any) -> None:
    browser = await sign_in(relay.base_url)
    head = f"POST /console/notifications HTTP/1.1\nHost: x\nCookie: {cookie_header(browser)}\n"
    over, headers, _ = await exchange(
        relay.base_url,
        head + "Content-Type: application/x-www-form-urlencoded\nTransfer-Encoding: chunked\n",
        chunked(f"csrf={browser.csrf}&email=".encode() + b"A" * (auth.FORM_LIMIT + 4096)),
    )
    assert (over, headers["connection"]) == (413, "close")
    # A file where a form has none: refused at its headers (the form's fields may be multipart,
    # as the console's script posts the command form).
    with_file, _, _ = await exchange(
        relay.base_url,
        head + "Content-Type: multipart/form-data; boundary=B\nTransfer-Encoding: chunked\n",
        chunked(multipart({"csrf": browser.csrf}, b"x" * 1000)[:-10]),
    )
    assert with_file == 400

    fields = {"csrf": browser.csrf, "kind": "whisper", "argument": "offer the Tuesday"}
    command = await browser.http.post(
        "/console/calls/CA-multipart/command",
        content=multipart(fields),
        headers={"Content-Type": "multipart/form-data; boundary=B", "X-CSRF-Token": browser.csrf},
    )
    assert command.status_code == 200 and command.json()["kind"] == "whisper"
    await browser.http.aclose()


async def test_a_knowledge_upload_is_refused_as_soon_as_it_passes_the_cap(
    relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = await sign_in(relay.base_url)
    head = (
        f"POST /console/knowledge/upload HTTP/1.1\nHost: x\nCookie: {cookie_header(browser)}\n"
        "Content-Type: multipart/form-data; boundary=B\n"
    )
    declared, headers, text = await exchange(
        relay.base_url, head + f"Content-Length: {auth.UPLOAD_LIMIT + 1}\n"
    )
    assert (declared, headers["connection"]) == (413, "close")
    assert (
        f"The upload (all its files together) is over the limit of {auth.UPLOAD_LIMIT} bytes."
        in text
    )

    monkeypatch.setattr(auth, "UPLOAD_LIMIT", 100_000)
    # Just over the cap (what the client sends past it, the server leaves unread).
    data = multipart({"csrf": browser.csrf, "agent": "piano-removals"}, b"x" * 100_000)
    over, headers, text = await exchange(
        relay.base_url, head + "Transfer-Encoding: chunked\n", chunked(data[:-10])
    )
    assert (over, headers["connection"]) == (413, "close")
    assert "The upload (all its files together) is over the limit of 100000 bytes." in text
    # From the page's script: the same refusal, as JSON.
    over, _, text = await exchange(
        relay.base_url,
        head + f"X-CSRF-Token: {browser.csrf}\nTransfer-Encoding: chunked\n",
        chunked(data[:-10]),
    )
    assert over == 413
    assert text.endswith(
        '{"error":"The upload (all its files together) is over the limit of 100000 bytes."}'
    )
    await browser.http.aclose()


# -- signing in ---------------------------------------------------------------------------------


async def test_parallel_wrong_passwords_get_no_more_checks_than_the_limit(
    start_relay: Any,
) -> None:
    async with (
        start_relay(RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as relay,
        httpx.AsyncClient(base_url=relay.base_url, timeout=30) as http,
    ):
        await store.add_user(db(relay), "olive", "a long password", "owner")
        csrf = csrf_in((await http.get("/console/sign-in")).text)

        async def attempt(password: str) -> int:
            form = {"csrf": csrf, "username": "olive", "password": password}
            return (await http.post("/console/sign-in", data=form)).status_code

        # A sign-in that succeeds is no failure.
        assert [await attempt("wrong") for _ in range(3)] == [401] * 3
        assert await attempt("a long password") == 303
        http.cookies.clear()  # signed in: the sign-in form's token is spent
        csrf = csrf_in((await http.get("/console/sign-in")).text)
        with capture_logs() as logs:
            statuses = await asyncio.gather(*[attempt(f"wrong {n}") for n in range(30)])
        assert Counter(statuses) == {401: auth.MAX_FAILURES - 3, 429: 33 - auth.MAX_FAILURES}
        assert await attempt("a long password") == 429

    failed = [e for e in logs if e["event"] == "console_sign_in_failed"]
    assert len(failed) == auth.MAX_FAILURES - 3
    assert {(e["username"], e["address"]) for e in failed} == {("olive", "127.0.0.1")}


async def test_setting_a_password_again_or_removing_a_user_ends_their_sessions(
    relay: Any,
) -> None:
    await store.add_user(db(relay), "olga", "first password", "owner")
    first = await sign_in(relay.base_url, token=None, username="olga", password="first password")
    assert (await first.http.get("/console/calls")).status_code == 200

    # The same role, even the same password: a new salt, so the sessions begun before end.
    assert await store.add_user(db(relay), "olga", "first password", "owner")
    assert (await first.http.get("/console/calls")).status_code == 303
    assert (await first.http.get("/console/api/live")).status_code == 401

    second = await sign_in(relay.base_url, token=None, username="olga", password="first password")
    assert (await second.http.get("/console/calls")).status_code == 200
    assert await store.remove_user(db(relay), "olga")
    assert (await second.http.get("/console/calls")).status_code == 303
    # Added back: the sessions of before stay ended.
    assert not await store.add_user(db(relay), "olga", "first password", "owner")
    assert (await second.http.get("/console/calls")).status_code == 303
    assert (await first.http.get("/console/calls")).status_code == 303
    await first.http.aclose()
    await second.http.aclose()


# -- numbers and dates out of range ------------------------------------------------------------


async def test_numbers_and_dates_out_of_range_are_answered_not_failed(relay: Any) -> None:
    ended = datetime(2031, 3, 1, tzinfo=UTC)
    async with db(relay).session() as session, session.begin():
        session.add(Call(call_sid="CA-ended-range", agent="piano-removals",
                         from_number="+61412000777", started_at=ended,
                         ended_at=ended + timedelta(minutes=1), status="completed", turns=0))  # fmt: skip
    browser = await sign_in(relay.base_url)
    http = browser.http
    for path in ["/console/calls", "/console/quotes", "/console/bookings", "/console/messages"]:
        for page in (HUGE, "-" + HUGE, str(views.MAX_PAGE)):
            response = await http.get(path, params={"page": page})
            assert response.status_code == 200, (path, page, response.text)

    for path, params in [
        ("/console/calendar", {"start": "9999-12-31", "view": "week"}),
        ("/console/calendar", {"start": "9999-12-31", "view": "day"}),
        ("/console/calendar", {"start": "0001-01-01"}),
        ("/console/calls", {"until": "9999-12-31"}),
        ("/console/calls", {"since": "0001-01-01"}),
        ("/console/bookings", {"until": "9999-12-31"}),
        ("/console/bookings", {"since": "0001-01-01"}),
    ]:
        response = await http.get(path, params=params)
        assert response.status_code == 400, (path, params)
        day = next(iter(d for k, d in params.items() if k != "view"))
        assert f"{day} is out of range: give a day from 1900-01-01 to 9998-12-31." in response.text
    # Not a day at all: refused too (until late 7 December it was no filter, every call listed).
    for path, params in [
        ("/console/calls", {"since": "2026-13-01"}),
        ("/console/bookings", {"until": "tomorrow"}),
        ("/console/calendar", {"start": "2026-02-30"}),
    ]:
        response = await http.get(path, params=params)
        assert response.status_code == 400, (path, params)
        day = next(iter(d for k, d in params.items() if k != "view"))
        assert f"{day!r} is not a day: give one as YYYY-MM-DD." in html.unescape(response.text)
    for path, params in [
        ("/console/calendar", {"start": "9998-12-31", "view": "week"}),
        ("/console/calendar", {"start": "1900-01-01"}),
        ("/console/calls", {"since": "1900-01-01", "until": "9998-12-31"}),
        ("/console/bookings", {"since": "1900-01-01", "until": "9998-12-31"}),
    ]:
        assert (await http.get(path, params=params)).status_code == 200, (path, params)

    # tickets.id is an INTEGER: past 2**31 - 1 PostgreSQL refused the look-up (a server error
    # until late 7 December); SQLite took it.
    for ticket in (HUGE, str(views.MAX_ID + 1), str(2**31), str(views.MAX_ID), "0"):
        done = await http.post(
            f"/console/messages/{ticket}/done", headers={"X-CSRF-Token": browser.csrf}
        )
        assert (done.status_code, done.json()) == (404, {"error": "no such message"})

    for after in (HUGE, "-" + HUGE):
        stream = await http.get("/console/api/calls/CA-ended-range/stream", params={"after": after})
        assert stream.status_code == 200
        assert stream.text == "retry: 1000\n\nevent: ended\ndata: {}\n\n"
    await http.aclose()


async def test_a_nul_in_a_console_url_is_a_bad_request(relay: Any) -> None:
    """PostgreSQL refuses a NUL in any text: a call's page or a filter with one was a server
    error there until late 7 December. No name, id or filter of the console has one."""
    browser = await sign_in(relay.base_url)
    for path, params in [
        ("/console/calls/x%00y", {}),
        ("/console/calls", {"agent": "\x00", "caller": "\x00", "q": "\x00"}),
        ("/console/bookings", {"agent": "a\x00"}),
        ("/console/sign-in", {"next": "/console\x00"}),
    ]:
        response = await browser.http.get(path, params=params)
        assert response.status_code == 400, (path, params)
        assert response.headers["x-content-type-options"] == "nosniff"
    await browser.http.aclose()


async def test_a_post_whose_body_is_not_read_closes_the_connection(relay: Any) -> None:
    """A POST refused before its body is read (no session, the wrong role) or whose handler
    reads none (the CSRF token in its header): the connection is closed after the answer, or
    uvicorn reads the rest of the body, however large, to keep the connection (2 to 8 GB in a
    tester's runs). The exchange sends a body's start, never its end."""
    head = "POST /console/sign-out HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\n"
    status, headers, _ = await exchange(
        relay.base_url, head + "Content-Length: 4000000000\n", b"csrf=x&" + b"A" * 1000
    )
    assert (status, headers["connection"]) == (401, "close")

    browser = await sign_in(relay.base_url)
    signed = head + f"Cookie: {cookie_header(browser)}\nX-CSRF-Token: {browser.csrf}\n"
    status, headers, _ = await exchange(
        relay.base_url, signed + "Transfer-Encoding: chunked\n", chunked(b"A" * 100_000)
    )
    assert (status, headers["connection"]) == (303, "close")  # signed out, body never read
    await browser.http.aclose()


async def test_the_calls_filter_takes_the_business_days(relay: Any) -> None:
    """Melbourne is UTC+11 in March: 14:00 UTC is 01:00 the next day there."""
    async with db(relay).session() as session, session.begin():
        for sid, started in [
            ("CA-melbourne-10th", datetime(2031, 3, 9, 14, 0, tzinfo=UTC)),
            ("CA-melbourne-11th", datetime(2031, 3, 10, 14, 0, tzinfo=UTC)),
        ]:
            session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412000888",
                             started_at=started, ended_at=started + timedelta(minutes=1),
                             status="completed", turns=0))  # fmt: skip
    browser = await sign_in(relay.base_url)
    page = await browser.http.get(
        "/console/calls", params={"since": "2031-03-10", "until": "2031-03-10"}
    )
    assert page.status_code == 200
    assert "/console/calls/CA-melbourne-10th" in page.text
    assert "/console/calls/CA-melbourne-11th" not in page.text
    await browser.http.aclose()


# -- headers --------------------------------------------------------------------------------------


async def test_every_console_answer_says_nosniff(relay: Any) -> None:
    ended = datetime(2031, 3, 2, tzinfo=UTC)
    async with db(relay).session() as session, session.begin():
        session.add(Call(call_sid="CA-ended-headers", agent="piano-removals",
                         from_number="+61412000999", started_at=ended,
                         ended_at=ended + timedelta(minutes=1), status="completed", turns=0))  # fmt: skip
    browser = await sign_in(relay.base_url)
    async with httpx.AsyncClient(base_url=relay.base_url) as anonymous:
        csrf = csrf_in((await anonymous.get("/console/sign-in")).text)
        answers = [
            await anonymous.get("/console/sign-in"),
            await anonymous.post("/console/sign-in", data={"csrf": "forged", "token": "x"}),
            await anonymous.post("/console/sign-in", data={"csrf": csrf, "token": "wrong"}),
            await anonymous.get("/console/static/console.css"),
            await anonymous.get("/console/static/nothing.css"),
            await anonymous.get("/console/calls"),
            await anonymous.get("/console/api/live"),
            await anonymous.post("/console/messages/1/done"),
        ]
    answers += [
        await browser.http.get("/console/calls"),
        await browser.http.get("/console/calls/CA-none"),
        await browser.http.get("/console/calendar", params={"start": "0001-01-01"}),
        await browser.http.get("/console/api/live"),
        await browser.http.get("/console/api/calls/CA-ended-headers/stream"),
        await browser.http.post("/console/messages/1/done", data={"csrf": "forged"}),
    ]
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 403, 401, 200, 404, 303, 401, 401, 200, 404, 400, 200, 200, 403]
    assert answers[-2].headers["content-type"].startswith("text/event-stream")
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
    await browser.http.aclose()
