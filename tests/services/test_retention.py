"""Retention and privacy on real databases (a SQLite file and PostgreSQL): purge by age, delete
one call, mask numbers; and the ``relay sessions purge`` / ``relay sessions delete`` commands
over a SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from relay.cli.main import main
from relay.services import retention
from relay.storage.db import Database
from relay.storage.models import Booking, Call, Event, ParkedRecord, RelaySession, SideEffect, Turn
from relay.storage.outcomes import CallAnalysis, WebhookDelivery

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CALLER = "+61412345678"
LINE = "+61390001234"


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A fresh database, SQLite and PostgreSQL (``database_url`` runs each test on both)."""
    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def add_call(
    db: Database, call_sid: str, started: datetime, *, direction: str = "inbound", **extra: Any
) -> None:
    """A call as the recorder leaves it: the call, a session, two turns, frames, a model body.
    Inbound the caller calls the business's line; outbound the line calls the caller."""
    inbound = not direction.startswith("outbound")
    from_number, to_number = (CALLER, LINE) if inbound else (LINE, CALLER)
    setup = orjson.dumps(
        {"type": "setup", "callSid": call_sid, "from": from_number, "to": to_number,
         "direction": direction}
    )  # fmt: skip
    async with db.session() as session, session.begin():
        session.add(
            Call(
                call_sid=call_sid, agent="piano-removals", from_number=from_number,
                to_number=to_number, direction=direction, caller_name="Jo Citizen",
                status="completed",
                outcome="completed-by-agent", started_at=started,
                ended_at=started + timedelta(minutes=3), turns=2,
                handoff_data='{"summary": "Jo wants a piano moved"}', **extra,
            )
        )  # fmt: skip
        session.add(
            RelaySession(
                session_id="VX" + call_sid, call_sid=call_sid, agent="piano-removals",
                started_at=started, frames_in=3, frames_out=4,
            )
        )  # fmt: skip
        for seq, (role, content) in enumerate(
            [("user", "Hi, it's Jo."), ("assistant", f"I have your number as {CALLER}.")]
        ):
            session.add(
                Turn(
                    call_sid=call_sid, session_id="VX" + call_sid, seq=seq, role=role,
                    content=content, created_at=started + timedelta(seconds=seq),
                )
            )  # fmt: skip
        for seq, (kind, data) in enumerate(
            [
                ("frame_in", {"raw": setup.decode()}),
                (
                    "llm_request",
                    {"messages": [{"role": "system", "content": f"Caller ID: {CALLER}."}]},
                ),
            ],
            1,
        ):
            session.add(
                Event(
                    call_sid=call_sid, session_id="VX" + call_sid, seq=seq, t=float(seq),
                    at=started + timedelta(seconds=seq), kind=kind, data=data,
                )
            )  # fmt: skip
        session.add(
            SideEffect(
                key="book:" + call_sid, tool="book_move", call_sid=call_sid, status="done",
                result="{}", created_at=started,
            )
        )  # fmt: skip
        session.add(
            ParkedRecord(
                table_name="turns", call_sid=call_sid, record=f'{{"content": "{CALLER}"}}',
                error="too long", parked_at=started,
            )
        )  # fmt: skip
        session.add(
            CallAnalysis(
                call_sid=call_sid, agent="piano-removals", outcomes=["quoted"],
                fields={"callback": CALLER}, summary=f"Jo ({CALLER}) wants a piano moved.",
                usage={"gpt-4o-mini": {"prompt": 900}}, cost={"total": 0.01}, cost_total=0.01,
                computed_at=started,
            )
        )  # fmt: skip
        session.add(
            WebhookDelivery(
                call_sid=call_sid, agent="piano-removals", url="https://crm.example/hook",
                body=f'{{"from": "{CALLER}"}}', status="delivered", attempts=1,
                next_attempt_at=started, created_at=started, delivered_at=started,
            )
        )  # fmt: skip


async def count(db: Database, model: Any, call_sid: str) -> int:
    async with db.session() as session:
        result = await session.scalar(
            select(func.count()).select_from(model).where(model.call_sid == call_sid)
        )
    return int(result or 0)


