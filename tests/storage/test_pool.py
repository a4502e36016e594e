"""PostgreSQL's connection pool: connections idle for a while are pinged before use, busy ones
are not, a connection that died under the pool is replaced, and a burst never opens more
connections than the pool's size.

Connections die for real here: their server processes are ended with
``pg_terminate_backend``, as a restarted server or a firewall's idle timeout would end them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import exc, select, text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from relay.storage import db as db_module
from relay.storage.db import Database
from relay.storage.models import Turn
from relay.storage.recorder import Recorder
from relay.testing import postgres
from tests.storage.test_recorder import WriteFailures, record_call, record_turn


@pytest.fixture
async def url(postgres_server: str) -> AsyncIterator[str]:
    database = await postgres.create_database(postgres_server)
    try:
        yield database
    finally:
        await postgres.drop_database(postgres_server, database)


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pings sent, whoever sends them."""
    sent: list[int] = []
    original = asyncpg_dialect.AsyncAdapt_asyncpg_connection.ping

    def ping(self: Any) -> None:
        sent.append(1)
        original(self)

    monkeypatch.setattr(asyncpg_dialect.AsyncAdapt_asyncpg_connection, "ping", ping)
    return sent


async def backend(db: Database) -> int:
    """The server process behind the connection a unit of work gets."""
    async with db.session() as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def end_connections(server: str, url: str) -> int:
    """End every connection to the database at ``url``, as a server restart would."""
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(postgres.asyncpg_dsn(server))
    try:
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()
    return int(ended)


async def test_connections_in_steady_use_are_not_pinged(db: Database, pings: list[int]) -> None:
    first = await backend(db)
    for _ in range(5):
        assert await backend(db) == first  # one connection, back in use at once
    assert pings == []


async def test_a_connection_idle_past_the_limit_is_pinged_first(
    db: Database, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await backend(db)  # a new connection is never pinged
    assert pings == []
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE", 0.0)
    assert await backend(db) == first
    assert await backend(db) == first
    assert len(pings) == 2


async def test_a_connection_that_died_while_idle_is_replaced_before_use(
    db: Database, url: str, postgres_server: str, pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await backend(db)
    assert await end_connections(postgres_server, url) == 1
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE", 0.0)
    replaced = await backend(db)  # the ping fails, the pool connects again: no error
    assert replaced != first
    assert len(pings) == 1


async def test_a_connection_that_died_just_after_use_fails_once_then_the_pool_is_new(
    db: Database, url: str, postgres_server: str, pings: list[int]
) -> None:
    first = await backend(db)
    assert await end_connections(postgres_server, url) == 1
    with pytest.raises(exc.DBAPIError) as failed:
        await backend(db)
    assert failed.value.connection_invalidated
    assert await backend(db) not in (first, 0)
    assert pings == []


async def test_the_recorder_loses_nothing_when_its_connections_die(
    db: Database, url: str, postgres_server: str
) -> None:
    recorder = Recorder(db, interval=0.001, max_backoff=0.05)
    failures = WriteFailures(db)
    await recorder.start()
    try:
        record_call(recorder, "CA1")
        await recorder.flush()
        assert await end_connections(postgres_server, url) >= 1
        for seq in range(3):
            record_turn(recorder, seq, f"turn {seq}")
        await recorder.flush()
    finally:
        await recorder.stop(timeout=5)
    async with db.session() as session:
        stored = (await session.scalars(select(Turn.content).order_by(Turn.seq))).all()
    assert stored == ["turn 0", "turn 1", "turn 2"]
    assert failures.count >= 1  # the write on a dead connection failed, and was retried


async def test_the_pool_never_opens_more_than_its_size_and_keeps_what_it_opened(
    url: str,
) -> None:
    """A burst beyond the pool waits for a free connection: no connection is opened for a
    few statements and closed again when returned (a PostgreSQL backend started and ended)."""
    db = Database(url, pool_size=3)
    seen: list[int] = []

    async def unit_of_work() -> None:
        async with db.session() as session:
            seen.append(int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            await session.execute(text("SELECT pg_sleep(0.01)"))

    try:
        await asyncio.gather(*(unit_of_work() for _ in range(20)))
        first = set(seen)
        await asyncio.gather(*(unit_of_work() for _ in range(20)))
        pool = db.engine.pool
        kept = pool.checkedin()  # type: ignore[attr-defined]
    finally:
        await db.close()

    assert len(seen) == 40
    assert len(first) == 3  # the burst used all three, and no more
    assert set(seen) == first  # the second burst found them open
    assert kept == 3


async def test_the_server_opens_its_pool_with_the_configured_size(
    url: str, start_relay: Any
) -> None:
    async with start_relay(DATABASE_URL=url, RELAY_DB_POOL_SIZE="4") as relay:
        pool = relay.runtime.deps.db.engine.pool
        assert pool.size() == 4
        assert pool._max_overflow == 0  # type: ignore[attr-defined]  # never beyond the four
