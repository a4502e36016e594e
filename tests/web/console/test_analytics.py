"""The home page's figures: daily rollups stored once for settled days, merged exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from relay.services.costs import summarise
from relay.storage.console import ConsoleDaily
from relay.storage.db import Database
from relay.storage.models import Booking, Call, Quote, Ticket, Turn
from relay.storage.outcomes import CallAnalysis
from relay.web.console import charts, queries, rollup

pytestmark = pytest.mark.asyncio


async def add_call(
    db: Database,
    sid: str,
    started: datetime,
    *,
    agent: str = "piano-removals",
    seconds: float = 60,
    outcome: str = "hung-up",
    first_ms: list[float] | None = None,
    error: str | None = None,
) -> None:
    async with db.session() as session, session.begin():
        session.add(Call(call_sid=sid, agent=agent, from_number="+61412345678", started_at=started,
                         ended_at=started + timedelta(seconds=seconds), outcome=outcome,
                         status="completed", turns=3))  # fmt: skip
        for seq, ms in enumerate(first_ms or []):
            session.add(Turn(call_sid=sid, session_id="VX" + sid, seq=seq, role="assistant",
                             content="hi", first_frame_ms=ms, error=error if seq == 0 else None,
                             llm_request_at=1.0, created_at=started))  # fmt: skip


async def test_figures_add_up_across_stored_and_live_days(db: Database) -> None:
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    old = now - timedelta(days=4)
    await add_call(db, "CA1", old, seconds=30, first_ms=[400.0, 500.0])
    await add_call(db, "CA2", old, seconds=90, outcome="transferred", first_ms=[700.0],
                   error="the model timed out")  # fmt: skip
    await add_call(db, "CA3", old, agent="car-service", seconds=50, first_ms=[300.0])
    await add_call(db, "CA4", now, seconds=200, first_ms=[900.0], error="internal error: boom")
    async with db.session() as session, session.begin():
        session.add(Ticket(agent="piano-removals", name="A", phone="+61412000111", reason="x",
                           status="open", created_at=old))  # fmt: skip
        for qid, status in (("Q1", "booked"), ("Q2", "quoted"), ("Q3", "quoted"), ("Q4", "quoted")):
            session.add(Quote(id=qid, agent="piano-removals", inputs={}, breakdown=[],
                              total_cents=1, currency="AUD", status=status, created_at=old))  # fmt: skip

    agents = ["car-service", "piano-removals"]
    figures = await queries.analytics(db, agent="", days=7, agents=agents)
    # CA2's and CA4's only reply was an apology: the model never answered them.
    assert (figures.calls, figures.transferred, figures.answered) == (4, 1, 2)
    assert (figures.messages, figures.quotes, figures.quotes_booked) == (1, 4, 1)
    assert figures.conversion == 0.25
    assert (figures.apologies, figures.model_failures) == (2, 1)
    assert figures.median_seconds == 50.0  # 30, 50, 90, 200 seconds: the lower middle
    # 300, 400, 500, 700, 900 ms in 5 ms buckets, reported as the bucket's middle.
    assert figures.first_word_p50 == 502.5
    assert figures.first_word_p95 == 902.5
    assert [n for _, n, _ in figures.per_day] == [0, 0, 3, 0, 0, 0, 1]

    async with db.session() as session:
        stored = (await session.execute(select(ConsoleDaily.agent, ConsoleDaily.day))).all()
    # Settled days since the first call are stored (not today or yesterday), per agent.
    settled = [old.date() + timedelta(days=n) for n in range(3)]
    assert {(a, d) for a, d in stored} == {(a, d) for a in agents for d in settled}

    piano = await queries.analytics(db, agent="piano-removals", days=7, agents=agents)
    assert (piano.calls, piano.transferred) == (3, 1)

    # A stored day is not computed again while what it holds is unchanged...
    assert await rollup.warm(db, agents) == 0
    # ...and is once a call is deleted behind its back (tests/web/console/test_rollup_stale.py).
    async with db.session() as session, session.begin():
        await session.execute(Call.__table__.delete().where(Call.call_sid == "CA1"))
    assert await rollup.warm(db, agents) == 1
    rollup._STAMPS.clear()  # the stamps are reused for a few seconds
    assert (await queries.analytics(db, agent="", days=7, agents=agents)).calls == 3
    # The warm-up computes a missing day.
    async with db.session() as session, session.begin():
        await session.execute(ConsoleDaily.__table__.delete())
    assert await rollup.warm(db, agents) == 6
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(ConsoleDaily)) == 6


async def test_an_empty_database_computes_nothing(db: Database) -> None:
    assert await rollup.warm(db, ["piano-removals"]) == 0
    figures = await queries.analytics(db, agent="", days=91, agents=["piano-removals"])
    assert figures.calls == 0 and figures.median_seconds is None
    assert len(figures.per_day) == 91


async def test_charts_are_labelled_svg() -> None:
    svg = charts.bars([("2026-12-01", 3.0), ("2026-12-02", None)], title="Calls per day")
    assert svg.startswith('<svg class="chart"') and 'aria-label="Calls per day"' in svg
    assert "<title>2026-12-01: 3</title>" in svg and svg.count("<rect") == 1


MELBOURNE = "Australia/Melbourne"


async def test_days_are_the_business_s_days(db: Database) -> None:
    """An owner in Melbourne finds this morning's calls under today: the days run midnight to
    midnight in the business's zone, not in UTC (where this morning is still yesterday)."""
    mel = ZoneInfo(MELBOURNE)
    now = datetime(2030, 12, 9, 8, 0, tzinfo=mel)  # 2030-12-08 21:00 UTC

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2030, 12, day, hour, minute, tzinfo=mel).astimezone(UTC)

    await add_call(db, "CA1", at(9, 7))  # this morning: 2030-12-08 20:00 UTC
    await add_call(db, "CA2", at(8, 23, 30))  # last night
    await add_call(db, "CA3", at(6, 0, 30))  # a settled day: 2030-12-05 13:30 UTC
    agents = ["piano-removals"]

    today = await queries.analytics(db, agent="", days=1, agents=agents, zone=MELBOURNE, now=now)
    assert (today.calls, today.zone, today.per_day) == (1, MELBOURNE, [("2030-12-09", 1, 0)])
    week = await queries.analytics(db, agent="", days=7, agents=agents, zone=MELBOURNE, now=now)
    assert [(d, n) for d, n, _ in week.per_day][-4:] == [
        ("2030-12-06", 1), ("2030-12-07", 0), ("2030-12-08", 1), ("2030-12-09", 1)
    ]  # fmt: skip
    async with db.session() as session:
        stored = await session.get(ConsoleDaily, ("piano-removals", date(2030, 12, 6)))
    assert stored is not None and stored.figures["calls"] == 1
    assert (stored.figures["zone"], stored.figures["version"]) == (MELBOURNE, rollup.VERSION)

    # A day an older relay stored (a UTC day, unmarked) is computed again for the zone.
    async with db.session() as session, session.begin():
        await session.execute(ConsoleDaily.__table__.delete())
        session.add(ConsoleDaily(agent="piano-removals", day=date(2030, 12, 6),
                                 figures={**rollup.empty(), "calls": 5},
                                 computed_at=now))  # fmt: skip
    again = await queries.analytics(db, agent="", days=7, agents=agents, zone=MELBOURNE, now=now)
    assert [n for _, n, _ in again.per_day] == [0, 0, 0, 1, 0, 1, 1]


