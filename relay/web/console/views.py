"""The console's pages and actions (routes are listed in ``relay.web.console``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

import orjson
import structlog
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from relay.recordings.format import export_call, mask_number
from relay.storage import console as store
from relay.storage.models import Ticket
from relay.web.console import auth, charts, queries, rollup
from relay.web.console.auth import Session, guard
from relay.web.console.render import render, render_error

log = structlog.get_logger("relay.web.console")

#: How often the live transcript stream looks for new events.
STREAM_POLL = 0.25
#: The largest document an upload takes (the whole upload: ``auth.UPLOAD_LIMIT``).
MAX_UPLOAD_BYTES = 20_000_000
#: How long an upload waits for each document to load before answering (seconds). Documents
#: load on idle cores only (knowledge.loading): on a machine busy with calls, that can be long.
UPLOAD_WAIT = 120.0
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: The largest row id and offset the databases take (64-bit integers): an id past it is no row.
MAX_ID = 2**63 - 1
#: The largest id an ``Integer`` column holds on PostgreSQL (``integer``: 32 bits).
MAX_INT32 = 2**31 - 1
#: The last page a list shows (its offset still a 64-bit integer): past it, an empty page.
MAX_PAGE = MAX_ID // queries.PAGE
#: The days the date fields take; another is refused (400). Room on either side for a week's
#: arithmetic in any time zone (Python's dates end at 0001-01-01 and 9999-12-31).
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _db(request: Request) -> Any:
    return _runtime(request).deps.db


def _agents(request: Request) -> list[str]:
    return sorted(_runtime(request).deps.agents.agents)


def _zone(request: Request, agent: str) -> ZoneInfo:
    """The agent's time zone (UTC for an agent not loaded): bookings are shown in it."""
    profile = _runtime(request).deps.agents.agents.get(agent)
    return ZoneInfo(profile.timezone if profile is not None else "UTC")


def _zones(request: Request) -> dict[str, str]:
    """Agent name -> the name of its time zone, for the templates' ``local`` filter."""
    return {agent: str(_zone(request, agent)) for agent in _agents(request)}


