"""What the console reads from the database: one short unit of work per page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, literal_column, select, text

from relay.call.guards import NOTES_TAIL
from relay.services.customers import normalise_phone
from relay.services.retrieval import INTRO
from relay.storage.console import BookingConfirmation, CallCommand
from relay.storage.db import Database
from relay.storage.models import Booking, Call, Event, Message, Quote, RelaySession, Ticket, Turn
from relay.storage.outcomes import CallAnalysis
from relay.storage.requests import expand_requests
from relay.storage.textsearch import PENDING_TABLE, has_pending, index_pending

PAGE = 50
#: A call with no end whose last sign of life is older than this is not shown as live.
LIVE_HORIZON = timedelta(hours=6)
#: Event kinds the console shows (the large llm_request/llm_response bodies are left out).
SHOWN_EVENTS = (
    "frame_in",
    "frame_out",
    "tool_call",
    "tool_result",
    "retrieval",
    "supervisor",
    "session_end",
    "llm_error",
)


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


# -- call history ---------------------------------------------------------------------------


@dataclass
class CallFilters:
    agent: str = ""
    since: datetime | None = None
    until: datetime | None = None
    outcome: str = ""
    caller: str = ""
    words: str = ""
    page: int = 1


@dataclass
class CallRow:
    call_sid: str
    agent: str
    from_number: str
    started_at: datetime
    ended_at: datetime | None
    status: str
    outcome: str | None
    turns: int

    @property
    def seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (aware(self.ended_at) - aware(self.started_at)).total_seconds()  # type: ignore[operator]


async def search_calls(db: Database, f: CallFilters) -> tuple[list[CallRow], bool]:
    """A page of calls, newest first, and whether there is a next page (no total count: it
    would cost a scan of every match on a large database)."""
    query = select(
        Call.call_sid,
        Call.agent,
        Call.from_number,
        Call.started_at,
        Call.ended_at,
        Call.status,
        Call.outcome,
        Call.turns,
    ).order_by(Call.started_at.desc())
    if f.agent:
        query = query.where(Call.agent == f.agent)
    if f.since:
        query = query.where(Call.started_at >= f.since)
    if f.until:
        query = query.where(Call.started_at < f.until)
    if f.outcome == "in-progress":
        query = query.where(Call.ended_at.is_(None))
    elif f.outcome:
        query = query.where(Call.outcome == f.outcome)
    if f.caller:
        number = normalise_phone(f.caller)
        digits = _digits(f.caller)
        if number is not None:
            query = query.where(Call.from_number == number)
        elif digits:
            # Part of a number: matched on the (from_number, call_sid) index alone.
            query = query.where(
                Call.call_sid.in_(
                    select(Call.call_sid).where(Call.from_number.contains(digits, autoescape=True))
                )
            )
    if f.words.strip():
        query = query.where(Call.call_sid.in_(await _said(db, f.words.strip())))
    page = max(1, f.page)
    query = query.offset((page - 1) * PAGE).limit(PAGE + 1)
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    calls = [CallRow(*row) for row in rows[:PAGE]]
    return calls, len(rows) > PAGE


_FTS: dict[str, bool] = {}
_PENDING: dict[str, bool] = {}  # whether the database queues turns for the index (0006)
#: The words search looks at the newest this many matching lines (a common word on a large
#: database would otherwise match most of it).
WORDS_CAP = 20_000


async def _said(db: Database, words: str) -> Any:
    """The call SIDs whose turns contain ``words`` (as a phrase), through the full-text index
    of migration 0002 when the database has it; a substring scan otherwise."""
    if db.url not in _FTS:
        async with db.session() as session:
            if db.is_sqlite:
                found = await session.scalar(
                    text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='turns_fts'")
                )
            else:
                found = await session.scalar(
                    text("SELECT 1 FROM pg_indexes WHERE indexname = 'ix_turns_content_fts'")
                )
        _FTS[db.url] = found is not None
    if not _FTS[db.url]:
        return select(Turn.call_sid).where(Turn.content.contains(words, autoescape=True))
    if db.is_sqlite:
        if await _has_pending(db):  # turns not written by a recorder (which indexes its own)
            async with db.engine.begin() as conn:
                await index_pending(conn, check=False)
        phrase = '"' + words.replace('"', '""') + '"'
        return select(Turn.call_sid).where(
            Turn.id.in_(
                text(
                    "SELECT rowid FROM turns_fts WHERE turns_fts MATCH :phrase ORDER BY rowid DESC LIMIT :cap"
                ).bindparams(phrase=phrase, cap=WORDS_CAP)
            )
        )
    return select(Turn.call_sid).where(
        func.to_tsvector(literal_column("'simple'"), Turn.content).op("@@")(
            func.phraseto_tsquery(literal_column("'simple'"), words)
        )
    )


async def _has_pending(db: Database) -> bool:
    """Whether turns wait to be indexed (migration 0006), read without taking the write lock."""
    async with db.engine.connect() as conn:
        if _PENDING.get(db.url) is None:
            found = await conn.scalar(
                text(f"SELECT 1 FROM sqlite_master WHERE type='table' AND name='{PENDING_TABLE}'")
            )
            _PENDING[db.url] = found is not None
        return _PENDING[db.url] and await has_pending(conn)


async def agents_and_outcomes(db: Database, agents: list[str]) -> tuple[list[str], list[str]]:
    async with db.session() as session:
        outcomes = (
            await session.scalars(
                select(Call.outcome).where(Call.outcome.is_not(None)).distinct().limit(50)
            )
        ).all()
    return agents, sorted(o for o in outcomes if o)


# -- one call ---------------------------------------------------------------------------------


@dataclass
class Item:
    """One line of the call page's transcript."""

    kind: str  # caller | agent | tool | keypad | supervisor | note | end
    at: datetime
    text: str = ""
    heard: str | None = None  # agent lines cut short: what the caller actually heard
    planned: str | None = None
    interrupted: bool = False
    name: str = ""
    arguments: Any = None
    result: Any = None
    error: str | None = None
    passages: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0


