"""The home page's figures from daily rollups, so a quarter of 100,000 calls renders fast.

Days are the business's days: midnight to midnight in one time zone (the default agent's, see
``relay.web.console.views.home``), so an owner in Melbourne finds this morning's calls under
today. A finished day's (older than yesterday) figures are computed once per agent and stored
in ``console_daily`` (shared by every worker), marked with the zone and :data:`VERSION` they
were computed for and a stamp of what they were computed from (:func:`stamps`: the day's calls
and its calls' analyses); a row of another zone or version, or whose stamp no longer matches
(a call imported or deleted, ``relay sessions analyze`` after a price change, a late post-call
pass), is computed again, without any writer having to know about the rollup. Today and
yesterday are always computed live. Durations and prompt-to-first-word times are
kept as histograms (1 s and 5 ms buckets), which add up across days and agents: the median and
the p50/p95 come from the merged histogram, exact to the bucket.
"""

from __future__ import annotations

import asyncio
import math
import time as _time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import structlog
from sqlalchemy import (
    Integer,
    Select,
    Text,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)

from relay.storage.console import ConsoleDaily
from relay.storage.db import Database
from relay.storage.models import Booking, Call, Quote, Ticket, Turn
from relay.storage.outcomes import CallAnalysis

log = structlog.get_logger("relay.web.console.rollup")

FIRST_WORD_BUCKET = 5.0  # ms
#: What a stored day's figures hold: 2 added ``booked_calls`` (and the zone); 3 counts as
#: answered the calls the model answered (not every call with a second turn) and adds the
#: ``stamp``. Rows stored before are computed again.
VERSION = 3
#: Seconds today's and yesterday's figures, and the stored days' stamps, are reused by a worker
#: before being read again.
LIVE_TTL = 30.0
_LIVE: dict[tuple[str, str | None, date, str], tuple[float, dict[str, Any]]] = {}
_STAMPS: dict[tuple[Any, ...], tuple[float, dict[tuple[str, date], list[Any]]]] = {}
#: Days whose stamps one statement reads (SQLite allows 500 terms in a compound select; a day
#: takes up to three).
STAMP_DAYS = 90
#: Past days the start-up warm-up prepares (the longest period the home page offers).
WARM_DAYS = 91
_COUNTS = (
    "calls",
    "answered",
    "transferred",
    "apologies",
    "model_failures",
    "messages",
    "quotes",
    "quotes_booked",
    "bookings",
    "booked_calls",
)


def _bounds(day: date, zone: str = "UTC") -> tuple[datetime, datetime]:
    """The UTC instants ``day`` starts and ends in ``zone`` (23 or 25 hours apart when the
    clocks change)."""
    tz = ZoneInfo(zone)
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)


def today_in(zone: str, now: datetime | None = None) -> date:
    """The date in ``zone`` at ``now`` (the present when not given)."""
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(zone)).date()


def _seconds(db: Database, start: Any, end: Any) -> Any:
    if db.is_sqlite:
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _first_word_bucket(db: Database) -> Any:
    """A reply's prompt-to-first-word bucket (``first_frame_ms // FIRST_WORD_BUCKET``), in SQL:
    SQLite's integer cast truncates, which is the floor for these non-negative times;
    PostgreSQL's rounds, so it takes the floor."""
    scaled = Turn.first_frame_ms / FIRST_WORD_BUCKET
    return cast(scaled, Integer) if db.is_sqlite else func.floor(scaled)


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _answered() -> Any:
    """A call the caller heard the agent answer, beyond the greeting: one of its replies the
    model wrote without failing (a request was made, no error) says something or calls a tool,
    what ``relay.services.outcomes`` counts as answered (a complete model response with text or
    tool calls; a call with none is ``abandoned`` unless something was done). The greeting, and
    the lines said after a tool without a request, are not replies; an apology is not an answer.
    A call whose turns retention purged is answered when its analysis, which retention keeps,
    does not say ``abandoned``."""
    said = or_(
        Turn.content != "",
        and_(Turn.tool_calls.is_not(None), cast(Turn.tool_calls, Text).not_in(["null", "[]"])),
    )
    reply = select(Turn.id).where(
        Turn.call_sid == Call.call_sid,
        Turn.role == "assistant",
        Turn.llm_request_at.is_not(None),
        func.coalesce(Turn.error, "") == "",
        said,
    )
    any_turn = select(Turn.id).where(Turn.call_sid == Call.call_sid)
    kept = select(CallAnalysis.call_sid).where(
        CallAnalysis.call_sid == Call.call_sid,
        cast(CallAnalysis.outcomes, Text).not_like('%"abandoned"%'),
    )
    return or_(reply.exists(), and_(~any_turn.exists(), kept.exists()))