def _day(text: str | None) -> date | None:
    """A date field's day (None when blank); one that is not a date (``2026-13-01``: until late
    7 December it was no filter at all) or out of range is refused."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        message = f"{text[:40]!r} is not a day: give one as YYYY-MM-DD."
        raise auth.Refusal(400, "Not a date", message) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        message = f"{day} is out of range: give a day from {FIRST_DAY} to {LAST_DAY}."
        raise auth.Refusal(400, "Date out of range", message)
    return day


def _start_of(day: date | None, zone: ZoneInfo | None = None) -> datetime | None:
    return datetime.combine(day, time(0), tzinfo=zone or UTC).astimezone(UTC) if day else None


def _page(request: Request) -> int:
    try:
        return min(max(1, int(request.query_params.get("page", "1"))), MAX_PAGE)
    except ValueError:
        return 1


def _page_links(request: Request, page: int, more: bool) -> dict[str, str | None]:
    params = dict(request.query_params)

    def link(n: int) -> str:
        return request.url.path + "?" + urlencode({**params, "page": str(n)})

    return {"prev": link(page - 1) if page > 1 else None, "next": link(page + 1) if more else None}


# -- sign-in ------------------------------------------------------------------------------------


@auth.public
async def sign_in_page(request: Request) -> Response:
    if not await auth.enabled(request):
        return auth.not_found()
    response = render(request, "sign_in.html", None, csrf="", next=_next(request), error=None)
    csrf = await auth.signin_token(request, response)
    # Rendered again with the token now that the cookie carrying it is set.
    page = render(request, "sign_in.html", None, csrf=csrf, next=_next(request), error=None)
    page.raw_headers.extend(h for h in response.raw_headers if h[0] == b"set-cookie")
    page.headers["Cache-Control"] = "no-store"
    return page


def _next(request: Request, value: str | None = None) -> str:
    target = value if value is not None else request.query_params.get("next", "")
    # Only paths inside the console: never an open redirect.
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


@auth.public
async def sign_in(request: Request) -> Response:
    if not await auth.enabled(request):
        return auth.not_found()
    form = await auth.form(request, multipart=False)
    given = str(form.get("csrf") or "")
    target = _next(request, str(form.get("next") or ""))
    if not await auth.signin_csrf_ok(request, given):
        return render_error(
            request, 403, "Not allowed", "The sign-in form was out of date; reload it."
        )
    wait = auth.attempt(request)  # counted before the password is checked
    if wait is not None:
        refused = render_error(
            request, 429, "Too many tries", "Too many failed sign-ins; try again in a few minutes."
        )
        refused.headers["Retry-After"] = str(int(wait))
        return refused
    runtime = _runtime(request)
    token = str(form.get("token") or "")
    username = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    user: tuple[str, str, bool, str] | None = None
    admin = runtime.settings.admin_token
    if token and admin:
        import hmac

        if hmac.compare_digest(token.encode(), admin.encode()):
            user = (auth.ADMIN_USER, "owner", True, "")
    elif username and password:
        found = await store.authenticate(runtime.deps.db, username, password)
        if found is not None:
            user = (found.username, found.role, False, found.stamp)
    if user is None:
        log.warning(
            "console_sign_in_failed",
            username=username or None,
            token=bool(token),
            address=auth.address(request),
        )
        csrf = await auth.signin_token(request)
        return render(
            request,
            "sign_in.html",
            None,
            status_code=401,
            csrf=csrf,
            next=target,
            error="That did not match. Check the token, or the user name and password.",
        )
    auth.succeeded(request)
    name, role, is_token, stamp = user
    if role != "owner" and not target.startswith("/console/knowledge"):
        target = "/console/knowledge"
    response = RedirectResponse(target, status_code=303)
    await auth.start_session(request, response, user=name, role=role, token=is_token, stamp=stamp)
    log.info("console_signed_in", user=name, role=role)
    return response


@guard(role="editor")
async def sign_out(request: Request, session: Session) -> Response:
    response = RedirectResponse("/console/sign-in", status_code=303)
    await auth.end_session(request, response, session)
    return response


# -- home: analytics ------------------------------------------------------------------------------

PERIODS = {"day": 1, "week": 7, "month": 30, "quarter": 91}


@guard()
async def home(request: Request, session: Session) -> Response:
    agent = request.query_params.get("agent", "")
    period = request.query_params.get("period", "week")
    days = PERIODS.get(period, 7)
    zone = rollup.business_zone(_runtime(request).deps.agents)
    figures = await queries.analytics(
        _db(request), agent=agent, days=days, agents=_agents(request), zone=zone
    )
    calls_chart = charts.bars([(d, float(n)) for d, n, _ in figures.per_day], title="Calls per day")
    latency_chart = charts.bars(
        figures.first_word_per_day, title="Prompt to first word, p95 per day", unit=" ms"
    )
    return render(
        request,
        "home.html",
        session,
        figures=figures,
        agents=_agents(request),
        agent=agent,
        period=period,
        periods=list(PERIODS.items()),
        calls_chart=calls_chart,
        latency_chart=latency_chart,
    )


# -- calls ----------------------------------------------------------------------------------------


@guard()
async def calls(request: Request, session: Session) -> Response:
    q = request.query_params
    page = _page(request)
    until = _day(q.get("until"))
    # "From" and "To" are the business's days, as the home page counts them.
    zone = rollup.business_zone(_runtime(request).deps.agents)
    filters = queries.CallFilters(
        agent=q.get("agent", ""),
        since=_start_of(_day(q.get("since")), ZoneInfo(zone)),
        until=_start_of(until + timedelta(days=1), ZoneInfo(zone)) if until else None,
        outcome=q.get("outcome", ""),
        caller=q.get("caller", ""),
        words=q.get("q", ""),
        page=page,
    )
    rows, more = await queries.search_calls(_db(request), filters)
    _, outcomes = await queries.agents_and_outcomes(_db(request), _agents(request))
    return render(
        request,
        "calls.html",
        session,
        calls=rows,
        agents=_agents(request),
        outcomes=outcomes,
        q=q,
        page=page,
        zone=zone,
        links=_page_links(request, page, more),
    )


@guard()
async def call_page(request: Request, session: Session) -> Response:
    call_sid = request.path_params["call_sid"]
    detail = await queries.call_detail(_db(request), call_sid)
    if detail is None:
        return render_error(
            request, 404, "No such call", f"There is no call {call_sid}.", session,
            back=("/console/calls", "Back to Calls"),
        )  # fmt: skip
    top = max((w.total for w in detail.waterfalls), default=0.0) or 1.0
    return render(
        request,
        "call.html",
        session,
        d=detail,
        zones=_zones(request),
        top=top,
        replay=f"relay replay {call_sid}",
        live=detail.call.ended_at is None,
    )


@guard()
async def export(request: Request, session: Session) -> Response:
    call_sid = request.path_params["call_sid"]
    redact = request.query_params.get("redact", "1") != "0"
    try:
        recording = await export_call(_db(request), call_sid, redact=redact)
    except Exception as exc:
        return render_error(
            request, 404, "Cannot export", str(exc)[:300], session,
            back=(f"/console/calls/{quote(call_sid, safe='')}", "Back to the call"),
        )  # fmt: skip
    name = f"{call_sid}{'-redacted' if redact else ''}.jsonl"
    return Response(
        recording.dumps(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# -- live calls -----------------------------------------------------------------------------------


@guard()
async def live(request: Request, session: Session) -> Response:
    rows = await queries.live_calls(_db(request))
    return render(request, "live.html", session, calls=rows, now=datetime.now(UTC))


@guard()
async def live_api(request: Request, session: Session) -> Response:
    now = datetime.now(UTC)
    rows = await queries.live_calls(_db(request), now)
    return JSONResponse(
        {
            "calls": [
                {
                    "call_sid": c.call_sid,
                    "agent": c.agent,
                    "caller": mask_number(c.from_number) if c.from_number else "",
                    "seconds": int((now - c.started_at).total_seconds()),
                    "state": c.state,
                    "caller_said": c.caller_said,
                    "agent_said": c.agent_said,
                }
                for c in rows
            ]
        }
    )


@guard()
async def stream(request: Request, session: Session) -> Response:
    """Server-Sent Events: the call's transcript lines as they are recorded (any worker)."""
    call_sid = request.path_params["call_sid"]
    db = _db(request)
    try:
        after = int(request.headers.get("last-event-id") or request.query_params.get("after", "0"))
    except ValueError:
        after = 0
    after = min(max(after, 0), MAX_ID)  # past the last id the database can hold: no events

    def sse(event_id: int, line: dict[str, Any]) -> bytes:
        return b"id: %d\nevent: line\ndata: %s\n\n" % (event_id, orjson.dumps(line))

    async def events() -> AsyncIterator[bytes]:
        last = after
        idle = 0.0
        greeting: list[str] = []  # sessions set up whose greeting turn is not recorded yet
        yield b"retry: 1000\n\n"
        while True:
            for session_id in list(greeting):  # recorded since the last look
                said = await queries.session_greeting(db, call_sid, session_id)
                if said is not None:
                    greeting.remove(session_id)
                if said:
                    yield sse(last, {"type": "agent", "text": said, "last": True})
            rows = await queries.new_events(db, call_sid, last)
            for event in rows:
                last = event.id
                for line in queries.stream_lines(event):
                    yield sse(event.id, line)
                if queries.is_setup(event):
                    said = await queries.session_greeting(db, call_sid, event.session_id)
                    if said is None:
                        greeting.append(event.session_id)
                    elif said:
                        yield sse(event.id, {"type": "agent", "text": said, "last": True})
            if rows:
                idle = 0.0
                continue
            if await queries.call_ended(db, call_sid):
                yield b"event: ended\ndata: {}\n\n"
                return
            if await request.is_disconnected():
                return
            idle += STREAM_POLL
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@guard()
async def command(request: Request, session: Session) -> Response:
    call_sid = request.path_params["call_sid"]
    form = await auth.form(request)
    kind = str(form.get("kind") or "")
    argument = str(form.get("argument") or "").strip()
    if kind not in store.COMMANDS:
        return JSONResponse({"error": "kind must be whisper, takeover or end"}, status_code=400)
    if kind == "whisper" and not argument:
        return JSONResponse({"error": "write the note to whisper"}, status_code=400)
    if kind == "takeover" and argument and not _E164.match(argument):
        return JSONResponse(
            {"error": "the number to take over on must be in E.164 form, e.g. +61390001234"},
            status_code=400,
        )
    if kind != "whisper" and await queries.call_ended(_db(request), call_sid):
        return JSONResponse({"error": "the call has ended"}, status_code=409)
    command_id = await store.add_command(
        _db(request), call_sid, kind, argument[:2000], session.user
    )
    log.info("console_command", call_sid=call_sid, kind=kind, by=session.user)
    if request.headers.get(auth.CSRF_HEADER):
        return JSONResponse({"id": command_id, "kind": kind, "status": "pending"})
    return RedirectResponse(f"/console/calls/{call_sid}", status_code=303)