async def test_purge_deletes_old_transcripts_events_and_bodies_and_keeps_the_aggregates(
    db: Database,
) -> None:
    await add_call(db, "CA-old", NOW - timedelta(days=40))
    await add_call(db, "CA-new", NOW - timedelta(days=2))

    report = await retention.purge(db, older_than_days=30, now=NOW)
    again = await retention.purge(db, older_than_days=30, now=NOW)

    assert report.rows == {
        "turns": 2, "events": 2, "parked_records": 1, "calls": 1, "call_analyses": 1,
        "webhook_outbox": 1,
    }  # fmt: skip
    assert again.total == 0  # idempotent: several workers may run it
    async with db.session() as session:
        analysis = await session.get(CallAnalysis, "CA-old")
    assert analysis is not None and (analysis.summary, analysis.fields) == (None, {})
    assert (analysis.outcomes, analysis.cost_total) == (["quoted"], 0.01)  # the aggregates stay
    assert await count(db, WebhookDelivery, "CA-old") == 0
    assert await count(db, WebhookDelivery, "CA-new") == 1
    for model in (Turn, Event, ParkedRecord):
        assert await count(db, model, "CA-old") == 0
        assert await count(db, model, "CA-new") > 0
    async with db.session() as session:
        old = await session.get(Call, "CA-old")
        new = await session.get(Call, "CA-new")
    assert old is not None and new is not None
    assert (old.agent, old.outcome, old.turns) == ("piano-removals", "completed-by-agent", 2)
    assert old.handoff_data is None  # the summary is transcript too
    assert new.handoff_data is not None
    assert await count(db, RelaySession, "CA-old") == 1


async def test_delete_call_removes_everything_about_one_call_only(db: Database) -> None:
    await add_call(db, "CA-gone", NOW - timedelta(days=1))
    await add_call(db, "CA-kept", NOW - timedelta(days=1))
    async with db.session() as session, session.begin():
        session.add(
            Booking(
                id="B1", agent="piano-removals", kind="move", phone=CALLER, call_sid="CA-gone",
                starts_at=NOW, ends_at=NOW + timedelta(hours=2), created_at=NOW, updated_at=NOW,
            )
        )  # fmt: skip

    report = await retention.delete_call(db, "CA-gone")

    assert report.rows == {
        "turns": 2, "events": 2, "sessions": 1, "side_effects": 1, "parked_records": 1,
        "call_analyses": 1, "webhook_outbox": 1, "calls": 1, "kept_bookings": 1,
    }  # fmt: skip
    assert await count(db, CallAnalysis, "CA-gone") == 0
    assert await count(db, CallAnalysis, "CA-kept") == 1
    for model in (Call, RelaySession, Turn, Event, SideEffect, ParkedRecord):
        assert await count(db, model, "CA-gone") == 0
        assert await count(db, model, "CA-kept") == 1 or model in (Turn, Event)
    assert await count(db, Turn, "CA-kept") == 2
    assert await count(db, Booking, "CA-gone") == 1  # the business's own record stays


async def test_mask_numbers_after_days_keeps_the_aggregates(db: Database) -> None:
    await add_call(db, "CA-old", NOW - timedelta(days=100))
    await add_call(db, "CA-new", NOW - timedelta(days=1))

    report = await retention.mask_numbers(db, older_than_days=90, now=NOW)
    again = await retention.mask_numbers(db, older_than_days=90, now=NOW)

    assert report.rows == {
        "calls": 1,
        "turns": 1,
        "events": 2,
        "parked_records": 1,
        "call_analyses": 2,
        "webhook_outbox": 1,
    }  # fmt: skip (call_analyses: its summary, then its fields)
    assert again.total == 0
    async with db.session() as session:
        analysis = await session.get(CallAnalysis, "CA-old")
        hook = (
            await session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.call_sid == "CA-old")
            )
        ).one()
    assert analysis is not None and analysis.summary == "Jo (+614xxxxxxxx) wants a piano moved."
    assert analysis.fields == {"callback": "+614xxxxxxxx"}
    assert hook.body == '{"from": "+614xxxxxxxx"}'
    async with db.session() as session:
        old = await session.get(Call, "CA-old")
        new = await session.get(Call, "CA-new")
        turns = (await session.scalars(select(Turn).where(Turn.call_sid == "CA-old"))).all()
        events = (await session.scalars(select(Event).where(Event.call_sid == "CA-old"))).all()
    assert old is not None and new is not None
    # The business's own line stays, as in redaction (README, "Redaction").
    assert (old.from_number, old.to_number, old.caller_name) == ("+614xxxxxxxx", LINE, "")
    assert (old.agent, old.outcome, old.turns) == ("piano-removals", "completed-by-agent", 2)
    assert old.started_at.replace(tzinfo=UTC) == NOW - timedelta(days=100)
    assert new.from_number == CALLER
    assert turns[1].content == "I have your number as +614xxxxxxxx."
    assert all(CALLER not in orjson.dumps(e.data).decode() for e in events)
    setup = orjson.loads(events[0].data["raw"])  # still valid JSON, numbers masked
    assert (setup["from"], setup["to"]) == ("+614xxxxxxxx", LINE)