async def compute_day(
    db: Database, day: date, agent: str | None, zone: str = "UTC"
) -> dict[str, Any]:
    """One day's figures (``day`` in ``zone``) for one agent (``None``: every agent), straight
    from the tables.

    The database does the counting and the histograms (a few rows come back, however many
    calls the day had): a busy day's figures are computed while the same process serves calls,
    and reading every call and reply into Python held its event loop for about a second at
    50,000 calls. Durations are rounded to the second half away from zero (SQL ``round``).
    """
    start, end = _bounds(day, zone)
    calls = and_(Call.started_at >= start, Call.started_at < end)
    if agent is not None:
        calls = and_(calls, Call.agent == agent)
    figures: dict[str, Any] = dict.fromkeys(_COUNTS, 0)
    durations: Counter[int] = Counter()
    first_words: Counter[int] = Counter()
    seconds = func.round(_seconds(db, Call.started_at, Call.ended_at))
    replies = and_(calls, Turn.call_sid == Call.call_sid, Turn.role == "assistant")
    apology = and_(Turn.error.is_not(None), Turn.error != "")
    async with db.session() as session:
        total, answered, transferred = (
            await session.execute(
                select(
                    func.count(),
                    _count_if(_answered()),
                    _count_if(Call.outcome == "transferred"),
                ).where(calls)
            )
        ).one()
        figures.update(calls=int(total), answered=int(answered), transferred=int(transferred))
        for bucket, count in (
            await session.execute(
                select(seconds, func.count())
                .where(calls, Call.ended_at.is_not(None))
                .group_by(seconds)
            )
        ).all():
            if bucket is not None:
                durations[int(bucket)] += int(count)
        # one pass over the replies: per first-word bucket (None: no first word), with errors
        first_bucket = _first_word_bucket(db)
        failure = and_(apology, func.substr(Turn.error, 1, 14) != "internal error")
        for first, count, apologies, failures in (
            await session.execute(
                select(first_bucket, func.count(), _count_if(apology), _count_if(failure))
                .where(replies)
                .group_by(first_bucket)
            )
        ).all():
            figures["apologies"] += int(apologies)
            figures["model_failures"] += int(failures)
            if first is not None:
                first_words[int(first)] += int(count)

        def made(model: Any) -> Any:
            condition = and_(model.created_at >= start, model.created_at < end)
            return and_(condition, model.agent == agent) if agent is not None else condition

        figures["messages"] = int(
            await session.scalar(select(func.count()).select_from(Ticket).where(made(Ticket))) or 0
        )
        for status, count in (
            await session.execute(
                select(Quote.status, func.count()).where(made(Quote)).group_by(Quote.status)
            )
        ).all():
            figures["quotes"] += int(count)
            figures["quotes_booked"] += int(count) if status == "booked" else 0
        figures["bookings"] = int(
            await session.scalar(select(func.count()).select_from(Booking).where(made(Booking)))
            or 0
        )
        figures.update(await _outcomes(session, calls))
    figures["durations"] = {str(k): v for k, v in durations.items()}
    figures["first_words"] = {str(k): v for k, v in first_words.items()}
    figures["zone"], figures["version"] = zone, VERSION
    return figures