# -- quotes, bookings, messages ----------------------------------------------------------------------


@guard()
async def quotes(request: Request, session: Session) -> Response:
    q = request.query_params
    page = _page(request)
    rows, more = await queries.list_quotes(
        _db(request), agent=q.get("agent", ""), status=q.get("status", ""), page=page
    )
    return render(
        request,
        "quotes.html",
        session,
        quotes=rows,
        agents=_agents(request),
        q=q,
        links=_page_links(request, page, more),
    )


@guard()
async def bookings(request: Request, session: Session) -> Response:
    """Bookings at their times in their agents' time zones, as the calendar shows them."""
    q = request.query_params
    page = _page(request)
    since_day = _day(q.get("since"))
    until_day = _day(q.get("until"))
    agent = q.get("agent", "")
    zones = _zones(request)
    # "From" and "To" are days in the agent's zone; with every agent, in the zone they share
    # (UTC if their zones differ).
    shared = {zones[agent]} if agent in zones else set(zones.values())
    zone = ZoneInfo(shared.pop() if len(shared) == 1 else "UTC")
    rows, more = await queries.list_bookings(
        _db(request),
        agent=agent,
        status=q.get("status", ""),
        since=_start_of(since_day, zone),
        until=_start_of(until_day + timedelta(days=1), zone) if until_day else None,
        page=page,
    )
    return render(
        request,
        "bookings.html",
        session,
        bookings=rows,
        zones=zones,
        agents=_agents(request),
        q=q,
        links=_page_links(request, page, more),
        flash=q.get("done"),
    )


