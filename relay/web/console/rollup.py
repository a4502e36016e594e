"""The home page's figures from daily rollups, so a quarter of 100,000 calls renders fast.

Days are the business's days: midnight to midnight in one time zone (the default agent's, see
``relay.web.console.views.home``), so an owner in Melbourne finds this morning's calls under
today. A finished day (older than yesterday) never changes, so its figures are computed once
per agent and stored in ``console_daily`` (shared by every worker), marked with the zone and
:data:`VERSION` they were computed for (a row of another zone or version is computed again);
today and yesterday are always computed live. Durations and prompt-to-first-word times are
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
from sqlalchemy import Integer, Text, and_, case, cast, func, select

from relay.storage.console import ConsoleDaily
from relay.storage.db import Database
from relay.storage.models import Booking, Call, Quote, Ticket, Turn
from relay.storage.outcomes import CallAnalysis

log = structlog.get_logger("relay.web.console.rollup")

FIRST_WORD_BUCKET = 5.0  # ms
#: What a stored day's figures hold: 2 added ``booked_calls`` (and the zone), so rows stored
#: before are computed again.
VERSION = 2
#: Seconds today's and yesterday's figures are reused by a worker before being recomputed.
LIVE_TTL = 30.0
_LIVE: dict[tuple[str, str | None, date, str], tuple[float, dict[str, Any]]] = {}
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
                    _count_if(Call.turns > 1),
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


def _current(figures: dict[str, Any] | None, zone: str) -> bool:
    """A stored day's figures were computed for ``zone`` by this version of the rollup (rows
    of an older relay hold UTC days)."""
    return (
        figures is not None
        and figures.get("zone", "UTC") == zone
        and figures.get("version", 1) == VERSION
    )


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
                if figures is None or not _current(figures, zone):
                    figures = await compute_day(db, day, name, zone)
                    await store_day(db, name, day, figures)
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
    """Store the settled days (in ``zone``) of the last ``days`` that are missing or were
    stored for another zone or version; how many were computed."""
    begin = await first_day(db, zone)
    if begin is None:
        return 0
    today = today_in(zone)
    wanted = [today - timedelta(days=n) for n in range(2, days)]
    wanted = [d for d in wanted if d >= begin]
    have = await stored_days(db, wanted, agents)
    computed = 0
    for day in wanted:
        for agent in agents:
            if _current(have.get((agent, day)), zone):
                continue
            await store_day(db, agent, day, await compute_day(db, day, agent, zone))
            computed += 1
            await asyncio.sleep(0)  # let calls run between days
    if computed:
        log.info("console_rollup_warmed", days=computed)
    return computed
