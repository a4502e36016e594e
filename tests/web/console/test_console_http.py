"""The console over real HTTP against a running relay: every refusal (console off, no session,
forged cookie, bad CSRF, editor on an owner page), the pages built from real calls, the live
transcript stream (Server-Sent Events) and supervisor commands reaching the call."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from sqlalchemy import select

from relay.storage import console as store
from relay.storage.console import BookingConfirmation, CallCommand
from relay.storage.models import Booking, Call, Quote, Ticket, Turn
from relay.testing import Text, ToolCall, ToolCalls
from tests.conftest import WAIT
from tests.web.console.conftest import ADMIN_TOKEN, csrf_in, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGES = [
    "/console",
    "/console/live",
    "/console/calls",
    "/console/calls/CA123",
    "/console/calls/CA123/export",
    "/console/quotes",
    "/console/bookings",
    "/console/calendar",
    "/console/messages",
    "/console/notifications",
    "/console/knowledge",
]
APIS = ["/console/api/live", "/console/api/calls/CA123/stream"]
POSTS = [
    "/console/sign-out",
    "/console/calls/CA123/command",
    "/console/bookings/123456/confirm",
    "/console/bookings/123456/cancel",
    "/console/messages/1/done",
    "/console/notifications",
    "/console/knowledge/upload",
    "/console/knowledge/remove",
]
OWNER_ONLY = [p for p in PAGES if not p.startswith("/console/knowledge")]
STATIC = ["/console/static/console.css", "/console/static/console.js", "/console/static/icon.svg"]
ICON = '<link rel="icon" href="/console/static/icon.svg" type="image/svg+xml">'


def db(relay: Any) -> Any:
    return relay.runtime.deps.db


# -- refusals ----------------------------------------------------------------------------------


async def test_console_is_off_until_a_token_or_a_user_exists(start_relay: Any) -> None:
    async with start_relay() as relay, httpx.AsyncClient(base_url=relay.base_url) as http:
        for path in [*PAGES, *APIS, "/console/sign-in", *STATIC]:
            assert (await http.get(path)).status_code == 404, path
        assert (await http.post("/console/sign-in", data={})).status_code == 404
        assert (await http.post("/console/messages/1/done")).status_code == 404

        await store.add_user(db(relay), "olive", "a long password", "owner")
        relay.runtime.console_users_cached = None  # the per-worker cache lasts a few seconds
        response = await http.get("/console")
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in?next=%2Fconsole"
        browser = await sign_in(
            relay.base_url, token=None, username="olive", password="a long password"
        )
        assert (await browser.http.get("/console/calls")).status_code == 200
        await browser.http.aclose()


async def test_every_page_and_route_refuses_without_a_session(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        for path in PAGES:
            response = await http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/console/sign-in?next=%2Fconsole"), path
        for path in APIS:
            response = await http.get(path)
            assert response.status_code == 401, path
            assert response.json() == {"error": "sign in first"}
        for path in POSTS:
            response = await http.post(path, data={"csrf": "x", "kind": "end"})
            assert response.status_code == 401, path


async def test_a_forged_or_tampered_cookie_is_no_session(relay: Any) -> None:
    browser = await sign_in(relay.base_url)
    cookie = browser.http.cookies["relay_console"]
    body, _, mac = cookie.partition(".")
    payload = orjson.loads(__import__("base64").urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["r"] = "owner"
    payload["u"] = "mallory"
    forged = __import__("base64").urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        for value in (forged + "." + mac, cookie[:-2] + "AA", "garbage"):
            http.cookies.set("relay_console", value, path="/console")
            assert (await http.get("/console/calls")).status_code == 303
            assert (await http.get("/console/api/live")).status_code == 401
    await browser.http.aclose()


async def test_sign_in_cookie_flags_and_sign_out(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        page = await http.get("/console/sign-in")
        csrf = csrf_in(page.text)
        response = await http.post(
            "/console/sign-in", data={"csrf": csrf, "token": ADMIN_TOKEN, "next": "/console/calls"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/console/calls"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("relay_console=")
        )
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags and "samesite=lax" in flags and "path=/console" in flags
        assert "secure" not in flags  # plain http
        calls = await http.get("/console/calls")
        assert calls.status_code == 200
        assert "script-src 'self'" in calls.headers["content-security-policy"]
        assert calls.headers["x-frame-options"] == "DENY"
        copied = http.cookies["relay_console"]
        out = await http.post("/console/sign-out", data={"csrf": csrf_in(calls.text)})
        assert out.status_code == 303
        assert (await http.get("/console/calls")).status_code == 303
    # A copy of the signed-out cookie is refused too (on every worker: the DB says so).
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        http.cookies.set("relay_console", copied, path="/console")
        assert (await http.get("/console/calls")).status_code == 303

    async with httpx.AsyncClient(
        base_url=relay.base_url, headers={"X-Forwarded-Proto": "https"}
    ) as http:
        page = await http.get("/console/sign-in")
        pre = page.headers["set-cookie"]
        assert "secure" in [part.strip().lower() for part in pre.split(";")]
        # httpx keeps Secure cookies away from http://, so hand the sign-in cookie over.
        response = await http.post(
            "/console/sign-in",
            data={"csrf": csrf_in(page.text), "token": ADMIN_TOKEN},
            headers={"Cookie": pre.split(";")[0]},
        )
        assert response.status_code == 303
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("relay_console=")
        )
        assert "secure" in [part.strip().lower() for part in cookie.split(";")]


async def test_sign_in_refuses_a_wrong_token_and_a_forged_form(relay: Any) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        page = await http.get("/console/sign-in")
        csrf = csrf_in(page.text)
        wrong = await http.post("/console/sign-in", data={"csrf": csrf, "token": "nope"})
        assert wrong.status_code == 401
        assert "relay_console=" not in wrong.headers.get("set-cookie", "")
        forged = await http.post("/console/sign-in", data={"csrf": "forged", "token": ADMIN_TOKEN})
        assert forged.status_code == 403
    async with httpx.AsyncClient(base_url=relay.base_url) as http:  # no sign-in cookie at all
        response = await http.post("/console/sign-in", data={"csrf": csrf, "token": ADMIN_TOKEN})
        assert response.status_code == 403


async def test_actions_refuse_a_missing_or_forged_csrf_token(relay: Any) -> None:
    async with db(relay).session() as session, session.begin():
        ticket = Ticket(agent="piano-removals", name="Ann", phone="+61412000111",
                        reason="Call back about a grand", status="open",
                        created_at=datetime.now(UTC))  # fmt: skip
        session.add(ticket)
        await session.flush()
        ticket_id = ticket.id
    browser = await sign_in(relay.base_url)
    path = f"/console/messages/{ticket_id}/done"
    for data, headers in (
        ({}, {}),
        ({"csrf": "forged"}, {}),
        ({}, {"X-CSRF-Token": "forged"}),
        ({"csrf": browser.csrf + "x"}, {}),
    ):
        response = await browser.http.post(path, data=data, headers=headers)
        assert response.status_code == 403, (data, headers)
        assert "CSRF" in response.json()["error"]
    async with db(relay).session() as session:
        assert (await session.get(Ticket, ticket_id)).status == "open"  # type: ignore[union-attr]

    done = await browser.http.post(path, headers={"X-CSRF-Token": browser.csrf})
    assert done.status_code == 200
    assert done.json() == {"id": ticket_id, "status": "done"}
    async with db(relay).session() as session:
        assert (await session.get(Ticket, ticket_id)).status == "done"  # type: ignore[union-attr]
    # Another session's token is no good either.
    other = await sign_in(relay.base_url)
    assert other.csrf != browser.csrf
    response = await browser.http.post(path, data={"csrf": other.csrf})
    assert response.status_code == 403
    await browser.http.aclose()
    await other.http.aclose()


async def test_an_editor_gets_knowledge_only(relay: Any) -> None:
    await store.add_user(db(relay), "eddie", "editor password 1", "editor")
    browser = await sign_in(
        relay.base_url, token=None, username="eddie", password="editor password 1"
    )
    assert (await browser.http.get("/console/knowledge")).status_code == 200
    for path in OWNER_ONLY:
        response = await browser.http.get(path)
        assert response.status_code == 403, path
        assert "for owners only" in response.text
        # Not a dead end: the editor's own navigation, Sign out, and a link to their page.
        assert '<a href="/console/knowledge" id="error-back">Go to Knowledge</a>' in response.text
        assert '<nav aria-label="Console">' in response.text, path
        assert '<button type="submit">Sign out</button>' in response.text
        assert 'href="/console"' not in response.text  # another 403 for an editor
    assert (await browser.http.get("/console/api/live")).status_code == 403
    for path in POSTS:
        if path.startswith(("/console/knowledge", "/console/sign-out")):
            continue
        response = await browser.http.post(path, data={"csrf": browser.csrf, "kind": "end"})
        assert response.status_code == 403, path
    # Removing the user ends their session at once.
    assert await store.remove_user(db(relay), "eddie")
    assert (await browser.http.get("/console/knowledge")).status_code == 303
    await browser.http.aclose()


async def test_an_upload_that_outlasts_its_wait_says_it_may_still_load(relay: Any) -> None:
    """Documents load on idle cores only: on a machine busy with calls an upload can outlast
    the page's wait, and the editor is told it may still load, not that it failed."""
    from knowledge import KnowledgeTimeout
    from relay.web.console.auth import CSRF_HEADER

    class Busy:
        async def list_documents(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

        async def add_bytes(self, *args: Any, **kwargs: Any) -> None:
            raise KnowledgeTimeout("knowledge add_bytes took longer than 120.0s")

    browser = await sign_in(relay.base_url)
    relay.runtime.knowledge = Busy()
    try:
        response = await browser.http.post(
            "/console/knowledge/upload",
            data={"agent": "piano-removals"},
            files={"files": ("storage.md", b"# Storage\nHeated.", "text/markdown")},
            headers={CSRF_HEADER: browser.csrf},
        )
    finally:
        relay.runtime.knowledge = None
        await browser.http.aclose()
    assert response.status_code == 200, response.text
    assert response.json() == {
        "results": [
            {
                "path": "storage.md",
                "status": "still loading",
                "chunks": 0,
                "error": None,
                "note": "not loaded within 120 s, as the machine is busy with calls. It may "
                "still load: look under Documents before uploading it again.",
            }
        ],
        "failed": 0,
    }


async def test_every_page_has_the_console_icon(relay: Any) -> None:
    """The browser finds the icon in each page's head, so it never asks for /favicon.ico (a 404,
    logged as an error in its console, on the sign-in page)."""
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        sign_in_page = await http.get("/console/sign-in")
        assert sign_in_page.status_code == 200 and ICON in sign_in_page.text
    browser = await sign_in(relay.base_url)
    for path in [p for p in PAGES if not p.endswith("/export")] + ["/console/calls/CAnone"]:
        page = await browser.http.get(path)
        assert page.headers["content-type"].startswith("text/html"), path
        head = page.text.split("</head>", 1)[0]
        assert head.count(ICON) == 1, path
    icon = await browser.http.get("/console/static/icon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    async with httpx.AsyncClient(base_url=relay.base_url) as http:  # as the sign-in page gets it
        assert (await http.get("/console/static/icon.svg")).content == icon.content
        # what a browser asks for on a page with no icon link (a JSON export, /metrics)
        root = await http.get("/favicon.ico")
        assert (root.status_code, root.headers["location"]) == (308, "/console/static/icon.svg")
    assert (await browser.http.get("/console/static/other.svg")).status_code == 404
    await browser.http.aclose()


async def test_a_wrong_password_is_refused(relay: Any) -> None:
    await store.add_user(db(relay), "pat", "right password 1", "owner")
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        page = await http.get("/console/sign-in")
        response = await http.post(
            "/console/sign-in",
            data={"csrf": csrf_in(page.text), "username": "pat", "password": "wrong password"},
        )
        assert response.status_code == 401
        assert (await http.get("/console/calls")).status_code == 303


async def test_passwords_are_salted_scrypt_hashes() -> None:
    one, two = store.hash_password("same password"), store.hash_password("same password")
    assert one != two and one.startswith("scrypt$")
    assert store.check_password("same password", one)
    assert not store.check_password("other password", one)
    assert not store.check_password("same password", "garbage")


# -- pages from real calls ------------------------------------------------------------------------


async def test_the_call_page_shows_what_happened(relay: Any) -> None:
    relay.llm.push(
        Text("We move upright and grand pianos."),
        ToolCalls([ToolCall("collect_digits", {"purpose": "your postcode", "max_digits": 4})]),
        Text("Thanks, 3000 is the city."),
    )
    call = relay.call()
    await call.connect()
    await call.say("What do you move?")
    await call.prompt("Let me type my postcode")
    await call.reply()
    for digit in "3000":
        await call.dtmf(digit)
    await call.reply()
    await call.close()
    await relay.session_closed()
    await relay.runtime.deps.recorder.flush()

    browser = await sign_in(relay.base_url)
    listing = await browser.http.get("/console/calls", params={"q": "postcode"})
    assert call.call_sid in listing.text
    assert (
        call.call_sid
        not in (
            await browser.http.get("/console/calls", params={"q": "no such words anywhere"})
        ).text
    )
    assert (
        call.call_sid
        in (await browser.http.get("/console/calls", params={"caller": "412345"})).text
    )
    page = await browser.http.get(f"/console/calls/{call.call_sid}")
    assert page.status_code == 200
    html = page.text
    for expected in (
        "What do you move?",
        "We move upright and grand pianos.",
        "collect_digits",
        "your postcode",
        "<kbd>3</kbd>",
        "Thanks, 3000 is the city.",
        "Latency per turn",
        f"relay replay {call.call_sid}",
        "hung-up",
    ):
        assert expected in html, expected
    export = await browser.http.get(
        f"/console/calls/{call.call_sid}/export", params={"redact": "0"}
    )
    assert export.status_code == 200
    header = orjson.loads(export.content.splitlines()[0])
    assert call.call_sid in export.text and "+61412345678" in export.text, header
    redacted = await browser.http.get(
        f"/console/calls/{call.call_sid}/export", params={"redact": "1"}
    )
    assert "+61412345678" not in redacted.text
    home = await browser.http.get("/console")
    assert home.status_code == 200 and "<svg" in home.text
    await browser.http.aclose()


async def test_passages_and_latency_number_the_same_turns(relay: Any) -> None:
    """Both tables of the call page number a turn by the caller's turns (1 for their first
    words), so a turn's passages and its latency line up (not the turns' stored seq)."""
    sid, at = "CAturns000001", datetime(2030, 1, 2, 3, 4, tzinfo=UTC)

    def passage(source: str) -> list[dict[str, Any]]:
        return [{"chunk_id": source, "source": source, "heading": ["Moves"], "score": 0.8,
                 "doc_id": "d-" + source, "version": 1}]  # fmt: skip

    def asked(seq: int, words: str, t: float) -> Turn:
        return Turn(call_sid=sid, session_id="s1", seq=seq, role="user", content=words,
                    prompt_received_at=t, created_at=at + timedelta(seconds=seq))  # fmt: skip

    def answered(seq: int, words: str, t: float, source: str) -> Turn:
        return Turn(call_sid=sid, session_id="s1", seq=seq, role="assistant", content=words,
                    retrieval=passage(source), retrieval_done_at=t + 0.05, llm_request_at=t + 0.1,
                    first_token_at=t + 0.3, first_frame_at=t + 0.5, last_token_at=t + 0.9,
                    created_at=at + timedelta(seconds=seq))  # fmt: skip

    async with db(relay).session() as session, session.begin():
        session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412000555",
                         status="completed", outcome="hung-up", started_at=at,
                         ended_at=at + timedelta(minutes=1), turns=4))  # fmt: skip
        session.add_all(
            [
                asked(1, "How much for an upright?", 100.0),
                answered(2, "From $350.", 100.0, "prices.md"),
                asked(3, "Is it insured?", 110.0),
                answered(4, "Yes, up to $50,000.", 110.0, "insurance.md"),
            ]
        )
    browser = await sign_in(relay.base_url)
    html = (await browser.http.get(f"/console/calls/{sid}")).text
    passages = html.split('id="p-h"', 1)[1].split("</section>", 1)[0]
    latency = html.split('id="w-h"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r"<tr><td>(\d+)</td><td>([^<]+)</td>", passages) == [
        ("1", "prices.md"),
        ("2", "insurance.md"),
    ]
    assert re.findall(r'<th scope="row">(\d+)<br><span class="note">([^<]+)</span>', latency) == [
        ("1", "How much for an upright?"),
        ("2", "Is it insured?"),
    ]
    await browser.http.aclose()


