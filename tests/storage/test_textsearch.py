"""The transcript search index on SQLite, filled in batches (migration 0006,
``relay.storage.textsearch``): what the recorder stores is searchable once stored, changed and
deleted turns leave the index, rows written by anything else are found by the console's search,
and FTS5's own check against the turns table passes after every kind of write."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.storage.db import Database, alembic_config
from relay.storage.recorder import Recorder
from relay.storage.textsearch import PENDING_TABLE, index_pending
from relay.web.console import queries
from tests.storage.test_recorder import record_call, record_turn


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def matching(db: Database, phrase: str) -> list[int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT rowid FROM turns_fts WHERE turns_fts MATCH :p ORDER BY rowid"),
            {"p": f'"{phrase}"'},
        )
        return [row[0] for row in rows]


async def turn_id(db: Database, call_sid: str, seq: int) -> int:
    async with db.engine.connect() as conn:
        query = text("SELECT id FROM turns WHERE call_sid = :c AND seq = :s")
        return int((await conn.execute(query, {"c": call_sid, "s": seq})).scalar_one())


async def pending_count(conn: AsyncConnection) -> int:
    """How many turn rows wait to be indexed."""
    return int((await conn.execute(text(f"SELECT count(*) FROM {PENDING_TABLE}"))).scalar_one())


async def pending(db: Database) -> int:
    async with db.engine.connect() as conn:
        return await pending_count(conn)


async def check_index(db: Database) -> None:
    """FTS5's integrity check, comparing the index with the turns table itself (rank 1)."""
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO turns_fts(turns_fts, rank) VALUES ('integrity-check', 1)"
        )


async def test_what_the_recorder_stores_is_searchable_once_stored(db: Database) -> None:
    rec = Recorder(db, interval=0.001)
    await rec.start()
    try:
        record_call(rec, "CA1")
        record_turn(rec, 0, "Hello, piano removals.")
        record_turn(rec, 1, "How much to move an upright piano?")
        assert await rec.flush()
        first = [await turn_id(db, "CA1", seq) for seq in (0, 1)]
        assert await matching(db, "upright piano") == [first[1]]
        assert await matching(db, "piano") == first
        assert await pending(db) == 0  # indexed in the recorder's own transaction

        # the same turn again with other words (an apology appended): old words leave
        record_turn(rec, 1, "How much to move a grand?")
        assert await rec.flush()
        assert await matching(db, "upright piano") == []
        assert await matching(db, "move a grand") == [first[1]]
        assert await pending(db) == 0
    finally:
        await rec.stop()
    await check_index(db)


async def test_changed_deleted_and_queued_rows_keep_the_index_true(db: Database) -> None:
    now = datetime.now(UTC).isoformat(sep=" ")
    insert = text(
        "INSERT INTO turns (call_sid, session_id, seq, role, content, interrupted, superseded, "
        "created_at) VALUES ('CA1', 'VX1', :seq, 'user', :content, 0, 0, :now)"
    )
    async with db.engine.begin() as conn:
        for seq, content in enumerate(["alpha one", "bravo two", "charlie three", "delta four"]):
            await conn.execute(insert, {"seq": seq, "content": content, "now": now})
        assert await pending_count(conn) == 4
        assert await index_pending(conn)
        assert not await index_pending(conn)  # nothing queued: nothing written
    ids = [await turn_id(db, "CA1", seq) for seq in range(4)]
    assert await matching(db, "bravo") == [ids[1]]

    async with db.engine.begin() as conn:
        # an indexed row changes: it leaves the index and waits to go back in
        await conn.execute(
            text("UPDATE turns SET content = 'bravo changed' WHERE id = :i"), {"i": ids[1]}
        )
        # an indexed row is deleted
        await conn.execute(text("DELETE FROM turns WHERE id = :i"), {"i": ids[2]})
        # a new row changes before it was indexed, and another is deleted before it was
        await conn.execute(insert, {"seq": 10, "content": "echo five", "now": now})
        await conn.execute(insert, {"seq": 11, "content": "foxtrot six", "now": now})
        await conn.execute(text("UPDATE turns SET content = 'echo again' WHERE seq = 10"))
        await conn.execute(text("DELETE FROM turns WHERE seq = 11"))
        assert await pending_count(conn) == 2  # the changed row and the new one
    assert await matching(db, "bravo") == [] and await matching(db, "charlie") == []

    async with db.engine.begin() as conn:
        assert await index_pending(conn)
    echo = await turn_id(db, "CA1", 10)
    assert await matching(db, "bravo changed") == [ids[1]]
    assert await matching(db, "echo again") == [echo] and await matching(db, "five") == []
    assert await matching(db, "foxtrot") == [] and await matching(db, "charlie") == []
    assert await matching(db, "alpha one") == [ids[0]]
    assert await pending(db) == 0
    await check_index(db)


async def test_the_console_finds_turns_no_recorder_indexed(db: Database) -> None:
    """Turns written by anything else (an import, a script) wait in the queue; the console's
    words search indexes them first."""
    now = datetime.now(UTC)
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO calls (call_sid, agent, from_number, to_number, direction, caller_name, "
                "status, started_at, sessions, turns, reconnects) VALUES ('CA7', 'piano-removals', "
                "'+61412000007', '+61390001234', 'inbound', '', 'completed', :now, 1, 1, 0)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO turns (call_sid, session_id, seq, role, content, interrupted, "
                "superseded, created_at) VALUES ('CA7', 'VX7', 1, 'user', "
                "'Can you move a harpsichord?', 0, 0, :now)"
            ),
            {"now": now},
        )
    assert await pending(db) == 1

    calls, _ = await queries.search_calls(db, queries.CallFilters(words="harpsichord"))

    assert [c.call_sid for c in calls] == ["CA7"]
    assert await pending(db) == 0
    await check_index(db)


def migrate(path: Path, revision: str, *, down: bool = False) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        engine.dispose()


def test_downgrading_indexes_what_waits_and_restores_the_triggers(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    insert = (
        "INSERT INTO turns (call_sid, session_id, seq, role, content, interrupted, superseded, "
        "created_at) VALUES ('CA1', 'VX1', ?, 'user', ?, 0, 0, '2026-12-07')"
    )
    find = "SELECT rowid FROM turns_fts WHERE turns_fts MATCH ?"
    migrate(path, "head")
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        con.execute(insert, (1, "queued words"))
        assert con.execute(find, ("queued",)).fetchall() == []  # waits in the queue

    migrate(path, "0005", down=True)
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert PENDING_TABLE not in tables
        assert con.execute(find, ("queued",)).fetchall() == [(1,)]
        con.execute(insert, (2, "indexed at once"))  # migration 0002's triggers again
        assert con.execute(find, ("once",)).fetchall() == [(2,)]

    migrate(path, "head")
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        con.execute("INSERT INTO turns_fts(turns_fts, rank) VALUES ('integrity-check', 1)")
        assert con.execute(f"SELECT count(*) FROM {PENDING_TABLE}").fetchone() == (0,)
        con.execute(insert, (3, "queued again"))
        assert con.execute(f"SELECT id FROM {PENDING_TABLE}").fetchall() == [(3,)]