@guard()
async def calendar(request: Request, session: Session) -> Response:
    """A day or week of bookings, per agent, in the agent's time zone."""
    q = request.query_params
    agents = _agents(request)
    agent = q.get("agent") or next(iter(agents), "")
    zone = _zone(request, agent)
    span = 1 if q.get("view") == "day" else 7
    today = datetime.now(zone).date()
    first = _day(q.get("start")) or (
        today if span == 1 else today - timedelta(days=today.weekday())
    )
    start = datetime.combine(first, time(0), tzinfo=zone)
    end = start + timedelta(days=span)
    rows, _ = await queries.list_bookings(
        _db(request),
        agent=agent,
        since=start.astimezone(UTC),
        until=end.astimezone(UTC),
        limit=2000,
    )
    days = [first + timedelta(days=n) for n in range(span)]
    by_day: dict[date, list[Any]] = {d: [] for d in days}
    for row in rows:
        starts = queries.aware(row.booking.starts_at)
        assert starts is not None
        local = starts.astimezone(zone)
        by_day.setdefault(local.date(), []).append((local, row))
    base = {"agent": agent, "view": "day" if span == 1 else "week"}
    return render(
        request,
        "calendar.html",
        session,
        agents=agents,
        agent=agent,
        zone=str(zone),
        span=span,
        days=days,
        by_day=by_day,
        today=today,
        prev="/console/calendar?" + urlencode({**base, "start": str(first - timedelta(days=span))}),
        next="/console/calendar?" + urlencode({**base, "start": str(first + timedelta(days=span))}),
        switch="/console/calendar?"
        + urlencode({"agent": agent, "view": "week" if span == 1 else "day", "start": str(first)}),
    )


#: The console pages a booking action can be sent from, and the words of the link back.
_BOOKING_PAGES = {
    "/console/bookings": "Back to Bookings",
    "/console/calendar": "Back to the calendar",
}


def _came_from(request: Request) -> tuple[str, str]:
    """The page a booking action's form was on (its Referer, when it is a console page of this
    site), else the bookings page: where a refused action's page links back to."""
    referer = urlsplit(request.headers.get("referer", ""))
    label = _BOOKING_PAGES.get(referer.path)
    if label and referer.netloc == request.url.netloc and referer.scheme in ("http", "https"):
        return referer.path + (f"?{referer.query}" if referer.query else ""), label
    return "/console/bookings", "Back to Bookings"