async def read_stream(response: httpx.Response, until: Any) -> list[dict[str, Any]]:
    """SSE ``line`` events until ``until(lines)`` is true."""
    lines: list[dict[str, Any]] = []
    event = ""
    async for raw in response.aiter_lines():
        if raw.startswith("event: "):
            event = raw[7:]
        elif raw.startswith("data: ") and event == "line":
            lines.append(orjson.loads(raw[6:]))
            if until(lines):
                return lines
    return lines


async def test_live_list_stream_and_supervisor_commands(relay: Any) -> None:
    relay.llm.push(Text("Hello, how can I help?"), Text("Sure, one moment."))
    call = relay.call()
    await call.connect()
    browser = await sign_in(relay.base_url)

    async def listed() -> dict[str, Any]:
        while True:
            live = (await browser.http.get("/console/api/live")).json()["calls"]
            mine = [c for c in live if c["call_sid"] == call.call_sid]
            if mine:
                return mine[0]
            await asyncio.sleep(0.05)

    entry = await asyncio.wait_for(listed(), WAIT)
    assert entry["agent"] == "piano-removals" and entry["caller"] == "+61*******78"
    live_page = await browser.http.get("/console/live")
    assert call.call_sid in live_page.text

    async with browser.http.stream("GET", f"/console/api/calls/{call.call_sid}/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        await call.say("Hi, is anyone there?")

        def replied(lines: list[dict[str, Any]]) -> bool:
            return sum(1 for line in lines if line["type"] == "agent" and line.get("last")) == 2

        lines = await asyncio.wait_for(read_stream(stream, replied), WAIT)
    # The welcome greeting first (Twilio says it: no frame carries it), as the finished
    # call's transcript has it.
    greeting = relay.runtime.deps.agents.agents["piano-removals"].welcome_greeting
    assert greeting
    assert lines[:2] == [
        {"type": "agent", "text": greeting, "last": True},
        {"type": "caller", "text": "Hi, is anyone there?"},
    ]
    said = "".join(line["text"] for line in lines[2:] if line["type"] == "agent")
    assert said == "Hello, how can I help?"

    [entry] = [
        c
        for c in (await browser.http.get("/console/api/live")).json()["calls"]
        if c["call_sid"] == call.call_sid
    ]
    assert (entry["caller_said"], entry["agent_said"]) == (
        "Hi, is anyone there?",
        "Hello, how can I help?",
    )
    assert "Hi, is anyone there?" in (await browser.http.get("/console/live")).text
    page = await browser.http.get(f"/console/calls/{call.call_sid}")
    assert "Live transcript" in page.text and "Whisper" in page.text
    headers = {"X-CSRF-Token": browser.csrf}
    whisper = await browser.http.post(
        f"/console/calls/{call.call_sid}/command",
        data={"kind": "whisper", "argument": "Offer the Tuesday discount."},
        headers=headers,
    )
    assert whisper.json()["status"] == "pending"
    bad = await browser.http.post(
        f"/console/calls/{call.call_sid}/command",
        data={"kind": "takeover", "argument": "not a number"},
        headers=headers,
    )
    assert bad.status_code == 400

    async def applied() -> None:
        while True:
            async with db(relay).session() as session:
                status = await session.scalar(
                    select(CallCommand.status).where(CallCommand.call_sid == call.call_sid)
                )
            if status == "done":
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(applied(), WAIT)
    await call.say("Any deals?")
    note = relay.llm.requests[-1]["messages"][-3]  # then the caller's words, the per-turn note
    assert note == {
        "role": "system",
        "content": "Note from your supervisor (the caller cannot hear this): Offer the Tuesday discount.",
    }

    end = await browser.http.post(
        f"/console/calls/{call.call_sid}/command", data={"kind": "end"}, headers=headers
    )
    assert end.status_code == 200
    line = await call.next_frame()
    assert line is not None and line["type"] == "text"
    assert line["token"] == "Thanks for calling Keystone Piano Movers. Have a lovely day!"
    await call.info("agentSpeaking", "off")
    final = await call.next_frame()
    assert final is not None and final["type"] == "end"
    assert orjson.loads(final["handoffData"]) == {
        "reasonCode": "end-call",
        "reason": "ended from the console",
    }
    await call.close()
    await relay.session_closed()
    await browser.http.aclose()


async def test_take_over_dials_the_number_given(relay: Any) -> None:
    call = relay.call()
    await call.connect()
    browser = await sign_in(relay.base_url)

    async def started() -> None:
        while True:
            page = await browser.http.get(f"/console/calls/{call.call_sid}")
            if page.status_code == 200:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(started(), WAIT)
    response = await browser.http.post(
        f"/console/calls/{call.call_sid}/command",
        data={"kind": "takeover", "argument": "+61390009999"},
        headers={"X-CSRF-Token": browser.csrf},
    )
    assert response.status_code == 200
    line = await call.next_frame()
    assert line is not None and line["type"] == "text"
    await call.info("agentSpeaking", "off")
    end = await call.next_frame()
    assert end is not None and end["type"] == "end"
    data = orjson.loads(end["handoffData"])
    assert data["takeoverNumber"] == "+61390009999"
    await call.close()
    await relay.session_closed()
    form = {
        "AccountSid": "AC" + "0" * 32, "CallSid": call.call_sid, "SessionId": call.session_id,
        "From": call.from_, "To": call.to, "Direction": "inbound", "ApiVersion": "2010-04-01",
        "SessionStatus": "ended", "CallStatus": "in-progress", "HandoffData": end["handoffData"],
    }  # fmt: skip
    twiml = await relay.post("/handoff", form)
    assert "<Number>+61390009999</Number>" in twiml.text
    await browser.http.aclose()


# -- quotes, bookings, messages ---------------------------------------------------------------------


async def test_bookings_confirm_and_cancel_and_quotes_list(relay: Any) -> None:
    now = datetime.now(UTC)
    async with db(relay).session() as session, session.begin():
        session.add(
            Quote(id="Q111111", agent="piano-removals", call_sid=None, caller="+61412000222",
                  inputs={"piano": "upright"}, breakdown=[{"kind": "base", "label": "Upright piano move",
                  "amount_cents": 42000, "phrase": "x"}], total_cents=42000, currency="AUD",
                  status="booked", created_at=now)
        )  # fmt: skip
        await session.flush()
        session.add(
            Booking(id="654321", agent="piano-removals", kind="move", quote_id="Q111111",
                    phone="+61412000222", name="Bea", starts_at=now + timedelta(days=3),
                    ends_at=now + timedelta(days=3, hours=4), status="booked",
                    created_at=now, updated_at=now)
        )  # fmt: skip
    browser = await sign_in(relay.base_url)
    quotes = await browser.http.get("/console/quotes", params={"status": "booked"})
    assert "Q111111" in quotes.text and "AUD 420.00" in quotes.text
    page = await browser.http.get("/console/bookings")
    assert "654321" in page.text
    local_day = (now + timedelta(days=3)).astimezone(ZoneInfo("Australia/Melbourne")).date()
    day = await browser.http.get(
        "/console/calendar",
        params={"agent": "piano-removals", "view": "day", "start": str(local_day)},
    )
    assert day.status_code == 200 and "654321" in day.text and "Bea" in day.text
    week_before = await browser.http.get(
        "/console/calendar",
        params={"agent": "piano-removals", "start": str(local_day - timedelta(days=7))},
    )
    assert "654321" not in week_before.text
    confirm = await browser.http.post(
        "/console/bookings/654321/confirm", data={"csrf": browser.csrf}
    )
    assert confirm.status_code == 303
    async with db(relay).session() as session:
        confirmation = await session.get(BookingConfirmation, "654321")
    assert confirmation is not None and confirmation.confirmed_by == "admin"
    assert "confirmed by admin" in (await browser.http.get("/console/bookings")).text
    cancel = await browser.http.post(
        "/console/bookings/654321/cancel", headers={"X-CSRF-Token": browser.csrf}
    )
    assert cancel.json() == {"done": "Cancelled booking 654321."}
    async with db(relay).session() as session:
        assert (await session.get(Booking, "654321")).status == "cancelled"  # type: ignore[union-attr]
    again = await browser.http.post(
        "/console/bookings/654321/cancel", headers={"X-CSRF-Token": browser.csrf}
    )
    assert again.status_code == 409
    await browser.http.aclose()


async def test_a_cancelled_booking_cannot_be_confirmed(relay: Any) -> None:
    """Confirming is refused as moving and cancelling are; the refusal's page keeps the
    console's navigation and links back to the page the button was on."""
    now = datetime.now(UTC)
    async with db(relay).session() as session, session.begin():
        session.add(Booking(id="909090", agent="piano-removals", kind="move", phone="+61412000999",
                            name="Eve", starts_at=now + timedelta(days=5),
                            ends_at=now + timedelta(days=5, hours=4), status="cancelled",
                            created_at=now, updated_at=now))  # fmt: skip
    browser = await sign_in(relay.base_url)
    path = "/console/bookings/909090/confirm"
    refused = await browser.http.post(path, headers={"X-CSRF-Token": browser.csrf})
    assert (refused.status_code, refused.json()) == (
        409,
        {"error": "Booking 909090 is already cancelled."},
    )
    came_from = f"{relay.base_url}/console/bookings?status=cancelled"
    page = await browser.http.post(
        path, data={"csrf": browser.csrf}, headers={"Referer": came_from}
    )
    assert page.status_code == 409
    assert '<p role="alert">Booking 909090 is already cancelled.</p>' in page.text
    back = '<a href="/console/bookings?status=cancelled" id="error-back">Back to Bookings</a>'
    assert back in page.text
    assert '<nav aria-label="Console">' in page.text
    assert '<button type="submit">Sign out</button>' in page.text
    for referer in ("", "https://elsewhere.example/console/bookings", came_from[:-17] + "/calls"):
        other = await browser.http.post(path, data={"csrf": browser.csrf},
                                        headers={"Referer": referer})  # fmt: skip
        assert '<a href="/console/bookings" id="error-back">Back to Bookings</a>' in other.text
    async with db(relay).session() as session:
        assert await session.get(BookingConfirmation, "909090") is None
    listed = await browser.http.get("/console/bookings", params={"status": "cancelled"})
    card = listed.text.split('id="booking-909090"', 1)[1].split("</article>", 1)[0]
    assert '<strong class="status">cancelled</strong>' in card
    await browser.http.aclose()


async def test_the_home_page_names_its_days_zone_and_counts_in_words(relay: Any) -> None:
    browser = await sign_in(relay.base_url)
    home = (await browser.http.get("/console", params={"period": "day"})).text
    await browser.http.aclose()
    assert (
        '<p class="note" id="days-zone">Days run midnight to midnight in Australia/Melbourne.</p>'
        in home
    )
    assert "Calls per day (Australia/Melbourne days)" in home
    assert '<option value="day" selected>today</option>' in home
    assert '<option value="week">last 7 days</option>' in home
    assert '<dd id="fig-cost-per-booking">no bookings</dd>' in home


async def test_bookings_are_shown_in_their_agents_time_zone(relay: Any) -> None:
    """A booking's time is the agent's local time, its zone named, on the bookings, calendar and
    call pages alike (Melbourne is UTC+11 in December), and the bookings' From and To are days
    there; when something happened (a call, a quote) stays in UTC, labelled so."""
    sid, at = "CAtimes000001", datetime(2030, 12, 8, 20, 0, tzinfo=UTC)
    starts = datetime(2030, 12, 8, 20, 30, tzinfo=UTC)  # 07:30 on the 9th in Melbourne
    async with db(relay).session() as session, session.begin():
        session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412000666",
                         status="completed", outcome="booked", started_at=at,
                         ended_at=at + timedelta(minutes=3), turns=0))  # fmt: skip
        session.add(Quote(id="Q222333", agent="piano-removals", call_sid=sid,
                          caller="+61412000666", inputs={}, breakdown=[], total_cents=35000,
                          currency="AUD", status="booked", created_at=at))  # fmt: skip
        await session.flush()
        session.add(Booking(id="777888", agent="piano-removals", kind="move", quote_id="Q222333",
                            phone="+61412000666", name="Cara", starts_at=starts,
                            ends_at=starts + timedelta(hours=4), status="booked", call_sid=sid,
                            created_at=at, updated_at=at))  # fmt: skip
    browser = await sign_in(relay.base_url)
    get = browser.http.get

    bookings = (await get("/console/bookings", params={"agent": "piano-removals"})).text
    heading = '<h2 id="bh-777888">777888 · Cara · 2030-12-09 07:30 Australia/Melbourne</h2>'
    assert heading in bookings
    assert "20:30" not in bookings
    on_the_9th = {"since": "2030-12-09", "until": "2030-12-09"}
    on_the_8th = {"since": "2030-12-08", "until": "2030-12-08"}
    for agent in ("piano-removals", ""):  # the one agent, or every agent (sharing its zone)
        ninth = await get("/console/bookings", params={**on_the_9th, "agent": agent})
        eighth = await get("/console/bookings", params={**on_the_8th, "agent": agent})
        assert "777888" in ninth.text and "777888" not in eighth.text, agent

    calendar = (
        await get("/console/calendar", params={"agent": "piano-removals", "view": "day",
                                               "start": "2030-12-09"})
    ).text  # fmt: skip
    assert "Times in Australia/Melbourne." in calendar
    assert '#booking-777888">07:30 Cara</a>' in calendar

    call = (await get(f"/console/calls/{sid}")).text
    assert "<dt>Started (UTC)</dt><dd>2030-12-08 20:00:00</dd>" in call
    assert "<dt>Booking 777888</dt><dd>2030-12-09 07:30 Australia/Melbourne (booked)</dd>" in call
    assert "<li>Booking 777888 (move, booked) 2030-12-09 07:30 Australia/Melbourne</li>" in call

    calls = (await get("/console/calls", params={"caller": "+61412000666"})).text
    assert '<th scope="col">Started (UTC)</th>' in calls
    assert f'<a href="/console/calls/{sid}">2030-12-08 20:00:00</a>' in calls

    quotes = (await get("/console/quotes", params={"agent": "piano-removals"})).text
    assert "<strong>Q222333</strong> · AUD 350.00 · booked · 2030-12-08 20:00:00 UTC · " in quotes
    await browser.http.aclose()