async def _outcomes(session: Any, calls: Any) -> dict[str, Any]:
    """Outcomes and cost of the day's analysed calls (the post-call analysis, when present):
    each distinct list of outcomes comes back once, with how many calls had it.
    ``booked_calls`` counts the analysed calls whose outcomes include ``booked``, the bookings
    ``relay sessions costs`` divides the cost by (``relay.services.costs.summarise``)."""
    analysed = and_(calls, CallAnalysis.call_sid == Call.call_sid)
    count, cost, currency = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(CallAnalysis.cost_total), 0.0),
                func.max(CallAnalysis.currency),
            ).where(analysed)
        )
    ).one()
    listed = cast(CallAnalysis.outcomes, Text)
    outcomes: Counter[str] = Counter()
    booked = 0
    for names, calls_with in (
        await session.execute(select(listed, func.count()).where(analysed).group_by(listed))
    ).all():
        listed_names = [str(name) for name in (orjson.loads(names) if names else [])]
        for name in listed_names:
            outcomes[name] += int(calls_with)
        booked += int(calls_with) if "booked" in listed_names else 0
    return {"analysed": int(count), "cost": round(float(cost), 6), "currency": currency or "",
            "outcomes": dict(outcomes), "booked_calls": booked}  # fmt: skip


def settled(day: date, today: date) -> bool:
    """A day whose figures can be stored: nothing recorded on it changes any more."""
    return day < today - timedelta(days=1)


async def stored_days(
    db: Database, days: Sequence[date], agents: Sequence[str]
) -> dict[tuple[str, date], dict[str, Any]]:
    if not days:
        return {}
    async with db.session() as session:
        rows = await session.execute(
            select(ConsoleDaily.agent, ConsoleDaily.day, ConsoleDaily.figures).where(
                ConsoleDaily.agent.in_(list(agents)),
                ConsoleDaily.day >= min(days),
                ConsoleDaily.day <= max(days),
            )
        )
        return {(a, d): f for a, d, f in rows.all()}


async def store_day(db: Database, agent: str, day: date, figures: dict[str, Any]) -> None:
    values = {"agent": agent, "day": day, "figures": figures, "computed_at": datetime.now(UTC)}
    statement = db.insert(ConsoleDaily).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["agent", "day"],
        set_={"figures": statement.excluded.figures, "computed_at": statement.excluded.computed_at},
    )
    async with db.session() as session, session.begin():
        await session.execute(statement)


async def first_day(db: Database, zone: str = "UTC") -> date | None:
    async with db.session() as session:
        earliest = await session.scalar(select(func.min(Call.started_at)))
    if earliest is None:
        return None
    if earliest.tzinfo is None:
        earliest = earliest.replace(tzinfo=UTC)
    day: date = earliest.astimezone(ZoneInfo(zone)).date()
    return day


def _current(figures: dict[str, Any] | None, zone: str, stamp: list[Any]) -> bool:
    """A stored day's figures were computed for ``zone`` by this version of the rollup (rows
    of an older relay hold UTC days), from what the day holds now (``stamp``)."""
    return (
        figures is not None
        and figures.get("zone", "UTC") == zone
        and figures.get("version", 1) == VERSION
        and figures.get("stamp") == stamp
    )


async def stamps(
    db: Database, days: Sequence[date], agents: Sequence[str], zone: str = "UTC"
) -> dict[tuple[str, date], list[Any]]:
    """What each of ``days`` (in ``zone``) holds for each of ``agents``, as a stored day's
    figures are marked with it: how many calls started that day; how many analyses, and the
    newest ``computed_at``, of the calls that ended that day and the next (a call that started
    that day ended then; the analyses' index is by end); and of the analyses with no end (a
    call analysed before it ended: counted on every day); and how many of the quotes given that
    day are booked. A call imported or deleted changes the first, an analysis stored or worked
    out again the next, a quote booked days after it was given (or its booking undone) the
    last; turns and events do not count (retention's purge keeps the figures computed from the
    whole call).

    One statement for every day (a range per day over the ``(agent, started_at)`` and
    ``(agent, ended_at)`` indexes): the database counts, a few rows come back; and one for the
    booked quotes given in the period."""
    out: dict[tuple[str, date], list[Any]] = {}
    for chunk in range(0, len(days), STAMP_DAYS):
        out.update(await _stamps(db, sorted(days)[chunk : chunk + STAMP_DAYS], agents, zone))
    return out