@guard()
async def booking_action(request: Request, session: Session) -> Response:
    from relay.web.console import actions

    booking_id = request.path_params["booking_id"]
    action = request.path_params["action"]
    form = await auth.form(request)
    try:
        message = await actions.booking_action(
            _runtime(request),
            booking_id,
            action,
            {k: str(v) for k, v in form.items()},
            session.user,
        )
    except actions.ActionError as exc:
        if request.headers.get(auth.CSRF_HEADER):
            return JSONResponse({"error": str(exc)}, status_code=409)
        return render_error(request, 409, "Not done", str(exc), session, back=_came_from(request))
    if request.headers.get(auth.CSRF_HEADER):
        return JSONResponse({"done": message})
    return RedirectResponse("/console/bookings?" + urlencode({"done": message}), status_code=303)


@guard()
async def messages(request: Request, session: Session) -> Response:
    q = request.query_params
    page = _page(request)
    status = q.get("status", "open")
    tickets, more = await queries.list_tickets(
        _db(request), agent=q.get("agent", ""), status=status, page=page
    )
    sms = await queries.list_sms(_db(request), agent=q.get("agent", ""))
    return render(
        request,
        "messages.html",
        session,
        tickets=tickets,
        sms=sms,
        agents=_agents(request),
        q=q,
        status=status,
        links=_page_links(request, page, more),
    )


@guard()
async def ticket_done(request: Request, session: Session) -> Response:
    try:
        ticket_id = int(request.path_params["ticket_id"])
    except ValueError:
        ticket_id = 0
    if not 0 < ticket_id <= MAX_INT32:  # tickets.id is an INTEGER: 32 bits on PostgreSQL
        return JSONResponse({"error": "no such message"}, status_code=404)
    async with _db(request).session() as db_session, db_session.begin():
        ticket = await db_session.get(Ticket, ticket_id)
        if ticket is None:
            return JSONResponse({"error": "no such message"}, status_code=404)
        ticket.status = "done"
    log.info("console_ticket_done", ticket=ticket_id, by=session.user)
    if request.headers.get(auth.CSRF_HEADER):
        return JSONResponse({"id": ticket_id, "status": "done"})
    return RedirectResponse("/console/messages", status_code=303)


@guard()
async def notifications(request: Request, session: Session) -> Response:
    return await _notifications_page(request, session)


async def _notifications_page(
    request: Request, session: Session, error: str | None = None, saved: str | None = None
) -> Response:
    from sqlalchemy import select

    from relay.storage.models import SideEffect
    from relay.web.console import notify

    runtime = _runtime(request)
    agents = _agents(request)
    channels = notify.channels_for(runtime)
    async with _db(request).session() as db_session:
        recent = (
            await db_session.execute(
                select(SideEffect.key, SideEffect.status, SideEffect.result, SideEffect.created_at)
                .where(SideEffect.tool == "console_notify")
                .order_by(SideEffect.created_at.desc())
                .limit(20)
            )
        ).all()
    return render(
        request,
        "notifications.html",
        session,
        status_code=400 if error else 200,
        targets=await notify.targets(_db(request), agents),
        sms_ready={
            a: bool(channels.twilio.get(a) and channels.twilio[a].from_number) for a in agents
        },
        email_ready=channels.smtp is not None,
        recent=recent,
        error=error,
        saved=saved,
    )


@guard()
async def save_notifications(request: Request, session: Session) -> Response:
    from relay.services.email import ADDRESS
    from relay.web.console import notify

    form = await auth.form(request)
    agent = str(form.get("agent") or "")
    if agent not in _agents(request):
        return await _notifications_page(request, session, error="Pick an agent.")
    sms = str(form.get("sms") or "").strip()
    email = str(form.get("email") or "").strip()
    if sms and not _E164.match(sms):
        return await _notifications_page(
            request, session, error="The SMS number must be in E.164 form, e.g. +61412345678."
        )
    if email and not ADDRESS.match(email):
        return await _notifications_page(request, session, error="That e-mail address looks wrong.")
    target = notify.Target(
        sms=sms,
        email=email,
        messages=form.get("messages") == "on",
        bookings=form.get("bookings") == "on",
    )
    await notify.save_target(_db(request), agent, target)
    log.info("console_notifications_saved", agent=agent, by=session.user)
    return await _notifications_page(request, session, saved=agent)


# -- knowledge ------------------------------------------------------------------------------------


def _collections(request: Request) -> dict[str, str]:
    """Agent name -> knowledge collection, for agents that have one."""
    return {
        name: agent.knowledge_collection
        for name, agent in sorted(_runtime(request).deps.agents.agents.items())
        if agent.knowledge_collection
    }