async def test_bookings_change_through_the_tools_and_rules(start_relay: Any, tmp_path: Any) -> None:
    """With the shipped agents and their business tables: an appointment is cancelled by the
    cancel_appointment tool (through the ledger), a move is moved to a free window and refused
    a day the business does not work."""
    import shutil

    from relay.storage.models import SideEffect
    from tests.conftest import SHIPPED_PROMPTS

    prompts = tmp_path / "shipped-prompts"
    prompts.mkdir()
    for name in ("piano-removals.toml", "car-service.toml"):
        shutil.copy(SHIPPED_PROMPTS / name, prompts / name)
    zone = ZoneInfo("Australia/Melbourne")
    today = datetime.now(zone).date()
    wednesday = today + timedelta(days=(2 - today.weekday()) % 7 + 7)
    sunday = wednesday + timedelta(days=4)
    starts = datetime.combine(wednesday, datetime.min.time(), tzinfo=zone).replace(hour=8)
    async with start_relay(RELAY_PROMPTS_DIR=str(prompts), RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as relay:
        now = datetime.now(UTC)
        async with db(relay).session() as session, session.begin():
            session.add(Booking(id="111222", agent="car-service", kind="appointment",
                                service="logbook-minor", phone="+61412000333", name="Cy",
                                starts_at=starts + timedelta(hours=1),
                                ends_at=starts + timedelta(hours=2, minutes=30), status="booked",
                                created_at=now, updated_at=now))  # fmt: skip
            session.add(Booking(id="111333", agent="car-service", kind="appointment",
                                service="logbook-minor", phone="+61412000335", name="Cy",
                                starts_at=starts + timedelta(hours=3),
                                ends_at=starts + timedelta(hours=4, minutes=30), status="booked",
                                created_at=now, updated_at=now))  # fmt: skip
            session.add(Booking(id="333444", agent="piano-removals", kind="move", phone="+61412000444",
                                name="Di", starts_at=starts, ends_at=starts + timedelta(hours=4),
                                status="booked", created_at=now, updated_at=now))  # fmt: skip
        browser = await sign_in(relay.base_url)
        headers = {"X-CSRF-Token": browser.csrf}

        cancelled = await browser.http.post("/console/bookings/111222/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["done"].startswith("Cancelled the ")
        async with db(relay).session() as session:
            assert (await session.get(Booking, "111222")).status == "cancelled"  # type: ignore[union-attr]
            ledger = (
                await session.scalars(select(SideEffect.tool).where(SideEffect.status == "done"))
            ).all()
        assert "cancel_appointment" in ledger

        moved = await browser.http.post(
            "/console/bookings/333444/reschedule",
            data={"date": str(wednesday + timedelta(days=1)), "window": "afternoon"},
            headers=headers,
        )
        assert moved.status_code == 200, moved.text
        assert "afternoon window" in moved.json()["done"]
        async with db(relay).session() as session:
            booking = await session.get(Booking, "333444")
        assert booking is not None
        local = queries_aware(booking.starts_at).astimezone(zone)
        assert (local.date(), local.hour >= 12) == (wednesday + timedelta(days=1), True)

        # Refusals are worded for the owner, the same for both kinds of booking (the tools'
        # own words are for the caller: "We're closed on Sundays.", "Please call back ...").
        refused = await browser.http.post(
            "/console/bookings/333444/reschedule",
            data={"date": str(sunday), "window": "morning"},
            headers=headers,
        )
        appointment = await browser.http.post(
            "/console/bookings/111333/reschedule",
            data={"start": f"{sunday}T10:00"},
            headers=headers,
        )
        too_far = await browser.http.post(
            "/console/bookings/333444/reschedule",
            data={"date": str(today + timedelta(days=400)), "window": "morning"},
            headers=headers,
        )
        assert (refused.status_code, appointment.status_code, too_far.status_code) == (409,) * 3
        free = r"Free: (\w{3} \d{4}-\d\d-\d\d \d\d:\d\d( \(\w+\))?, )*\w{3} [^,]*"
        closed = "not moved: the business is closed on that day of the week. "
        assert re.fullmatch(
            "Booking 333444 " + closed + free + r" \(Australia/Melbourne time\)\.",
            refused.json()["error"],
        ), refused.json()
        assert re.fullmatch(
            "Booking 111333 " + closed + free + r" \(Australia/Melbourne time\)\.",
            appointment.json()["error"],
        ), appointment.json()
        assert too_far.json() == {
            "error": "Booking 333444 not moved: that is further ahead than the calendar takes "
            "bookings."
        }
        await browser.http.aclose()


def queries_aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def test_owner_notification_settings(relay: Any) -> None:
    from relay.web.console import notify

    browser = await sign_in(relay.base_url)
    page = await browser.http.get("/console/notifications")
    assert page.status_code == 200 and "Twilio is not set up" in page.text
    form = {"csrf": browser.csrf, "agent": "piano-removals", "messages": "on"}
    bad = await browser.http.post("/console/notifications", data={**form, "sms": "0412 345"})
    assert bad.status_code == 400 and "E.164" in bad.text
    good = await browser.http.post(
        "/console/notifications", data={**form, "sms": "+61412999000", "email": "o@example.com"}
    )
    assert good.status_code == 200 and "Saved for piano-removals." in good.text
    saved = await notify.targets(db(relay), ["piano-removals"])
    assert saved["piano-removals"] == notify.Target(
        sms="+61412999000", email="o@example.com", messages=True, bookings=False
    )
    await browser.http.aclose()


async def test_sign_in_is_throttled_after_repeated_failures(start_relay: Any) -> None:
    from relay.web.console import auth

    async with (
        start_relay(RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as relay,
        httpx.AsyncClient(base_url=relay.base_url) as http,
    ):
        csrf = csrf_in((await http.get("/console/sign-in")).text)
        for _ in range(auth.MAX_FAILURES):
            wrong = await http.post("/console/sign-in", data={"csrf": csrf, "token": "guess"})
            assert wrong.status_code == 401
        blocked = await http.post("/console/sign-in", data={"csrf": csrf, "token": ADMIN_TOKEN})
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["retry-after"]) <= auth.FAILURE_WINDOW