async def test_mask_numbers_masks_the_callers_number_of_an_outbound_call_not_the_line(
    db: Database,
) -> None:
    """A reminder call (outbound): the caller is the ``to``; the business's line, its ``from``,
    stays wherever it is stored, so a masked recording still replays. A second run changes
    nothing, nor does a run over a call whose caller withheld the number."""
    await add_call(db, "CA-out", NOW - timedelta(days=100), direction="outbound-api")
    await add_call(db, "CA-in", NOW - timedelta(days=100), direction="")  # Twilio said nothing
    async with db.session() as session, session.begin():
        session.add(
            Call(
                call_sid="CA-withheld", agent="piano-removals", from_number="",
                to_number=LINE, direction="inbound", status="completed",
                started_at=NOW - timedelta(days=100),
            )
        )  # fmt: skip

    report = await retention.mask_numbers(db, older_than_days=90, now=NOW)
    again = await retention.mask_numbers(db, older_than_days=90, now=NOW)

    assert report.rows["calls"] == 2 and again.total == 0
    async with db.session() as session:
        out = await session.get(Call, "CA-out")
        inbound = await session.get(Call, "CA-in")
        withheld = await session.get(Call, "CA-withheld")
        events = (await session.scalars(select(Event).where(Event.call_sid == "CA-out"))).all()
    assert out is not None and inbound is not None and withheld is not None
    assert (out.from_number, out.to_number, out.caller_name) == (LINE, "+614xxxxxxxx", "")
    assert (inbound.from_number, inbound.to_number) == ("+614xxxxxxxx", LINE)
    assert (withheld.from_number, withheld.to_number) == ("", LINE)
    setup = orjson.loads(events[0].data["raw"])
    assert (setup["from"], setup["to"]) == (LINE, "+614xxxxxxxx")


async def test_mask_numbers_masks_the_callers_number_however_it_was_written(db: Database) -> None:
    """The caller said their own number (README, "Retention": masked wherever it remains):
    national, spaced, dashed, international with spaces, without the plus, dialled from abroad.
    Each form keeps as much as ``+614xxxxxxxx`` does. The business's line, said in the same
    words, stays; so does the caller's number in another call that is not old enough."""
    said = (
        "Call me back on 0412 345 678 or 0412345678 please, or 0412-345-678, +61 412 345 678, "
        "61412345678 or 0061 412 345 678. Your line is (03) 9000 1234, +61390001234."
    )
    masked = (
        "Call me back on 04xx xxx xxx or 04xxxxxxxx please, or 04xx-xxx-xxx, +61 4xx xxx xxx, "
        "614xxxxxxxx or 0061 4xx xxx xxx. Your line is (03) 9000 1234, +61390001234."
    )
    prompt = orjson.dumps({"type": "prompt", "voicePrompt": said, "last": True}).decode()
    for call_sid, days in (("CA-said", 100), ("CA-recent", 1)):
        started = NOW - timedelta(days=days)
        await add_call(db, call_sid, started)
        async with db.session() as session, session.begin():
            call = await session.get(Call, call_sid)
            assert call is not None
            call.handoff_data = orjson.dumps({"summary": said}).decode()
            session.add(
                Turn(
                    call_sid=call_sid, session_id="VX" + call_sid, seq=2, role="user",
                    content=said, created_at=started + timedelta(seconds=2),
                )
            )  # fmt: skip
            for seq, (kind, data) in enumerate(
                [
                    ("frame_in", {"raw": prompt}),
                    ("llm_request", {"messages": [{"role": "user", "content": said}]}),
                    ("llm_response", {"pieces": ["Noted: ", said], "complete": True}),
                ],
                3,
            ):
                session.add(
                    Event(
                        call_sid=call_sid, session_id="VX" + call_sid, seq=seq, t=float(seq),
                        at=started + timedelta(seconds=seq), kind=kind, data=data,
                    )
                )  # fmt: skip

    report = await retention.mask_numbers(db, older_than_days=90, now=NOW)
    again = await retention.mask_numbers(db, older_than_days=90, now=NOW)

    assert report.rows == {
        "calls": 1, "turns": 2, "events": 5, "parked_records": 1, "call_analyses": 2,
        "webhook_outbox": 1,
    }  # fmt: skip
    assert again.total == 0
    async with db.session() as session:
        call = await session.get(Call, "CA-said")
        recent = await session.get(Call, "CA-recent")
        turn = (
            await session.scalars(select(Turn).where(Turn.call_sid == "CA-said", Turn.seq == 2))
        ).one()
        events = (
            await session.scalars(
                select(Event).where(Event.call_sid == "CA-said").order_by(Event.seq)
            )
        ).all()
    assert call is not None and recent is not None
    assert call.from_number == "+614xxxxxxxx" and call.to_number == LINE
    assert orjson.loads(call.handoff_data or "") == {"summary": masked}
    assert turn.content == masked
    frame, request, response = (e.data for e in events[2:])
    assert orjson.loads(frame["raw"])["voicePrompt"] == masked
    assert request == {"messages": [{"role": "user", "content": masked}]}
    assert response == {"pieces": ["Noted: ", masked], "complete": True}
    assert orjson.loads(recent.handoff_data or "") == {"summary": said}  # not old enough