@guard(role="editor")
async def knowledge(request: Request, session: Session) -> Response:
    return await _knowledge_page(request, session, request.query_params.get("agent", ""))


async def _knowledge_page(
    request: Request,
    session: Session,
    agent: str,
    results: list[dict[str, Any]] | None = None,
    status_code: int = 200,
) -> Response:
    from knowledge import SUPPORTED_SUFFIXES  # the file types an upload takes

    collections = _collections(request)
    agent = agent or _first_agent(request, collections)
    store_ = _runtime(request).knowledge
    documents: list[Any] = []
    error = None
    hits: list[Any] = []
    message = ""
    question = request.query_params.get("ask", "").strip()
    collection = collections.get(agent, "")
    if store_ is None:
        error = "The knowledge store is turned off (RELAY_KNOWLEDGE=false)."
    elif collection:
        from knowledge import KnowledgeError

        try:
            documents = await store_.list_documents(collection, timeout=10.0)
            if question:
                hits, message = await _ask(request, collection, question)
        except _STORE_DOWN as exc:
            return _store_down(request, session, exc, "Knowledge unavailable", agent, "")
        except KnowledgeError as exc:  # e.g. nothing was ever loaded: the page says so
            error = str(exc)
    return render(
        request,
        "knowledge.html",
        session,
        status_code=status_code,
        agents=list(collections),
        agent=agent,
        collection=collection,
        documents=documents,
        error=error,
        question=question,
        hits=hits,
        message=message,
        results=results,
        suffixes=SUPPORTED_SUFFIXES,
    )


def _store_down_errors() -> tuple[type[Exception], ...]:
    from knowledge import KnowledgeTimeout, StoreUnavailable

    return (StoreUnavailable, KnowledgeTimeout)


#: A store that cannot be reached or did not answer in time (not a bad file, not a mistake).
_STORE_DOWN = _store_down_errors()


def _store_down(
    request: Request, session: Session, exc: Exception, title: str, agent: str, what: str
) -> Response:
    """The error page (503) for a store that cannot be reached or timed out, with a link back
    to the agent's knowledge page; logged once as a warning, not as a traceback."""
    log.warning(
        "console_knowledge_store_failed", path=request.url.path, agent=agent, error=str(exc)[:300]
    )
    back = "/console/knowledge" + ("?" + urlencode({"agent": agent}) if agent else "")
    message = f"{what}The knowledge store did not answer: {exc}. Try again when it is back."
    return render_error(request, 503, title, message, session, back=(back, "Back to Knowledge"))


def _first_agent(request: Request, collections: dict[str, str]) -> str:
    """The agent the page opens on without ``?agent=``: the default agent (the one
    ``relay knowledge`` works on without ``--collection``) when it has a knowledge base, else
    the first that has one."""
    default: str = _runtime(request).deps.agents.default_name
    return default if default in collections else next(iter(collections), "")


async def _ask(request: Request, collection: str, question: str) -> tuple[list[Any], str]:
    """Exactly what a turn's retrieval hands the model: the same k, threshold and wording
    (:func:`relay.web.passages.ask`, shared with the admin API and ``relay knowledge search``)."""
    from relay.services.retrieval import format_passages
    from relay.web.passages import ask

    retriever = _runtime(request).retriever
    assert retriever is not None  # the store is on
    hits = await ask(retriever, collection, question, timeout=10.0)
    return hits, format_passages(hits) if hits else ""


