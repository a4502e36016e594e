"""The database handle: an async engine, WAL mode on SQLite, and migrations at start."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import structlog
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from relay.errors import ConfigError, StorageError

log = structlog.get_logger("relay.storage.db")

MIGRATIONS = Path(__file__).with_name("migrations")
#: The key of the PostgreSQL advisory lock that serialises migrations across processes.
MIGRATION_LOCK = zlib.crc32(b"relay-migrations") - 2**31
#: How long a process waits for another one's migrations before giving up.
MIGRATION_WAIT = 120.0
#: A pooled PostgreSQL connection that has been idle this long (seconds) is pinged before it
#: is handed out; one used more recently is trusted (see :func:`_ping_if_idle`).
PING_AFTER_IDLE = 1.0
#: PostgreSQL connections a process keeps, opened as they are needed (``RELAY_DB_POOL_SIZE``).
#: There is no overflow beyond them: a unit of work waits for a free one (they are short)
#: rather than open a connection that is closed again when it is returned.
POOL_SIZE = 10


def check_driver(url: str) -> None:
    """Raise a one-line ConfigError when the database's driver is not installed."""
    if url.startswith("postgresql"):
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "DATABASE_URL is a PostgreSQL URL but its driver (asyncpg) is not installed: "
                "pip install 'relay[postgres]'"
            ) from None


