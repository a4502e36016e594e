"""The write-behind recorder: calls never wait for the database, and nothing handed over is lost.

Database failures are real ones: a table dropped under the running recorder, then put back.
A SQLAlchemy ``handle_error`` listener tells the test when a write has failed, so nothing here
waits on a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from relay.storage import repository
from relay.storage.db import Database
from relay.storage.models import Base, Call, Event, RelaySession, Turn
from relay.storage.recorder import Recorder

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def recorder(db: Database) -> AsyncIterator[Recorder]:
    rec = Recorder(db, interval=0.001, max_backoff=0.05)
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop(timeout=5)


class WriteFailures:
    """Counts failed statements on ``db`` and lets a test wait for the next one."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._failed = asyncio.Event()
        event.listen(db.engine.sync_engine, "handle_error", self._on_error)

    def _on_error(self, context: Any) -> None:
        self.count += 1
        self._loop.call_soon_threadsafe(self._failed.set)

    async def wait(self) -> None:
        await asyncio.wait_for(self._failed.wait(), 10.0)
        self._failed.clear()


def record_call(rec: Recorder, call_sid: str = "CA1") -> None:
    rec.call(
        call_sid=call_sid, agent="piano-removals", from_number="+61412345678", to_number="+61390001234",
        direction="inbound", caller_name="", status="in-progress", outcome=None, ended_at=None, started_at=NOW,
    )  # fmt: skip
    rec.session(
        session_id="VX" + call_sid,
        call_sid=call_sid,
        agent="piano-removals",
        started_at=NOW,
        resumed=False,
    )


def record_event(rec: Recorder, seq: int, call_sid: str = "CA1") -> None:
    rec.event(
        call_sid=call_sid,
        session_id="VX" + call_sid,
        seq=seq,
        t=float(seq),
        kind="frame_in",
        data={"raw": f"frame {seq}"},
    )


def record_turn(
    rec: Recorder, seq: int, content: str, call_sid: str = "CA1", **fields: Any
) -> None:
    role = "user" if seq % 2 else "assistant"
    rec.turn(
        call_sid=call_sid,
        session_id="VX" + call_sid,
        seq=seq,
        role=role,
        content=content,
        created_at=NOW,
        **fields,
    )


async def events_of(db: Database, call_sid: str = "CA1") -> list[tuple[int, str]]:
    return [(e.seq, e.data["raw"]) for e in await repository.call_events(db, call_sid)]


async def test_flush_waits_until_everything_handed_over_is_stored(
    db: Database, recorder: Recorder
) -> None:
    record_call(recorder)
    for seq in range(1, 51):
        record_event(recorder, seq)
    record_turn(recorder, 0, "Hello!")
    record_turn(recorder, 1, "Hi")
    assert recorder.pending > 0

    assert await recorder.flush()

    assert recorder.pending == 0
    assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 51)]
    call, turns = await repository.call_history(db, "CA1")
    assert call is not None and call.agent == "piano-removals"
    assert [(t.seq, t.role, t.content) for t in turns] == [
        (0, "assistant", "Hello!"),
        (1, "user", "Hi"),
    ]
    [session] = await repository.call_sessions(db, "CA1")
    assert session.session_id == "VXCA1"


async def test_flush_with_nothing_pending_returns_at_once(recorder: Recorder) -> None:
    assert recorder.pending == 0
    assert await recorder.flush(timeout=0)


async def test_later_updates_of_a_row_win(db: Database, recorder: Recorder) -> None:
    record_call(recorder)
    record_turn(recorder, 2, "")
    record_turn(recorder, 2, "Grand pianos are")
    record_turn(
        recorder, 2, "Grand pianos are the largest", spoken_text="Grand pianos are the largest"
    )
    recorder.update_call("CA1", outcome="transferred")
    assert await recorder.flush()

    record_turn(recorder, 2, "Grand pianos", heard_text="Grand pianos", interrupted=True)
    recorder.update_call("CA1", status="completed", ended_at=NOW)
    recorder.update_session("VXCA1", close_code=1000, frames_in=3, frames_out=9)
    assert await recorder.flush()

    call, [turn] = await repository.call_history(db, "CA1")
    assert (turn.content, turn.heard_text, turn.interrupted) == (
        "Grand pianos",
        "Grand pianos",
        True,
    )
    assert turn.spoken_text == "Grand pianos are the largest"  # untouched fields stay
    assert call is not None
    assert (call.status, call.outcome) == ("completed", "transferred")
    [session] = await repository.call_sessions(db, "CA1")
    assert (session.close_code, session.frames_in, session.frames_out) == (1000, 3, 9)