@dataclass
class Waterfall:
    seq: int
    said: str
    segments: list[tuple[str, float, float]]  # (label, start ms, end ms)
    total: float
    turn: int  # the caller's turn: 1 for their first words (as the passages are numbered)


@dataclass
class CallDetail:
    call: Call
    sessions: list[RelaySession]
    items: list[Item]
    waterfalls: list[Waterfall]
    passages: list[dict[str, Any]]
    quotes: list[Quote]
    bookings: list[Booking]
    tickets: list[Ticket]
    handoff: dict[str, Any] | None
    commands: list[CallCommand]
    analysis: CallAnalysis | None = None  # when the call was analysed
    given: list[str] = field(default_factory=list)  # reference messages the model was handed

    @property
    def seconds(self) -> float | None:
        end = aware(self.call.ended_at)
        return (end - aware(self.call.started_at)).total_seconds() if end else None  # type: ignore[operator]


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def call_detail(db: Database, call_sid: str) -> CallDetail | None:
    async with db.session() as session:
        call = await session.get(Call, call_sid)
        if call is None:
            return None
        sessions = list(
            (
                await session.scalars(
                    select(RelaySession)
                    .where(RelaySession.call_sid == call_sid)
                    .order_by(RelaySession.started_at)
                )
            ).all()
        )
        turns = list(
            (
                await session.scalars(
                    select(Turn).where(Turn.call_sid == call_sid).order_by(Turn.seq)
                )
            ).all()
        )
        events = list(
            (
                await session.scalars(
                    select(Event)
                    .where(
                        Event.call_sid == call_sid,
                        Event.kind.in_(
                            ("frame_in", "tool_result", "supervisor", "llm_error", "llm_request")
                        ),
                    )
                    .order_by(Event.id)
                )
            ).all()
        )
        quotes = list(
            (await session.scalars(select(Quote).where(Quote.call_sid == call_sid))).all()
        )
        bookings = list(
            (await session.scalars(select(Booking).where(Booking.call_sid == call_sid))).all()
        )
        tickets = list(
            (await session.scalars(select(Ticket).where(Ticket.call_sid == call_sid))).all()
        )
        commands = list(
            (
                await session.scalars(
                    select(CallCommand)
                    .where(CallCommand.call_sid == call_sid)
                    .order_by(CallCommand.id)
                )
            ).all()
        )
        analysis = await session.get(CallAnalysis, call_sid)
    expand_requests(events)
    given = _reference_messages(events)
    results: dict[str, Any] = {}
    extra: list[Item] = []
    for event in events:
        data = event.data or {}
        at = aware(event.at) or datetime.now(UTC)
        if event.kind == "tool_result":
            results[str(data.get("id"))] = data
        elif event.kind == "frame_in":
            frame = _json(data.get("raw"))
            if isinstance(frame, dict) and frame.get("type") == "dtmf":
                extra.append(Item("keypad", at, text=str(frame.get("digit", ""))))
    items: list[Item] = []
    passages: list[dict[str, Any]] = []
    seen_passages: set[tuple[Any, ...]] = set()
    number = 0  # the caller's turns so far: passages are numbered by the turn they answer
    for turn in turns:
        at = aware(turn.created_at) or datetime.now(UTC)
        if turn.role == "user":
            number += 1
            items.append(Item("caller", at, text=turn.content, seq=turn.seq))
        elif turn.role == "assistant":
            item = Item(
                "agent",
                at,
                text=turn.content,
                interrupted=turn.interrupted,
                heard=turn.heard_text if turn.interrupted else None,
                planned=turn.spoken_text if turn.interrupted else None,
                error=turn.error,
                seq=turn.seq,
            )
            for provenance in turn.retrieval or []:
                key = (provenance.get("chunk_id"), turn.seq)
                if key not in seen_passages and isinstance(provenance, dict):
                    seen_passages.add(key)
                    item.passages.append(provenance)
            if item.passages:
                passages.extend({**p, "turn": number} for p in item.passages)
            if turn.content or turn.interrupted or turn.error:
                items.append(item)
            for tool_call in turn.tool_calls or []:
                function = tool_call.get("function", {}) if isinstance(tool_call, dict) else {}
                result = results.get(str(tool_call.get("id")))
                items.append(
                    Item(
                        "tool",
                        at,
                        name=str(function.get("name", "")),
                        arguments=_json(function.get("arguments")),
                        result=result,
                        seq=turn.seq,
                    )
                )
        elif turn.role == "system":
            items.append(Item("supervisor", at, text=turn.content, seq=turn.seq))
    items.extend(extra)
    items.sort(key=lambda i: i.at)
    return CallDetail(
        call=call,
        sessions=sessions,
        items=items,
        waterfalls=waterfalls(turns),
        passages=passages,
        quotes=quotes,
        bookings=bookings,
        tickets=tickets,
        handoff=_json(call.handoff_data) if call.handoff_data else None,
        commands=commands,
        analysis=analysis,
        given=given,
    )