def test_mask_keeps_the_prefix() -> None:
    assert retention.mask("+61412345678") == "+614xxxxxxxx"
    assert retention.mask("+1") == "+1"


def test_cli_purge_and_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))

    async def seed() -> None:
        database = Database(url)
        await database.migrate()
        now = datetime.now(UTC)
        await add_call(database, "CA-ancient", now - timedelta(days=400))
        await add_call(database, "CA-recent", now - timedelta(days=1))
        await database.close()

    asyncio.run(seed())
    purged = main(["sessions", "purge", "--older-than", "365"])
    purge_out = capsys.readouterr().out
    deleted = main(["sessions", "delete", "CA-recent"])
    delete_out = capsys.readouterr().out
    missing = main(["sessions", "delete", "CA-nobody"])
    missing_out = capsys.readouterr().out

    async def remaining() -> tuple[int, int, int]:
        database = Database(url)
        try:
            return (
                await count(database, Turn, "CA-ancient"),
                await count(database, Call, "CA-ancient"),
                await count(database, Call, "CA-recent"),
            )
        finally:
            await database.close()

    assert purged == 0
    assert "turns: 2" in purge_out.splitlines() and "events: 2" in purge_out.splitlines()
    assert deleted == 0 and "calls: 1" in delete_out.splitlines()
    assert missing == 1 and "no call CA-nobody" in missing_out
    assert asyncio.run(remaining()) == (0, 1, 0)


async def test_the_daily_job_purges_and_masks_then_waits_for_the_next_day(db: Database) -> None:
    import asyncio

    await add_call(db, "CA-old", NOW - timedelta(days=40))
    job = asyncio.create_task(
        retention.run_daily(
            db, retention_days=30, mask_after_days=35, now=lambda: NOW, first_after=0.0
        )
    )
    try:
        async with asyncio.timeout(10):  # a limit, not an expectation
            while await count(db, Event, "CA-old"):  # noqa: ASYNC110 (the database's state)
                await asyncio.sleep(0.02)
            while True:
                async with db.session() as session:
                    old = await session.get(Call, "CA-old")
                if old is not None and old.from_number == "+614xxxxxxxx":
                    break
                await asyncio.sleep(0.02)
        assert not job.done()  # asleep until tomorrow
    finally:
        job.cancel()
    assert await count(db, Turn, "CA-old") == 0


def test_cli_purge_defaults_to_the_retention_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RELAY_RETENTION_DAYS", raising=False)
    refused = main(["sessions", "purge"])
    refused_err = capsys.readouterr().err
    monkeypatch.setenv("RELAY_RETENTION_DAYS", "90")
    purged = main(["sessions", "purge"])

    assert refused == 2 and "--older-than" in refused_err
    assert purged == 0
