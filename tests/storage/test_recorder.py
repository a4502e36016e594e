"""The write-behind recorder: calls never wait for the database, and nothing handed over is lost.

Database failures are real ones: a table dropped under the running recorder, then put back.
A SQLAlchemy ``handle_error`` listener tells the test when a write has failed, so nothing here
waits on a clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select, text

from relay.storage import repository
from relay.storage.db import Database
from relay.storage.models import Base, Call, Event, RelaySession, Turn
from relay.storage.recorder import Recorder

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


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


def test_a_busy_write_spaces_the_next_one_further() -> None:
    rec = Recorder(Database("sqlite+aiosqlite:///:memory:"))
    assert rec.gap(0) == rec.gap(49) == 0.05
    assert rec.gap(50) == rec.gap(2000) == 0.25


async def test_after_a_busy_write_records_gather_for_the_busy_interval(db: Database) -> None:
    """A write of ``busy_records`` records or more makes the next wait ``busy_interval``;
    a smaller one does not."""
    rec = Recorder(db, interval=0.001, busy_interval=600.0, busy_records=5)
    await rec.start()
    try:
        record_call(rec)  # 2 records (call and session)
        record_event(rec, 1)
        assert await rec.flush(timeout=10)  # 3 records: not busy
        record_event(rec, 2)
        assert await rec.flush(timeout=10)  # so this one is written at once
        for seq in range(3, 8):
            record_event(rec, seq)
        assert await rec.flush(timeout=10)  # 5 records: busy
        record_event(rec, 8)
        assert not await rec.flush(timeout=0.2)  # waits for the busy interval
        assert rec.pending == 1
        assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 8)]
    finally:
        await rec.stop(timeout=0.1)


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


class ShuttingDown(Exception):
    """What asyncpg's error looks like through SQLAlchemy when PostgreSQL is shutting down: a
    bare ``DBAPIError`` (not an ``OperationalError``), the connection not invalidated."""

    sqlstate = "57P03"


async def test_a_database_shutting_down_is_trouble_not_refused_rows(db: Database) -> None:
    """PostgreSQL stopping under live calls: its writes fail with SQLSTATE 57P03, which must
    keep the batch for a retry, not split it into "refused" rows that then fail to park too
    and are dropped (35 rows were, turns included, in a field test)."""
    from sqlalchemy.exc import DBAPIError

    failing = {"left": 6}

    def shutting_down(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if failing["left"] > 0:
            failing["left"] -= 1
            raise DBAPIError(statement, None, ShuttingDown("the database system is shutting down"))

    recorder = Recorder(db, interval=0.001, max_backoff=0.05)
    await recorder.start()
    try:
        event.listen(db.engine.sync_engine, "before_cursor_execute", shutting_down)
        record_call(recorder)
        for seq in range(1, 6):
            record_event(recorder, seq)
        record_turn(recorder, 0, "Hello!")
        assert await recorder.flush(timeout=30)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", shutting_down)
        await recorder.stop()

    assert failing["left"] == 0  # the writes did fail
    assert (recorder.lost, recorder.parked) == (0, 0)
    assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 6)]
    _, turns = await repository.call_history(db, "CA1")
    assert [(t.seq, t.content) for t in turns] == [(0, "Hello!")]


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


# == batching, cached statements, and the events' lean path =================================


async def add_trigger(db: Database, name: str, table: str, when: str, op: str = "INSERT") -> None:
    """A real failure inside the database: the statement aborts when ``when`` holds."""
    async with db.engine.begin() as conn:
        if db.is_sqlite:
            await conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {op} ON {table} WHEN {when} "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                )
            )
            return
        await conn.execute(
            text(
                f"CREATE FUNCTION {name}_fn() RETURNS trigger AS $$ BEGIN IF {when} THEN "
                "RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE {op} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}_fn()"
            )
        )


async def drop_trigger(db: Database, name: str, table: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER {name}" + ("" if db.is_sqlite else f" ON {table}")))


async def parked_rows(db: Database) -> list[tuple[str, str | None, dict[str, Any], str]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name, call_sid, record, error FROM parked_records ORDER BY id")
        )
        # (the standard library reads back a lone surrogate, which orjson refuses)
        return [(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]


async def test_rows_with_different_columns_go_in_one_transaction_of_few_statements(
    db: Database,
) -> None:
    rec = Recorder(db, interval=0.001)
    for n in range(40):  # nothing is written until the writer starts: one batch
        sid = f"CA{n}"
        record_call(rec, sid)
        record_turn(rec, 0, "Hello!", call_sid=sid, spoken_text="Hello!")
        record_turn(rec, 1, f"Question {n}", call_sid=sid, lang="en-AU", prompt_received_at=1.5)
        # Some turns carry extra fields (a tool call, timings), some not.
        if n % 2:
            record_turn(rec, 2, "", call_sid=sid, tool_calls=[{"id": f"t{n}", "type": "function"}])
        else:
            record_turn(rec, 2, f"Answer {n}", call_sid=sid, first_token_ms=12.5, retrieval=[])
        for seq in range(1, 6):
            record_event(rec, seq, call_sid=sid)
    await rec.start()
    try:
        assert await rec.flush()
    finally:
        await rec.stop()

    assert rec.batches == 1
    # calls, sessions, 4 column sets of turns, events: 7 statements for 200 rows and 200 events;
    # on SQLite 2 more put the turns into the search index (relay.storage.textsearch).
    assert rec.statements == (9 if db.is_sqlite else 7)
    for n in (0, 1, 39):
        sid = f"CA{n}"
        call, turns = await repository.call_history(db, sid)
        assert call is not None and call.agent == "piano-removals"
        assert [(t.seq, t.content, t.lang) for t in turns] == [
            (0, "Hello!", None), (1, f"Question {n}", "en-AU"), (2, "" if n % 2 else f"Answer {n}", None),
        ]  # fmt: skip
        assert turns[2].tool_calls == ([{"id": f"t{n}", "type": "function"}] if n % 2 else None)
        assert turns[2].first_token_ms == (None if n % 2 else 12.5)
        assert await events_of(db, sid) == [(seq, f"frame {seq}") for seq in range(1, 6)]


async def test_statements_are_built_once_and_reused(db: Database, recorder: Recorder) -> None:
    record_call(recorder)
    record_turn(recorder, 0, "Hello!")
    record_event(recorder, 1)
    assert await recorder.flush()
    built = dict(recorder._statements)

    for seq in range(1, 20):
        record_turn(recorder, seq, f"turn {seq}")
        record_event(recorder, seq + 1)
        recorder.update_call("CA1", turns=seq)
        assert await recorder.flush()

    assert recorder._statements.keys() - built.keys() == {
        ("update", Call, frozenset({"call_sid", "turns"}))
    }
    assert all(recorder._statements[key] is stmt for key, stmt in built.items())
    call, turns = await repository.call_history(db, "CA1")
    assert call is not None and call.turns == 19
    assert [t.content for t in turns] == ["Hello!"] + [f"turn {seq}" for seq in range(1, 20)]


async def test_partial_updates_of_rows_written_earlier_are_batched(
    db: Database, recorder: Recorder
) -> None:
    for n in range(30):
        record_call(recorder, f"CA{n}")
        record_turn(recorder, 0, "Hello!", call_sid=f"CA{n}")
    assert await recorder.flush()
    statements = recorder.statements

    # In one flush: partial updates with three different column sets, of rows stored earlier.
    for n in range(30):
        if n % 3 == 0:
            recorder.update_call(f"CA{n}", status="completed", ended_at=NOW, turns=1)
        elif n % 3 == 1:
            recorder.update_call(f"CA{n}", outcome="transferred")
        else:
            recorder.update_call(f"CA{n}", outcome="hung-up", status="ended")
        recorder.update_session(f"VXCA{n}", close_code=1000, frames_in=n, frames_out=2 * n)
    assert await recorder.flush()

    assert recorder.statements - statements == 4  # 3 column sets of calls, 1 of sessions
    for n in range(30):
        call = await repository.get_call(db, f"CA{n}")
        assert call is not None
        expected = {
            0: ("completed", None, 1),
            1: ("in-progress", "transferred", 0),
            2: ("ended", "hung-up", 0),
        }
        assert (call.status, call.outcome, call.turns) == expected[n % 3]
        assert (call.ended_at is not None) == (n % 3 == 0)
        assert call.agent == "piano-removals"  # untouched columns stay
        [session] = await repository.call_sessions(db, f"CA{n}")
        assert (session.close_code, session.frames_in, session.frames_out) == (1000, n, 2 * n)


async def test_a_row_the_database_refuses_is_parked_and_the_rest_lands(db: Database) -> None:
    rec = Recorder(db, interval=0.001, max_backoff=0.05)
    await rec.start()
    try:
        record_call(rec)
        record_turn(rec, 0, "Hello!")
        assert await rec.flush()
        # The database refuses event 1200 (of 1,500 in one batch) and one turn, every time.
        await add_trigger(db, "no_1200", "events", "NEW.seq = 1200")
        await add_trigger(db, "no_poison", "turns", "NEW.content = 'poison'")
        record_turn(rec, 1, "Hi")
        record_turn(rec, 0, "Hello, how can I help?")
        record_turn(rec, 2, "poison")
        rec.update_call("CA1", outcome="hung-up")
        for seq in range(1, 1501):
            record_event(rec, seq)
        assert await rec.flush(timeout=10)  # everything is stored or parked
        assert rec.pending == 0
        assert (rec.parked, rec.lost) == (2, 0)
        record_event(rec, 1501)  # and the recorder goes on
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop()

    assert await events_of(db) == [(seq, f"frame {seq}") for seq in range(1, 1502) if seq != 1200]
    call, turns = await repository.call_history(db, "CA1")
    assert [(t.seq, t.content) for t in turns] == [(0, "Hello, how can I help?"), (1, "Hi")]
    assert call is not None and call.outcome == "hung-up"
    parked = await parked_rows(db)
    assert [(table, sid) for table, sid, _, _ in parked] == [("turns", "CA1"), ("events", "CA1")]
    (_, _, turn, turn_error), (_, _, event, event_error) = parked
    assert (turn["seq"], turn["content"], turn["role"]) == (2, "poison", "assistant")
    assert (event["seq"], event["kind"], event["data"]) == (1200, "frame_in", {"raw": "frame 1200"})
    assert "injected failure" in turn_error and "injected failure" in event_error


async def test_text_a_database_cannot_store_is_parked_not_retried_forever(db: Database) -> None:
    rec = Recorder(db, interval=0.001, max_backoff=0.05)
    await rec.start()
    try:
        record_call(rec)
        record_turn(rec, 0, "Hello!")
        record_turn(rec, 1, "nul \x00 byte")  # stored as U+FFFD (PostgreSQL refuses NUL)
        record_turn(rec, 2, "lone \ud800 surrogate")  # not encodable as UTF-8 anywhere
        record_turn(rec, 3, "Bye!")
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop()

    _, turns = await repository.call_history(db, "CA1")
    stored = [t.seq for t in turns]
    parked = await parked_rows(db)
    assert rec.lost == 0 and rec.parked == len(parked)
    assert sorted(stored + [row["seq"] for _, _, row, _ in parked]) == [0, 1, 2, 3]
    assert {0, 1, 3} <= set(stored) and 2 not in stored  # the good ones always land


async def test_nul_characters_are_stored_as_replacement_characters_on_every_database(
    db: Database, recorder: Recorder
) -> None:
    # PostgreSQL's text cannot hold NUL (nor can its JSON operators read \u0000): every NUL
    # the recorder writes becomes U+FFFD, on SQLite too, so a row reads back the same on both.
    recorder.call(
        call_sid="CA1", agent="piano-removals", from_number="+61412345678", to_number="+61390001234",
        direction="inbound", caller_name="Bob\x00Null", status="in-progress", outcome=None,
        ended_at=None, started_at=NOW,
    )  # fmt: skip
    recorder.session(session_id="VX\x00CA1", call_sid="CA1", agent="piano-removals",
                     started_at=NOW, resumed=False)  # fmt: skip
    record_turn(recorder, 1, "nul\x00byte here", tool_calls=[{"name": "look\x00up", "n": 1}])
    recorder.update_call("CA1", outcome="hung\x00up")
    recorder.event(
        call_sid="CA1", session_id="VXCA1", seq=1, t=1.0, kind="frame\x00in",
        data={"raw": '{"type":"prompt","voicePrompt":"nul\\u0000byte"}', "k\x00": ["a\x00", 1],
              "nested": {"text": "x\x00y"}},
    )  # fmt: skip
    # The six characters \u0000 (not a NUL) are left alone.
    recorder.event(call_sid="CA1", session_id="VXCA1", seq=2, t=2.0, kind="frame_in",
                   data={"raw": "a\\u0000b"})  # fmt: skip
    assert await recorder.flush(timeout=10)

    assert (recorder.parked, recorder.lost) == (0, 0)
    call, [turn] = await repository.call_history(db, "CA1")
    assert call is not None
    assert (call.caller_name, call.outcome) == ("Bob\ufffdNull", "hung\ufffdup")
    assert (turn.content, turn.tool_calls) == (
        "nul\ufffdbyte here",
        [{"name": "look\ufffdup", "n": 1}],
    )
    first, second = await repository.call_events(db, "CA1")
    assert first.kind == "frame\ufffdin"
    assert first.data == {
        "raw": '{"type":"prompt","voicePrompt":"nul\\u0000byte"}',
        "k\ufffd": ["a\ufffd", 1],
        "nested": {"text": "x\ufffdy"},
    }
    assert second.data == {"raw": "a\\u0000b"}
    async with db.engine.connect() as conn:
        sessions = (await conn.execute(select(RelaySession.session_id))).scalars().all()
        # PostgreSQL's JSON operators read the stored data (they refuse \u0000)
        raws = (await conn.execute(select(Event.data["raw"].as_string()))).scalars().all()
    assert sessions == ["VX\ufffdCA1"]
    assert sorted(raws) == sorted(['{"type":"prompt","voicePrompt":"nul\\u0000byte"}', "a\\u0000b"])


async def test_a_value_too_long_for_its_column_never_loses_the_row(db: Database) -> None:
    rec = Recorder(db, interval=0.001)
    await rec.start()
    try:
        record_call(rec)
        rec.update_call("CA1", outcome="x" * 500, caller_name="N" * 1000)
        record_turn(rec, 0, "Hello!", tool_name="t" * 300)
        rec.event(call_sid="CA1", session_id="VXCA1", seq=1, t=1.0, kind="k" * 100, data={})
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop()

    assert rec.parked == 0
    call, [turn] = await repository.call_history(db, "CA1")
    [event] = await repository.call_events(db, "CA1")
    assert call is not None
    if db.is_sqlite:  # SQLite does not enforce lengths: stored whole
        assert (len(call.outcome or ""), len(turn.tool_name or ""), len(event.kind)) == (
            500,
            300,
            100,
        )
    else:  # cut to the column, marked
        assert call.outcome == "x" * 63 + "…" and call.caller_name == "N" * 127 + "…"
        assert turn.tool_name == "t" * 63 + "…" and event.kind == "k" * 31 + "…"


async def test_a_failing_table_keeps_newer_updates_that_arrive_while_it_retries(
    db: Database,
) -> None:
    rec = Recorder(db, interval=0.001, max_backoff=0.05)
    await rec.start()
    try:
        record_call(rec)
        record_turn(rec, 0, "Hello!")
        record_turn(rec, 1, "Hi")
        assert await rec.flush()
        failures = WriteFailures(db)
        # The turns table is gone (a database in trouble, not a bad row): retried until back.
        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE turns RENAME TO turns_away"))

        record_turn(rec, 1, "Hi", interrupted=True)
        record_turn(rec, 2, "Sure", spoken_text="Sure")
        rec.update_call("CA1", status="completed")
        record_event(rec, 1)
        await failures.wait()
        # Newer values for the same rows, one of them partial, while the batch is failing.
        record_turn(rec, 1, "Hi there", heard_text="Hi there")
        rec.update_call("CA1", outcome="hung-up")
        record_turn(rec, 2, "Sure thing", spoken_text="Sure thing")
        await failures.wait()
        assert rec.pending > 0 and rec.parked == 0

        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE turns_away RENAME TO turns"))
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop()

    assert rec.parked == 0
    call, turns = await repository.call_history(db, "CA1")
    assert [(t.seq, t.content, t.interrupted, t.heard_text) for t in turns] == [
        (0, "Hello!", False, None),
        (1, "Hi there", True, "Hi there"),  # the failed update's other fields are kept
        (2, "Sure thing", False, None),
    ]
    assert call is not None and (call.status, call.outcome) == ("completed", "hung-up")
    assert await events_of(db) == [(1, "frame 1")]


async def test_the_backlog_is_bounded_by_dropping_the_oldest_events_never_turns(
    db: Database,
) -> None:
    rec = Recorder(db, max_events=100)  # not started: as if the database were down
    record_call(rec)
    for seq in range(1, 1001):
        record_event(rec, seq)
        record_turn(rec, seq, f"turn {seq}")
    assert len(rec._events) <= 100
    assert rec.dropped_events == 1000 - len(rec._events)
    await rec.start()
    try:
        assert await rec.flush(timeout=10)
    finally:
        await rec.stop()
    stored = await events_of(db)
    assert stored == [(seq, f"frame {seq}") for seq in range(1001 - len(stored), 1001)]
    _, turns = await repository.call_history(db, "CA1")
    assert len(turns) == 1000  # never dropped


async def test_a_flush_waits_at_most_its_deadline(db: Database) -> None:
    rec = Recorder(db, flush_timeout=0.05)  # not started: nothing will be written
    record_call(rec)
    assert await rec.flush() is False  # the default deadline, not 30 s


async def test_odd_values_in_event_data_never_block_the_recorder(
    db: Database, recorder: Recorder
) -> None:
    from decimal import Decimal

    record_call(recorder)
    odd = {"raw": "x", "price": Decimal("12.50"), "tags": {"a"}, 7: "int key", "huge": 2**70}
    recorder.event(call_sid="CA1", session_id="VXCA1", seq=1, t=1.0, kind="tool_result", data=odd)
    record_event(recorder, 2)
    assert await recorder.flush(timeout=5)

    first, second = await repository.call_events(db, "CA1")
    assert first.data["raw"] == "x" and first.data["price"] == "12.50"
    assert first.data["7"] == "int key" and first.data["huge"] == float(2**70)
    assert second.data == {"raw": "frame 2"}
    assert first.at.replace(tzinfo=UTC) <= datetime.now(UTC)


# == llm_request bodies: the first in full, then deltas ======================================


def _body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "stream": True, **fields}


async def test_llm_requests_are_stored_as_deltas_and_read_back_whole(
    db: Database, recorder: Recorder
) -> None:
    from relay.storage.requests import RequestLog

    record_call(recorder)
    log = RequestLog()
    history: list[dict[str, Any]] = [{"role": "assistant", "content": "Hello!"}]
    sent: list[dict[str, Any]] = []
    seq = 0

    def request(system: str, **fields: Any) -> None:
        nonlocal seq
        body = _body([{"role": "system", "content": system}, *history], **fields)
        seq += 1
        data = log.record(body)
        recorder.event(
            call_sid="CA1", session_id="VXCA1", seq=seq, t=float(seq), kind="llm_request", data=data
        )
        log.stored(seq)
        sent.append(orjson.loads(orjson.dumps(body)))  # what it was when sent
        record_event(recorder, seq := seq + 1)

    tools = [{"type": "function", "function": {"name": "quote"}}]
    history.append({"role": "user", "content": "A quote please"})
    request("at 9:30", tools=tools, temperature=0.3)
    history.append({"role": "assistant", "content": "", "tool_calls": [{"id": "t1"}]})
    history.append({"role": "tool", "content": "$400", "tool_call_id": "t1"})
    request("at 9:30", tools=tools, temperature=0.3)  # a tool round
    history.append({"role": "assistant", "content": "It is four hundred dollars"})
    history[-1]["content"] = "It is four"  # interrupted: cut to what was heard
    history.append({"role": "user", "content": "Too much"})
    request("at 9:31")  # the final round: no tools; a new system line
    history[2]["content"] = "Edited"  # an earlier message changed
    history.append({"role": "user", "content": "Hello?"})
    request("at 9:31", temperature=0.5)
    assert await recorder.flush()

    rows = await repository.call_events(db, "CA1")
    assert [e.data["body"] for e in rows if e.kind == "llm_request"] == sent
    assert [list(e.data["body"]) for e in rows if e.kind == "llm_request"] == [
        list(b) for b in sent
    ]
    # Stored: the first in full, then only what changed.
    async with db.session() as session:
        stored = [
            e.data
            for e in (await session.scalars(select(Event).order_by(Event.id))).all()
            if e.kind == "llm_request"
        ]
    assert "body" in stored[0] and all("delta" in d for d in stored[1:])
    second = stored[1]["delta"]
    assert second["base"] == 1 and "body" not in second and "keys" not in second
    assert second["messages"] == [[0, 3], sent[1]["messages"][3], sent[1]["messages"][4]]
    third = stored[2]["delta"]
    assert "body" not in third and third["keys"] == ["model", "messages", "stream"]
    assert third["messages"] == [
        {"role": "system", "content": "at 9:31"},
        [1, 5],
        *sent[2]["messages"][5:],
    ]
    fourth = stored[3]["delta"]
    assert fourth["body"] == {"temperature": 0.5}
    assert fourth["messages"] == [[0, 3], sent[3]["messages"][3], [4, 7], sent[3]["messages"][7]]
    # the recording export sees whole bodies too
    from relay.recordings.format import load_call

    exported = await load_call(db, "CA1")
    assert [e["data"]["body"] for e in exported.events if e["kind"] == "llm_request"] == sent


def test_a_delta_whose_base_is_missing_is_left_alone() -> None:
    from relay.storage.requests import RequestLog, expand_requests

    log = RequestLog()
    first = log.record(_body([{"role": "user", "content": "a"}]))
    log.stored(1)
    second = log.record(_body([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
    log.stored(2)
    events = [
        {"session_id": "S", "seq": 2, "kind": "llm_request", "data": second},  # base 1 lost
        {"session_id": "T", "seq": 1, "kind": "llm_request", "data": first},  # another session
        {"session_id": "T", "seq": 2, "kind": "llm_request", "data": second},
    ]
    expand_requests(events)
    assert "delta" in events[0]["data"] and "body" not in events[0]["data"]
    assert events[2]["data"] == {
        "body": _body([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    }


def test_request_deltas_rebuild_every_body_whatever_changes() -> None:
    """Random edits between requests (new, changed, dropped and reordered messages, other
    fields) always read back as the bodies that were sent."""
    import random

    from relay.storage.requests import RequestLog, expand_requests

    rng = random.Random(7)
    for _ in range(30):
        log = RequestLog()
        messages: list[dict[str, Any]] = [{"role": "user", "content": "0"}]
        events: list[dict[str, Any]] = []
        sent: list[bytes] = []
        for seq in range(1, 25):
            for _ in range(rng.randrange(4)):
                edit = rng.randrange(5)
                if edit == 0:
                    messages.append(
                        {"role": rng.choice(("user", "assistant")), "content": str(seq)}
                    )
                elif edit == 1 and messages:
                    rng.choice(messages)["content"] += "!"  # edited in place, as history is
                elif edit == 2 and messages:
                    del messages[rng.randrange(len(messages))]
                elif edit == 3 and len(messages) > 1:
                    a, b = rng.sample(range(len(messages)), 2)
                    messages[a], messages[b] = messages[b], messages[a]
                else:
                    messages.insert(0, {"role": "system", "content": f"now {seq}"})
            body: dict[str, Any] = {"model": rng.choice(("a", "b")), "messages": list(messages)}
            if rng.random() < 0.5:
                body["tools"] = [{"name": "t"}]
            body["stream"] = True
            data = log.record(body)
            log.stored(seq)
            sent.append(orjson.dumps(body))
            events.append(
                {
                    "session_id": "S",
                    "seq": seq,
                    "kind": "llm_request",
                    "data": orjson.loads(orjson.dumps(data)),
                }
            )
        expand_requests(events)
        assert [orjson.dumps(e["data"]["body"]) for e in events] == sent


def test_event_times_are_stored_as_sqlalchemy_stores_them_on_sqlite() -> None:
    from datetime import timedelta

    from sqlalchemy.dialects.sqlite import aiosqlite

    from relay.storage.recorder import sqlite_datetime

    dialect = aiosqlite.dialect()
    column = Base.metadata.tables["events"].c.at
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    for value in (NOW, NOW + timedelta(microseconds=7), datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)):
        assert sqlite_datetime(value) == process(value)