def _reference_messages(events: list[Event]) -> list[str]:
    """The knowledge passages the model was handed (the retrieval's system messages), each once."""
    seen: list[str] = []
    for event in events:
        if event.kind != "llm_request" or not isinstance(event.data, dict):
            continue
        body = event.data.get("body")
        for message in body.get("messages", []) if isinstance(body, dict) else []:
            content = message.get("content") if isinstance(message, dict) else None
            if message.get("role") != "system" or not isinstance(content, str):
                continue
            # The passages sit in the per-turn note, after the time and before its last line.
            start = content.find(INTRO)
            if start < 0:
                continue
            passages = content[start + len(INTRO) :].split(NOTES_TAIL, 1)[0].strip()
            if passages and passages not in seen:
                seen.append(passages)
    return seen


_STAGES = (
    ("retrieval", "retrieval_done_at"),
    ("to request", "llm_request_at"),
    ("first token", "first_token_at"),
    ("first word", "first_frame_at"),
    ("rest of reply", "last_token_at"),
)


def waterfalls(turns: list[Turn]) -> list[Waterfall]:
    """Per caller turn: the stages from the prompt to the last token, in ms from the prompt.
    Each is numbered by the caller's turns (1 for their first words), as the passages are."""
    out: list[Waterfall] = []
    number = 0
    for index, turn in enumerate(turns):
        if turn.role != "user":
            continue
        number += 1
        if turn.prompt_received_at is None:
            continue
        reply = next(
            (
                t
                for t in turns[index + 1 :]
                if t.role == "assistant" and t.llm_request_at is not None
            ),
            None,
        )
        if reply is None:
            continue
        start = turn.prompt_received_at
        segments: list[tuple[str, float, float]] = []
        previous = 0.0
        for label, column in _STAGES:
            value = getattr(reply, column)
            if value is None:
                continue
            ms = max(previous, (value - start) * 1000)
            segments.append((label, previous, ms))
            previous = ms
        if segments:
            out.append(Waterfall(turn.seq, turn.content[:80], segments, previous, number))
    return out