@guard(role="editor", upload=True)
async def knowledge_upload(request: Request, session: Session) -> Response:
    from knowledge import DocumentError, KnowledgeError, KnowledgeTimeout

    collections = _collections(request)
    form = await auth.form(request, upload=True)  # refused as soon as it passes the cap
    agent = str(form.get("agent") or "")
    collection = collections.get(agent)
    store_ = _runtime(request).knowledge
    if collection is None or store_ is None:
        return render_error(
            request, 400, "Cannot upload", "Pick an agent with a knowledge base.", session,
            back=("/console/knowledge", "Back to Knowledge"),
        )  # fmt: skip
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    results: list[dict[str, Any]] = []
    # Document ids ignore case (knowledge.ids): "Parking.TXT" replaces "parking.txt", and the
    # result says so. The file names the documents were loaded from, by id:
    try:
        sources = {
            d.doc_id: d.source for d in await store_.list_documents(collection, timeout=10.0)
        }
    except KnowledgeError:
        sources = {}
    for item in files:
        name = item.filename or "upload"
        data = await item.read(MAX_UPLOAD_BYTES + 1)
        if not data and not name:
            continue
        if len(data) > MAX_UPLOAD_BYTES:
            results.append(
                {"path": name, "status": "failed", "chunks": 0,
                 "error": f"over the size limit of {MAX_UPLOAD_BYTES} bytes"}
            )  # fmt: skip
            continue
        try:
            result = await store_.add_bytes(collection, name, data, timeout=UPLOAD_WAIT)
        except KnowledgeTimeout:
            # Not a failure of the file: a load that had started goes on after this answer.
            note = (
                f"not loaded within {UPLOAD_WAIT:g} s, as the machine is busy with calls. It "
                "may still load: look under Documents before uploading it again."
            )
            results.append(
                {"path": name, "status": "still loading", "chunks": 0, "error": None,
                 "note": note}
            )  # fmt: skip
            continue
        except DocumentError as exc:  # a bad file: the line names it already
            results.append({"path": name, "status": "failed", "chunks": 0, "error": exc.reason})
            continue
        except _STORE_DOWN as exc:  # the rest would fail too: say which files were loaded
            done = [str(r["path"]) for r in results if r["status"] != "failed"]
            if request.headers.get(auth.CSRF_HEADER):
                log.warning("console_knowledge_store_failed", agent=agent, error=str(exc)[:300])
                return JSONResponse({"error": str(exc), "results": results}, status_code=503)
            loaded = f"Loaded before it: {', '.join(done)}. " if done else ""
            return _store_down(
                request, session, exc, "Cannot upload", agent, f"{name} was not loaded. {loaded}"
            )
        except KnowledgeError as exc:  # a store in trouble
            results.append({"path": name, "status": "failed", "chunks": 0, "error": str(exc)})
            continue
        before = sources.get(result.doc_id)
        sources[result.doc_id] = result.path
        results.append(
            {"path": result.path, "status": str(result.status), "chunks": result.chunks,
             "error": result.error, "version": result.version,
             "replaced": before if before is not None and before != result.path else None}
        )  # fmt: skip
    if not results:
        results.append({"path": "", "status": "failed", "chunks": 0, "error": "choose a file"})
    log.info("console_upload", agent=agent, files=len(results), by=session.user)
    if request.headers.get(auth.CSRF_HEADER):
        return JSONResponse(
            {"results": results, "failed": sum(1 for r in results if r["status"] == "failed")}
        )
    # The page itself, not a redirect: the results need no state kept between requests.
    failed = sum(1 for r in results if r["status"] == "failed")
    return await _knowledge_page(
        request,
        session,
        agent,
        results,
        200 if not failed else (207 if failed < len(results) else 422),
    )


@guard(role="editor")
async def knowledge_remove(request: Request, session: Session) -> Response:
    collections = _collections(request)
    form = await auth.form(request)
    agent = str(form.get("agent") or "")
    doc_id = str(form.get("doc_id") or "")
    collection = collections.get(agent)
    store_ = _runtime(request).knowledge
    if collection is None or store_ is None or not doc_id:
        return render_error(
            request, 400, "Cannot remove", "Pick an agent and a document.", session,
            back=("/console/knowledge", "Back to Knowledge"),
        )  # fmt: skip
    try:
        removed = await store_.remove(collection, doc_id, timeout=30.0)
    except _STORE_DOWN as exc:
        return _store_down(
            request, session, exc, "Cannot remove", agent, f"{doc_id} was not removed. "
        )
    if not removed:
        return render_error(
            request, 404, "Cannot remove", f"There is no document {doc_id}.", session,
            back=("/console/knowledge?" + urlencode({"agent": agent}), "Back to Knowledge"),
        )  # fmt: skip
    log.info("console_document_removed", agent=agent, doc_id=doc_id, by=session.user)
    return RedirectResponse("/console/knowledge?" + urlencode({"agent": agent}), status_code=303)


# -- static -------------------------------------------------------------------------------------------


#: The files in ``static/`` the console serves, and their media types.
STATIC_FILES = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "icon.svg": "image/svg+xml",  # every page's <link rel="icon">
}


@auth.public
async def static(request: Request) -> Response:
    from relay.web.console.render import STATIC

    name = request.path_params["name"]
    if not await auth.enabled(request) or name not in STATIC_FILES:
        return auth.not_found()
    return Response(
        (STATIC / name).read_bytes(),
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "public, max-age=300"},
    )