class Database:
    """Owns the engine and hands out short units of work (never shared across tasks)."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = POOL_SIZE) -> None:
        check_driver(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # orjson for every JSON column, both ways: several times faster than the standard
        # library, which matters on the recorder's write path (it runs on the event loop).
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": dumps_json,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 15}
        else:
            # An overflow connection is closed when it is returned: under a burst of calls
            # that is a PostgreSQL backend started and ended for a few statements, hundreds of
            # times a run (README, "Recording to PostgreSQL").
            kwargs.update(pool_size=pool_size, max_overflow=0)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "checkin", _note_idle)
            event.listen(self.engine.sync_engine, "checkout", _ping_if_idle)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    def insert(self, table: Any) -> Any:
        """``INSERT`` into ``table`` (a model or a Table) in this database's dialect, which
        has ``on_conflict_do_update`` and ``on_conflict_do_nothing`` (an upsert on both)."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    async def migrate(self) -> None:
        """Bring the schema to the newest migration, once, whatever the number of processes.

        Several workers start together on the same database: each takes the migration lock
        (a file lock beside a SQLite file, an advisory lock on PostgreSQL), so the first one
        migrates and the others find the schema already at the newest revision.
        """
        await self.reachable()
        async with self._migration_lock(), self.engine.begin() as conn:
            if not self.is_sqlite:
                # Held until this transaction ends; PostgreSQL's DDL is transactional, so the
                # next process sees either nothing or the whole migration.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            await conn.run_sync(_upgrade)

    async def reachable(self) -> None:
        """Connect once. A database that cannot be reached (down, a wrong address or name, a
        refused login, a SQLite file that cannot be opened) is a StorageError naming
        ``DATABASE_URL`` (its password masked) and the driver's reason, in one line: what
        ``relay serve`` and every command that opens the database say at start."""
        try:
            connection = await self.engine.connect()
        except (OSError, exc.DBAPIError) as error:
            cause = error.orig if isinstance(error, exc.DBAPIError) else error
            reason = " ".join(str(cause).split()) or type(cause).__name__
            where = self.engine.url.render_as_string(hide_password=True)
            raise StorageError(
                f"cannot connect to the database (DATABASE_URL {where}): "
                f"{type(cause).__name__}: {reason}"
            ) from error
        await connection.close()  # back to the pool, for the migration that follows

    @contextlib.asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        path = self.sqlite_path
        if path is None:
            yield
            return
        lock = path.with_name(path.name + ".migrate-lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await asyncio.to_thread(_flock, fd, MIGRATION_WAIT)
            yield
        finally:
            os.close(fd)  # releases the lock

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None (PostgreSQL, or an in-memory database)."""
        if not self.is_sqlite or ":///" not in self.url:
            return None
        path = self.url.split(":///", 1)[1].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)

    async def close(self) -> None:
        await self.engine.dispose()


#: PostgreSQL stores no NUL in text and its JSON operators refuse ``\u0000``: every NUL relay
#: stores becomes U+FFFD, on every database alike (a row reads back the same on each).
NUL = "\x00"
REPLACEMENT = "\ufffd"
_JSON_NUL = "\\u0000"  # how JSON text writes a NUL


def dumps_json(value: Any) -> str:
    """JSON text for a JSON column or an event's data, with every NUL in its strings written as
    U+FFFD. Never raises, so that one odd value (a Decimal, a set, an integer beyond 64 bits,
    a cycle) cannot block the recorder: what JSON cannot hold is written as its ``str()``, or
    as a ``repr()`` as the last resort."""
    text = _dumps(value)
    if _JSON_NUL in text:
        # Decoded rather than edited: "\\u0000" may also be an escaped backslash before "u0000";
        # the standard library reads back whatever _dumps wrote (big integers, lone surrogates).
        text = _dumps(without_nul(json.loads(text)))
    return text


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        try:  # e.g. integers beyond 64 bits, which only the standard library writes
            return json.dumps(value, default=str)
        except (TypeError, ValueError) as exc:
            fallback = {"unserialisable": repr(value)[:10_000], "error": repr(exc)}
            return orjson.dumps(fallback).decode()


def without_nul(value: Any) -> Any:
    """``value`` with every NUL in its text (keys and values, at any depth) replaced by U+FFFD;
    a copy, never the caller's object changed."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


def _flock(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"another process held the migration lock for {wait:.0f}s"
                ) from None
            time.sleep(0.05)


def _note_idle(_dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(
    dbapi_conn: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Ping a pooled connection that has sat idle for :data:`PING_AFTER_IDLE` or longer.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: on asyncpg that is three round
    trips (BEGIN, an empty query, ROLLBACK), about 0.2 ms of CPU in relay and 0.06 ms in
    PostgreSQL, five to ten times a call (fewer under load, where one recorder batch holds
    many calls). Connections go stale while they sit idle (a restarted server, a firewall's
    idle timeout), so one back in use within the last second is trusted. A failed ping makes the pool replace every connection
    opened before it; a connection that died while in use still fails its statement, and the
    pool then replaces them all the same (the recorder retries its batch).
    """
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
        return
    try:
        dbapi_conn.ping()
    except Exception as error:
        raise exc.InvalidatePoolError(f"a pooled connection failed its ping: {error!r}") from error


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(conn: Connection) -> None:
    """Migrate to the newest revision, under the migration lock, logging the run in one line.

    A revision this code does not know was written by a newer relay (an image rolled back
    after the newer one migrated): a ConfigError in one line rather than alembic's traceback.
    A process that finds the schema already at the newest revision (another worker migrated
    it) does nothing and logs nothing. Upgrading an existing schema is a warning (creating a
    new one is info), so that every command, not only ``relay serve``, says it did it."""
    config = alembic_config()
    config.attributes["connection"] = conn
    script = ScriptDirectory.from_config(config)
    newest = script.get_current_head()
    current = MigrationContext.configure(conn).get_current_revision()
    if current == newest:
        return
    if current is not None and current not in {r.revision for r in script.walk_revisions()}:
        where = conn.engine.url.render_as_string(hide_password=True)
        raise ConfigError(
            f"the database's schema (DATABASE_URL {where}) is at revision {current}, which this "
            f"relay does not know (its newest is {newest}): it was migrated by a newer relay; "
            "run that one, or restore a backup taken before it migrated"
        )
    command.upgrade(config, "head")
    if current is None:
        log.info("database_migrated", from_revision=current, to_revision=newest)
    else:
        # An existing schema changed: every command says so (they log warnings and above),
        # since an older relay still serving from this database refuses it at its next start.
        log.warning(
            "database_migrated", from_revision=current, to_revision=newest,
            message=f"upgraded the schema of DATABASE_URL "
            f"{conn.engine.url.render_as_string(hide_password=True)}: relay versions older "
            "than this one cannot use it any more",
        )  # fmt: skip