# -- live calls -------------------------------------------------------------------------------


@dataclass
class LiveCall:
    call_sid: str
    agent: str
    from_number: str
    started_at: datetime
    state: str
    caller_said: str = ""  # the caller's latest words
    agent_said: str = ""  # the agent's latest reply (as far as it is recorded)


#: The events that tell a live call's state (the newest of them).
_STATE_EVENTS = ("frame_out", "tool_call", "tool_result", "frame_in")


def _latest_words(role: str) -> Any:
    """The newest non-empty turn of ``role`` of the outer query's call (a few index steps back
    on ``ix_turns_call``)."""
    return (
        select(Turn.content)
        .where(Turn.call_sid == Call.call_sid, Turn.role == role, Turn.content != "")
        .order_by(Turn.seq.desc())
        .limit(1)
        .correlate(Call)
        .scalar_subquery()
    )


async def live_calls(db: Database, now: datetime | None = None) -> list[LiveCall]:
    """Calls in progress on every worker: no end recorded, started recently.

    The live page asks once a second for each owner watching it, while the calls it lists are
    being served by the same processes, so each call costs a few index steps, whatever its
    length: its newest state event (``ix_events_call_id``, migration 0007) and its newest words
    of each side (``ix_turns_call``), never all of its events or turns.
    """
    now = now or datetime.now(UTC)
    newest_event = (
        select(Event.id)
        .where(Event.call_sid == Call.call_sid, Event.kind.in_(_STATE_EVENTS))
        .order_by(Event.id.desc())
        .limit(1)
        .correlate(Call)
        .scalar_subquery()
    )
    async with db.session() as session:
        rows = (
            await session.execute(
                select(
                    Call.call_sid,
                    Call.agent,
                    Call.from_number,
                    Call.started_at,
                    newest_event,
                    _latest_words("user"),
                    _latest_words("assistant"),
                )
                .where(Call.ended_at.is_(None), Call.started_at >= now - LIVE_HORIZON)
                .order_by(Call.started_at.desc())
                .limit(200)
            )
        ).all()
        ids = [row[4] for row in rows if row[4] is not None]
        newest = (
            (
                await session.execute(
                    select(Event.id, Event.kind, Event.data).where(Event.id.in_(ids))
                )
            ).all()
            if ids
            else []
        )
    state = {event_id: _state(kind, data) for event_id, kind, data in newest}
    return [
        LiveCall(
            sid,
            agent,
            number,
            aware(started) or now,
            state.get(event_id, "listening"),
            caller_said or "",
            agent_said or "",
        )
        for sid, agent, number, started, event_id, caller_said, agent_said in rows
    ]


def _state(kind: str, data: Any) -> str:
    """What a live call is doing, from its newest state event."""
    if kind == "tool_call":
        return "running a tool"
    if kind == "frame_out":
        frame = _json(data.get("raw") if isinstance(data, dict) else None)
        if isinstance(frame, dict) and frame.get("type") == "text":
            return "speaking"
    return "listening"


async def new_events(db: Database, call_sid: str, after: int) -> list[Event]:
    async with db.session() as session:
        return list(
            (
                await session.scalars(
                    select(Event)
                    .where(
                        Event.call_sid == call_sid,
                        Event.id > after,
                        Event.kind.in_(SHOWN_EVENTS),
                    )
                    .order_by(Event.id)
                    .limit(500)
                )
            ).all()
        )


async def call_ended(db: Database, call_sid: str) -> bool:
    async with db.session() as session:
        ended = await session.scalar(select(Call.ended_at).where(Call.call_sid == call_sid))
    return ended is not None


