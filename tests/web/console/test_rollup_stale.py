"""A stored day's figures follow what they were computed from: a call imported or deleted, an
analysis added or worked out again (``relay sessions analyze`` after a price change), a quote
booked days after it was given make the day's figures be computed again; nothing else does."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from relay.storage.console import ConsoleDaily
from relay.storage.db import Database
from relay.storage.models import Call, Quote, Turn
from relay.storage.outcomes import CallAnalysis, save_analysis
from relay.web.console import queries, rollup

pytestmark = pytest.mark.asyncio

AGENTS = ["car-service", "piano-removals"]
#: Noon, four days ago: a settled day (older than yesterday), stored once computed.
NOON = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=4)


async def add_call(db: Database, sid: str, started: datetime, *, seconds: float = 60) -> None:
    async with db.session() as session, session.begin():
        session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412345678",
                         started_at=started, ended_at=started + timedelta(seconds=seconds),
                         outcome="hung-up", status="completed", turns=3))  # fmt: skip


async def analyse(
    db: Database, sid: str, cost: float, *, outcomes: list[str] | None = None, ended: datetime
) -> None:
    """What the post-call pass and ``relay sessions analyze`` store: one upsert."""
    await save_analysis(db, {
        "call_sid": sid, "agent": "piano-removals", "ending": "hung-up",
        "outcomes": outcomes or ["quoted"], "fields": {}, "summary": None, "usage": {},
        "cost": {"total": cost}, "cost_total": cost, "currency": "USD", "ended_at": ended,
        "computed_at": datetime.now(UTC), "analysed_at": None, "analysis_error": None,
    })  # fmt: skip


async def week(db: Database) -> queries.Figures:
    """The home page's last 7 days, as a page after the stamps' few seconds would see them."""
    rollup._STAMPS.clear()
    rollup._LIVE.clear()
    return await queries.analytics(db, agent="", days=7, agents=AGENTS)


async def stored_at(db: Database) -> dict[tuple[str, date], Any]:
    async with db.session() as session:
        rows = await session.execute(select(ConsoleDaily.agent, ConsoleDaily.day,
                                            ConsoleDaily.computed_at))  # fmt: skip
        return {(a, d): at for a, d, at in rows.all()}


async def test_an_imported_call_and_a_repricing_show_on_a_stored_day(db: Database) -> None:
    """The tester's two cases: a call imported into a finished day, then ``analyze`` after the
    per-minute price doubled; the console agrees with ``relay sessions costs`` each time."""
    for n in range(3):
        await add_call(db, f"CA{n}", NOON + timedelta(minutes=n))
        await analyse(db, f"CA{n}", 0.10, ended=NOON + timedelta(minutes=n, seconds=60))
    first = await week(db)
    assert (first.calls, first.analysed, round(first.cost, 6)) == (3, 3, 0.30)
    assert (await stored_at(db)).keys() >= {("piano-removals", NOON.date())}

    await add_call(db, "CA9", NOON + timedelta(hours=2))  # relay sessions import
    imported = await week(db)
    assert (imported.calls, imported.analysed) == (4, 3)
    assert [n for _, n, _ in imported.per_day][2] == 4

    for n in (0, 1, 2, 9):  # relay sessions analyze --since ... (every call priced anew)
        started = NOON + (timedelta(hours=2) if n == 9 else timedelta(minutes=n))
        await analyse(db, f"CA{n}", 0.20, ended=started + timedelta(seconds=60))
    repriced = await week(db)
    assert (repriced.analysed, round(repriced.cost, 6)) == (4, 0.80)
    assert repriced.cost_per_call == pytest.approx(0.20)


async def test_a_deleted_call_and_a_late_analysis_show_on_a_stored_day(db: Database) -> None:
    await add_call(db, "CA1", NOON)
    await add_call(db, "CA2", NOON + timedelta(minutes=5))
    assert (await week(db)).calls == 2
    async with db.session() as session, session.begin():
        await session.execute(delete(Call).where(Call.call_sid == "CA1"))
    assert (await week(db)).calls == 1
    await analyse(db, "CA2", 0.05, outcomes=["quoted", "booked"], ended=NOON)  # a late pass
    late = await week(db)
    assert (late.analysed, late.booked_calls, late.outcomes) == (1, 1, {"quoted": 1, "booked": 1})


async def test_a_quote_booked_days_later_shows_on_the_day_it_was_given(db: Database) -> None:
    """Until 8 December the day's "quotes booked" stayed as first computed: a caller who rang
    back on Friday to book Monday's quote left Monday's conversion at 0 %."""
    await add_call(db, "CA1", NOON)
    async with db.session() as session, session.begin():
        for n in range(2):
            session.add(Quote(id=f"Q{n}", agent="piano-removals", call_sid="CA1", inputs={},
                              breakdown=[], total_cents=42000, currency="AUD",
                              created_at=NOON + timedelta(minutes=n)))  # fmt: skip
    given = await week(db)
    assert (given.quotes, given.quotes_booked) == (2, 0)
    at = await stored_at(db)

    async with db.session() as session, session.begin():  # booked on a later call
        await session.execute(update(Quote).where(Quote.id == "Q1").values(status="booked"))
    booked = await week(db)
    assert (booked.quotes, booked.quotes_booked) == (2, 1)
    assert booked.conversion == 0.5
    assert await stored_at(db) != at  # the stored day was computed again


async def test_a_call_that_ended_the_next_day_reprices_the_day_it_started(db: Database) -> None:
    """Figures count a call on the day it started; its analysis is found by when it ended."""
    started = NOON.replace(hour=23, minute=58)
    await add_call(db, "CA1", started, seconds=300)
    await analyse(db, "CA1", 0.10, ended=started + timedelta(seconds=300))
    assert round((await week(db)).cost, 6) == 0.10
    await analyse(db, "CA1", 0.30, ended=started + timedelta(seconds=300))
    assert round((await week(db)).cost, 6) == 0.30


async def test_an_unchanged_day_is_not_computed_again(db: Database) -> None:
    """Turns, events and an analysis's summary (what retention's purge removes) are not what
    a stored day is checked against: its figures stay as computed from the whole record."""
    await add_call(db, "CA1", NOON)
    await analyse(db, "CA1", 0.10, ended=NOON + timedelta(seconds=60))
    async with db.session() as session, session.begin():
        session.add(Turn(call_sid="CA1", session_id="VX1", seq=1, role="assistant", content="Hi",
                         llm_request_at=1.0, first_frame_ms=400.0, created_at=NOON))  # fmt: skip
    before = await week(db)
    at = await stored_at(db)
    async with db.session() as session, session.begin():  # what the purge does
        await session.execute(delete(Turn))
        await session.execute(update(CallAnalysis).values(summary=None, fields={}))
    after = await week(db)
    assert await stored_at(db) == at
    assert (after.first_word_p50, after.answered, after.cost) == (402.5, 1, before.cost)


async def test_the_stamps_are_read_once_for_every_day_of_a_page(db: Database) -> None:
    """Two statements for every stored day of a page, whatever the period (the counts, and
    the booked quotes given in the period); reused for a few seconds like today's figures,
    then read again."""
    for day in range(2, 30):
        await add_call(db, f"CA{day}", NOON - timedelta(days=day))
    await queries.analytics(db, agent="", days=30, agents=AGENTS)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await queries.analytics(db, agent="", days=30, agents=AGENTS)  # stamps reused
        reused = len(statements)
        rollup._STAMPS.clear()
        statements.clear()
        await queries.analytics(db, agent="", days=30, agents=AGENTS)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == reused + 2