async def _stamps(
    db: Database, days: Sequence[date], agents: Sequence[str], zone: str
) -> dict[tuple[str, date], list[Any]]:
    if not days or not agents:
        return {}
    names = list(agents)
    newest = cast(func.max(CallAnalysis.computed_at), Text)
    parts: list[Select[int, str, str, int, str | None]] = []
    started = set(days)
    for day in sorted(started | {d + timedelta(days=1) for d in days}):
        start, end = _bounds(day, zone)
        if day in started:
            parts.append(
                select(literal(day.toordinal()), literal("calls"), Call.agent, func.count(),
                       literal(None))
                .where(Call.agent.in_(names), Call.started_at >= start, Call.started_at < end)
                .group_by(Call.agent)
            )  # fmt: skip
        parts.append(
            select(literal(day.toordinal()), literal("ended"), CallAnalysis.agent, func.count(),
                   newest)
            .where(CallAnalysis.agent.in_(names), CallAnalysis.ended_at >= start,
                   CallAnalysis.ended_at < end)
            .group_by(CallAnalysis.agent)
        )  # fmt: skip
    parts.append(
        select(literal(0), literal("open"), CallAnalysis.agent, func.count(), newest)
        .where(CallAnalysis.agent.in_(names), CallAnalysis.ended_at.is_(None))
        .group_by(CallAnalysis.agent)
    )
    # The booked quotes given in the period, by day: one range over the table (a quarter's are
    # a few hundred rows), where a range per day would read the quotes, unindexed, once a day.
    period = _bounds(min(days), zone)[0], _bounds(max(days), zone)[1]
    booked = (
        select(Quote.agent, Quote.created_at)
        .where(Quote.agent.in_(names), Quote.status == "booked")
        .where(Quote.created_at >= period[0], Quote.created_at < period[1])
    )
    async with db.session() as session:
        rows = (await session.execute(union_all(*parts))).all()
        quotes = (await session.execute(booked)).all()
    counted: dict[tuple[str, str, int], list[Any]] = {}
    for ordinal, kind, agent, count, computed in rows:
        counted[(str(kind), str(agent), int(ordinal))] = [int(count), computed]
    tz = ZoneInfo(zone)
    for agent, created in quotes:
        key = ("booked", str(agent), created.astimezone(tz).date().toordinal())
        counted.setdefault(key, [0, None])[0] += 1
    none = [0, None]
    return {
        (agent, day): [
            counted.get(("calls", agent, day.toordinal()), none)[0],
            *counted.get(("ended", agent, day.toordinal()), none),
            *counted.get(("ended", agent, day.toordinal() + 1), none),
            *counted.get(("open", agent, 0), none),
            counted.get(("booked", agent, day.toordinal()), none)[0],
        ]
        for agent in names
        for day in days
    }


async def _marks(
    db: Database, days: Sequence[date], agents: Sequence[str], zone: str, *, fresh: bool
) -> tuple[dict[tuple[str, date], list[Any]], bool]:
    """:func:`stamps`, reused for :data:`LIVE_TTL` seconds by a worker unless ``fresh``; and
    whether they were read just now."""
    key = (db.url, zone, tuple(agents), tuple(days))
    cached = _STAMPS.get(key)
    if not fresh and cached is not None and _time.monotonic() - cached[0] < LIVE_TTL:
        return cached[1], False
    marks = await stamps(db, days, agents, zone)
    now = _time.monotonic()
    for old in [k for k, (at, _) in _STAMPS.items() if now - at >= LIVE_TTL]:
        del _STAMPS[old]  # yesterday's periods are never asked for again
    _STAMPS[key] = (now, marks)
    return marks, True


async def _settle(
    db: Database, day: date, agent: str, zone: str, stamp: list[Any]
) -> dict[str, Any]:
    """Compute and store one settled day, marked with ``stamp`` (read before computing: what
    changes while it is computed changes the stamp, so the day is computed again)."""
    figures = await compute_day(db, day, agent, zone)
    figures["stamp"] = stamp
    await store_day(db, agent, day, figures)
    return figures