def is_setup(event: Event) -> bool:
    """Whether ``event`` is a session's ``setup`` frame (the greeting is said right after)."""
    if event.kind != "frame_in":
        return False
    frame = _json((event.data or {}).get("raw"))
    return isinstance(frame, dict) and frame.get("type") == "setup"


async def session_greeting(db: Database, call_sid: str, session_id: str) -> str | None:
    """The greeting a session opened with, for the live transcript: Twilio says it (the
    TwiML's ``welcomeGreeting``), so no frame carries it; the session records it as its first
    turn, an assistant turn no model wrote. ``""`` when the session opened otherwise (a
    reconnect, no greeting); None while it has no turn recorded yet."""
    async with db.session() as session:
        first = (
            await session.execute(
                select(Turn.role, Turn.content, Turn.llm_request_at, Turn.tool_calls)
                .where(Turn.call_sid == call_sid, Turn.session_id == session_id)
                .order_by(Turn.seq)
                .limit(1)
            )
        ).first()
    if first is None:
        return None
    role, content, asked, tool_calls = first
    return content if role == "assistant" and asked is None and not tool_calls else ""


def stream_lines(event: Event) -> list[dict[str, Any]]:
    """What the live page shows of one event (none for most frames)."""
    data = event.data or {}
    if event.kind == "frame_in":
        frame = _json(data.get("raw"))
        if not isinstance(frame, dict):
            return []
        kind = frame.get("type")
        if kind == "prompt" and frame.get("last"):
            return [{"type": "caller", "text": frame.get("voicePrompt", "")}]
        if kind == "dtmf":
            return [{"type": "keypad", "text": str(frame.get("digit", ""))}]
        if kind == "interrupt":
            return [{"type": "interrupt", "text": frame.get("utteranceUntilInterrupt", "")}]
        return []
    if event.kind == "frame_out":
        frame = _json(data.get("raw"))
        if not isinstance(frame, dict):
            return []
        if frame.get("type") == "text":
            return [
                {"type": "agent", "text": frame.get("token", ""), "last": bool(frame.get("last"))}
            ]
        if frame.get("type") == "end":
            return [{"type": "end", "text": frame.get("handoffData", "")}]
        return []
    if event.kind == "tool_call":
        return [{"type": "tool", "name": data.get("name"), "text": str(data.get("arguments", ""))}]
    if event.kind == "tool_result":
        return [
            {
                "type": "result",
                "name": data.get("name"),
                "text": str(data.get("content", ""))[:2000],
            }
        ]
    if event.kind == "retrieval":
        sources = [p.get("source", "") for p in data.get("provenance") or [] if isinstance(p, dict)]
        return [{"type": "passages", "text": ", ".join(sources)}] if sources else []
    if event.kind == "supervisor":
        return [{"type": "supervisor", "text": f"{data.get('kind')}: {data.get('argument', '')}"}]
    if event.kind == "llm_error":
        return [{"type": "error", "text": str(data.get("error", ""))[:300]}]
    if event.kind == "session_end":
        return [{"type": "closed", "text": str(data.get("outcome") or "")}]
    return []


# -- quotes, bookings, messages ------------------------------------------------------------------


async def list_quotes(
    db: Database, *, agent: str = "", status: str = "", page: int = 1
) -> tuple[list[Quote], bool]:
    query = select(Quote).order_by(Quote.created_at.desc())
    if agent:
        query = query.where(Quote.agent == agent)
    if status:
        query = query.where(Quote.status == status)
    query = query.offset((max(1, page) - 1) * PAGE).limit(PAGE + 1)
    async with db.session() as session:
        rows = list((await session.scalars(query)).all())
    return rows[:PAGE], len(rows) > PAGE


@dataclass
class BookingRow:
    booking: Booking
    confirmed: BookingConfirmation | None


async def list_bookings(
    db: Database,
    *,
    agent: str = "",
    status: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    page: int = 1,
    limit: int = PAGE,
) -> tuple[list[BookingRow], bool]:
    query = (
        select(Booking, BookingConfirmation)
        .outerjoin(BookingConfirmation, BookingConfirmation.booking_id == Booking.id)
        .order_by(Booking.starts_at)
    )
    if agent:
        query = query.where(Booking.agent == agent)
    if status:
        query = query.where(Booking.status == status)
    if since:
        query = query.where(Booking.starts_at >= since)
    if until:
        query = query.where(Booking.starts_at < until)
    query = query.offset((max(1, page) - 1) * limit).limit(limit + 1)
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    out = [BookingRow(b, c) for b, c in rows]
    return out[:limit], len(out) > limit