async def add_analysis(db: Database, sid: str, outcomes: list[str], cost: float) -> None:
    async with db.session() as session, session.begin():
        session.add(CallAnalysis(call_sid=sid, agent="piano-removals", outcomes=outcomes,
                                 fields={}, usage={}, cost={}, cost_total=cost, currency="AUD",
                                 computed_at=datetime.now(UTC)))  # fmt: skip


async def test_cost_per_booking_is_the_cli_s(db: Database) -> None:
    """As ``relay sessions costs`` has it: the analysed calls' cost over the analysed calls
    that booked; not over every Booking row (demo data, cancelled ones, bookings no call
    made)."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    now -= min(timedelta(minutes=5), (now - midnight) / 2)  # today still, also at 00:03
    for sid, outcomes, cost in (("CA1", ["quoted", "booked"], 0.30), ("CA2", ["message"], 0.10)):
        await add_call(db, sid, now)
        await add_analysis(db, sid, outcomes, cost)
    async with db.session() as session, session.begin():
        for ref, status in (("100001", "booked"), ("100002", "cancelled"), ("100003", "booked")):
            session.add(Booking(id=ref, agent="piano-removals", kind="move", phone="+61412000001",
                                name="Demo", starts_at=now + timedelta(days=3),
                                ends_at=now + timedelta(days=3, hours=4), status=status,
                                created_at=now, updated_at=now))  # fmt: skip
    figures = await queries.analytics(db, agent="", days=1, agents=["piano-removals"])
    rows = [
        {"agent": "piano-removals", "outcomes": ["quoted", "booked"], "cost": {"total": 0.30}},
        {"agent": "piano-removals", "outcomes": ["message"], "cost": {"total": 0.10}},
    ]
    assert figures.bookings == 3 and figures.booked_calls == 1
    assert figures.cost_per_booking == pytest.approx(summarise(rows)["per_booking"])
    assert figures.cost_per_booking == pytest.approx(0.40)

    await add_call(db, "CA3", now)
    await add_analysis(db, "CA3", ["message"], 0.2)
    async with db.session() as session, session.begin():
        await session.execute(CallAnalysis.__table__.delete().where(CallAnalysis.call_sid == "CA1"))
    rollup._LIVE.clear()  # today's figures are reused for a few seconds
    none = await queries.analytics(db, agent="", days=1, agents=["piano-removals"])
    assert (none.analysed, none.booked_calls, none.cost_per_booking) == (2, 0, None)


async def test_the_home_page_counts_in_words() -> None:
    from relay.web.console.render import env

    def home(figures: queries.Figures) -> str:
        return env.get_template("home.html").render(
            request=None, session=None, figures=figures, agents=[], agent="", period="day",
            periods=[("day", 1), ("week", 7)], calls_chart="", latency_chart="",
        )  # fmt: skip

    one = queries.Figures(analysed=1, cost=0.5, currency="AUD", outcomes={"booked": 1},
                          booked_calls=1)  # fmt: skip
    assert "Outcomes (1 call analysed, 0.50 AUD in all)" in home(one)
    assert '<dd id="fig-cost-per-booking">0.50 AUD</dd>' in home(one)
    two = queries.Figures(analysed=2, cost=0.5, currency="AUD", outcomes={"message": 2})
    assert "Outcomes (2 calls analysed, 0.50 AUD in all)" in home(two)
    assert '<dd id="fig-cost-per-booking">no bookings</dd>' in home(two)