async def day_figures(
    db: Database,
    days: Sequence[date],
    agents: Sequence[str],
    agent: str | None,
    today: date,
    zone: str = "UTC",
) -> dict[date, dict[str, Any]]:
    """Each day's figures (days in ``zone``) for ``agent`` (None: all of ``agents``), stored
    days reused."""
    begin = await first_day(db, zone)
    out: dict[date, dict[str, Any]] = {}
    names = [agent] if agent is not None else list(agents)
    past = [d for d in days if settled(d, today) and begin is not None and d >= begin]
    have = await stored_days(db, past, names)
    marks, read = await _marks(db, past, names, zone, fresh=False)
    if not read and any(not _current(have.get(key), zone, marks[key]) for key in marks):
        # Read again before computing: reused stamps may be older than the stored rows.
        marks, _ = await _marks(db, past, names, zone, fresh=True)
    for day in days:
        if begin is None or day < begin:
            out[day] = empty()
        elif not settled(day, today):
            key = (db.url, agent, day, zone)
            cached = _LIVE.get(key)
            if cached is not None and _time.monotonic() - cached[0] < LIVE_TTL:
                out[day] = cached[1]
            else:
                out[day] = await compute_day(db, day, agent, zone)
                _LIVE[key] = (_time.monotonic(), out[day])
        else:
            parts = []
            for name in names:
                figures = have.get((name, day))
                stamp = marks[(name, day)]
                if figures is None or not _current(figures, zone, stamp):
                    figures = await _settle(db, day, name, zone, stamp)
                parts.append(figures)
            out[day] = merge(parts)
    return out


def empty() -> dict[str, Any]:
    return {**dict.fromkeys(_COUNTS, 0), "durations": {}, "first_words": {},
            "analysed": 0, "cost": 0.0, "currency": "", "outcomes": {}}  # fmt: skip


def merge(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total = empty()
    durations: Counter[str] = Counter()
    first_words: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for part in parts:
        for key in _COUNTS:
            total[key] += int(part.get(key, 0))
        durations.update(part.get("durations", {}))
        first_words.update(part.get("first_words", {}))
        outcomes.update(part.get("outcomes", {}))
        total["analysed"] += int(part.get("analysed", 0))
        total["cost"] += float(part.get("cost", 0.0))
        total["currency"] = total["currency"] or part.get("currency", "")
    total["durations"], total["first_words"] = dict(durations), dict(first_words)
    total["outcomes"] = dict(outcomes)
    return total


def quantile(histogram: dict[str, int], q: float, scale: float = 1.0) -> float | None:
    """The ``q`` quantile (0-1) of a bucket histogram by the nearest-rank method, as the
    bucket's middle when ``scale`` is given (durations: whole seconds, as stored)."""
    items = sorted((int(k), v) for k, v in histogram.items() if v)
    n = sum(v for _, v in items)
    if n == 0:
        return None
    rank = max(0, math.ceil(q * n) - 1)  # nearest rank
    seen = 0
    for bucket, count in items:
        seen += count
        if seen > rank:
            return (bucket + 0.5) * scale if scale != 1.0 else float(bucket)
    return float(items[-1][0]) * scale


def business_zone(agents: Any) -> str:
    """The business's time zone: the default agent's (the home page's days are its days)."""
    profile = agents.agents.get(agents.default_name)
    return str(profile.timezone) if profile is not None else "UTC"


async def warm(
    db: Database, agents: Sequence[str], *, days: int = WARM_DAYS, zone: str = "UTC"
) -> int:
    """Store the settled days (in ``zone``) of the last ``days`` that are missing, were stored
    for another zone or version, or changed since; how many were computed."""
    begin = await first_day(db, zone)
    if begin is None:
        return 0
    today = today_in(zone)
    wanted = [today - timedelta(days=n) for n in range(2, days)]
    wanted = [d for d in wanted if d >= begin]
    have = await stored_days(db, wanted, agents)
    marks = await stamps(db, wanted, agents, zone)
    computed = 0
    for day in wanted:
        for agent in agents:
            if _current(have.get((agent, day)), zone, marks[(agent, day)]):
                continue
            await _settle(db, day, agent, zone, marks[(agent, day)])
            computed += 1
            await asyncio.sleep(0)  # let calls run between days
    if computed:
        log.info("console_rollup_warmed", days=computed)
    return computed