async def list_tickets(
    db: Database, *, agent: str = "", status: str = "open", page: int = 1
) -> tuple[list[Ticket], bool]:
    query = select(Ticket).order_by(Ticket.created_at.desc())
    if agent:
        query = query.where(Ticket.agent == agent)
    if status:
        query = query.where(Ticket.status == status)
    query = query.offset((max(1, page) - 1) * PAGE).limit(PAGE + 1)
    async with db.session() as session:
        rows = list((await session.scalars(query)).all())
    return rows[:PAGE], len(rows) > PAGE


async def list_sms(db: Database, *, agent: str = "", limit: int = 20) -> list[Message]:
    query = select(Message).order_by(Message.created_at.desc()).limit(limit)
    if agent:
        query = query.where(Message.agent == agent)
    async with db.session() as session:
        return list((await session.scalars(query)).all())


# -- analytics ------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Figures:
    calls: int = 0
    answered: int = 0
    transferred: int = 0
    messages: int = 0
    quotes: int = 0
    quotes_booked: int = 0
    bookings: int = 0
    booked_calls: int = 0  # analysed calls whose outcomes include "booked"
    median_seconds: float | None = None
    apologies: int = 0
    model_failures: int = 0
    first_word_p50: float | None = None
    first_word_p95: float | None = None
    analysed: int = 0  # calls with a post-call analysis (outcomes and cost)
    cost: float = 0.0
    currency: str = ""
    zone: str = "UTC"  # the days are this zone's days
    outcomes: dict[str, int] = field(default_factory=dict)
    per_day: list[tuple[str, int, int]] = field(default_factory=list)  # day, calls, transferred
    first_word_per_day: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def conversion(self) -> float | None:
        return self.quotes_booked / self.quotes if self.quotes else None

    @property
    def cost_per_call(self) -> float | None:
        return self.cost / self.analysed if self.analysed else None

    @property
    def cost_per_booking(self) -> float | None:
        """The analysed calls' cost over those of them that booked, as ``relay sessions
        costs`` has it (``relay.services.costs.summarise``); None when none booked."""
        return self.cost / self.booked_calls if self.booked_calls else None


async def analytics(
    db: Database,
    *,
    agent: str,
    days: int,
    agents: list[str],
    zone: str = "UTC",
    now: datetime | None = None,
) -> Figures:
    """The home page's figures over the last ``days`` days in ``zone`` (today included), from
    the daily rollups of ``relay.web.console.rollup``."""
    from relay.web.console import rollup

    today = rollup.today_in(zone, now)
    period = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    per_day = await rollup.day_figures(db, period, agents, agent or None, today, zone)
    total = rollup.merge(per_day.values())
    figures = Figures(
        calls=total["calls"],
        answered=total["answered"],
        transferred=total["transferred"],
        messages=total["messages"],
        quotes=total["quotes"],
        quotes_booked=total["quotes_booked"],
        bookings=total["bookings"],
        booked_calls=total["booked_calls"],
        apologies=total["apologies"],
        model_failures=total["model_failures"],
        analysed=total["analysed"],
        cost=total["cost"],
        currency=total["currency"],
        zone=zone,
        outcomes=dict(sorted(total["outcomes"].items(), key=lambda kv: -kv[1])),
    )
    figures.median_seconds = rollup.quantile(total["durations"], 0.5)
    scale = rollup.FIRST_WORD_BUCKET
    figures.first_word_p50 = rollup.quantile(total["first_words"], 0.5, scale)
    figures.first_word_p95 = rollup.quantile(total["first_words"], 0.95, scale)
    for day in period:
        f = per_day[day]
        label = day.isoformat()
        figures.per_day.append((label, f["calls"], f["transferred"]))
        figures.first_word_per_day.append((label, rollup.quantile(f["first_words"], 0.95, scale)))
    return figures