async def test_a_failing_database_is_retried_and_nothing_is_lost(
    db: Database, recorder: Recorder
) -> None:
    record_call(recorder)
    record_event(recorder, 1)
    assert await recorder.flush()
    failures = WriteFailures(db)

    # The database breaks under the running recorder.
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE events"))
    for seq in range(2, 12):
        record_event(recorder, seq)
    record_turn(recorder, 0, "Hello!")
    await failures.wait()
    # More records arrive while it keeps failing, including updates of rows already buffered.
    for seq in range(12, 20):
        record_event(recorder, seq)
    record_turn(recorder, 0, "Hello again!")
    record_turn(recorder, 1, "Hi")
    recorder.update_call("CA1", outcome="hung-up")
    await failures.wait()
    assert not await recorder.flush(timeout=0)
    assert recorder.pending > 0
    assert recorder.failures >= 1

    # It recovers: everything handed over is stored once, in order.
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.tables["events"].create)
    assert await recorder.flush(timeout=10)

    assert recorder.pending == 0
    assert await events_of(db) == [
        (seq, f"frame {seq}") for seq in range(2, 20)
    ]  # event 1 went with the old table
    call, turns = await repository.call_history(db, "CA1")
    assert [(t.seq, t.content) for t in turns] == [(0, "Hello again!"), (1, "Hi")]
    assert call is not None and call.outcome == "hung-up"


async def test_a_database_path_that_breaks_is_retried(tmp_path: Path) -> None:
    store = tmp_path / "store"
    db = Database(f"sqlite+aiosqlite:///{store / 'relay.db'}")
    await db.migrate()
    rec = Recorder(db, interval=0.001, max_backoff=0.05)
    await rec.start()
    try:
        record_call(rec)
        record_event(rec, 1)
        assert await rec.flush()
        failures = WriteFailures(db)

        # The database's directory disappears (a volume unmounted): no connection can open.
        await db.engine.dispose()
        store.rename(tmp_path / "away")
        store.write_text("not a directory")
        for seq in range(2, 8):
            record_event(rec, seq)
        record_turn(rec, 0, "Hello!")
        await failures.wait()
        await failures.wait()  # and it keeps trying
        assert rec.pending == 7

        # The volume comes back.
        store.unlink()
        (tmp_path / "away").rename(store)
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop(timeout=5)

    try:
        assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 8)]
        _, turns = await repository.call_history(db, "CA1")
        assert [t.content for t in turns] == ["Hello!"]
    finally:
        await db.close()


async def test_stop_flushes_everything(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    db = Database(url)
    await db.migrate()
    rec = Recorder(db, interval=0.001)
    await rec.start()
    record_call(rec)
    for seq in range(1, 101):
        record_event(rec, seq)
    record_turn(rec, 0, "Goodbye!")

    await rec.stop()
    await db.close()

    reopened = Database(url)
    try:
        assert await events_of(reopened) == [(seq, f"frame {seq}") for seq in range(1, 101)]
        _, turns = await repository.call_history(reopened, "CA1")
        assert [t.content for t in turns] == ["Goodbye!"]
    finally:
        await reopened.close()


async def test_stop_without_start_and_twice_is_harmless(db: Database) -> None:
    rec = Recorder(db)
    await rec.stop()
    await rec.start()
    await rec.stop()
    await rec.stop()


async def test_events_beyond_one_batch_are_all_written(db: Database) -> None:
    rec = Recorder(db, interval=0.001, batch_size=7)
    await rec.start()
    try:
        record_call(rec)
        for seq in range(1, 31):
            record_event(rec, seq)
        assert await rec.flush()
    finally:
        await rec.stop()

    assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 31)]


async def test_handing_records_over_never_waits(db: Database) -> None:
    rec = Recorder(db)  # not started: nothing is written, yet every call returns at once
    record_call(rec)
    for seq in range(1, 6):
        record_event(rec, seq)

    assert rec.pending == 7
    async with db.session() as session:
        assert (await session.scalars(select(Event))).all() == []
        assert (await session.scalars(select(Call))).all() == []
        assert (await session.scalars(select(RelaySession))).all() == []
        assert (await session.scalars(select(Turn))).all() == []
