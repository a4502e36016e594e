"""The write-behind recorder.

A call never waits for the database: sessions hand records to :meth:`Recorder.event`,
:meth:`Recorder.turn` and friends, which only append to an in-memory buffer. A background task
writes the buffer in batches (one transaction each), retries with backoff while the database
fails, and :meth:`Recorder.flush` waits until everything handed over so far is stored. On
shutdown :meth:`Recorder.stop` flushes; what it cannot store (the database is down as the
process stops) goes to a spill file under the data directory, which the next start stores
(:mod:`relay.storage.spill`): nothing is lost.

The write path is built for volume (a thousand calls hand over several thousand records a
second, on the same event loop that streams their answers):

- Writes start at most once per ``interval``, so records gather into a few large transactions
  rather than many small ones. After a write of ``busy_records`` records or more (a busy
  process: 50 records in 50 ms, a thousand a second), the next waits ``busy_interval``
  instead: each transaction costs the event loop and SQLite a fixed share (statements, the
  pages of the events' index written again), so fewer, larger ones cost less a record. At the
  1,000-call bench this took the server's CPU from 3.35 to 3.18 ms a turn (README, "Lighter
  turns under load"); records then reach the database (and the console) up to 0.25 s after
  they happened, instead of 0.05 s, only while the process is that busy.
- Every statement is built once and cached, per table, set of columns and kind of write, and a
  batch runs as one ``executemany`` per group of rows with the same columns: no statement is
  constructed per row (fresh dialect inserts and their ``excluded`` table copies were most of
  the cyclic garbage behind full garbage collections).
- An event's ``data`` is serialised (orjson) when it is handed over, so the buffer holds text
  rather than dicts for the garbage collector to walk. Events then go through the leanest path
  the database allows: on SQLite one prepared ``INSERT`` run with plain tuples, bypassing
  SQLAlchemy's per-row parameter processing; elsewhere a cached Core ``executemany``.
- A transaction is all or nothing. When the database is in trouble (unreachable, locked, a
  table missing) a failed batch is put back whole and retried with backoff, without
  duplicates; newer updates of the same rows that arrived meanwhile stay on top.
- When the database refuses a *row* (a constraint, a value it cannot store), the batch is split
  in halves, again and again, until the rows it refuses stand alone: each is parked in the
  ``parked_records`` table with its error (``relay.storage.repository.parked_records``),
  logged and counted (:attr:`Recorder.parked`), and the rest lands.

PostgreSQL cannot store NUL in text (``invalid byte sequence``) nor read ``\u0000`` with its JSON
operators, so every NUL in a value handed over (in text, and in JSON data at any depth) is
replaced with U+FFFD when it is handed over, on every database alike: a row reads back the same
on SQLite and PostgreSQL, and a caller's name or prompt with a NUL in it is never parked. The
check is one substring search per text; JSON (event data and JSON columns) is cleaned where it
is serialised, by :func:`relay.storage.db.dumps_json`.

The backlog is bounded: beyond ``max_events`` buffered events (while the database is down) the
oldest events are dropped, a tenth at a time, and counted (:attr:`Recorder.dropped_events`);
calls, sessions and turns are never dropped (they are few, and one row per key). A hang-up's
flush waits at most ``flush_timeout`` seconds, the shutdown's ``stop_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Table, and_, bindparam, insert, update
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.storage import spill
from relay.storage.db import NUL, Database, dumps_json, without_nul
from relay.storage.models import Base, Call, Event, ParkedRecord, RelaySession, Turn
from relay.storage.textsearch import index_pending
from relay.waits import event_set

log = structlog.get_logger("relay.recorder")

_UPSERT_KEYS: dict[type[Any], tuple[str, ...]] = {
    Call: ("call_sid",),
    RelaySession: ("session_id",),
    Turn: ("call_sid", "seq"),
}
_MODEL_ORDER = (Call, RelaySession, Turn)
_TABLES: dict[str, type[Any]] = {model.__tablename__: model for model in _MODEL_ORDER}
_EVENTS: Table = Base.metadata.tables[Event.__tablename__]
_PARKED: Table = Base.metadata.tables[ParkedRecord.__tablename__]
_EVENT_COLUMNS = ("call_sid", "session_id", "seq", "t", "at", "kind", "data")
#: Rows per ``executemany`` of events: the event loop runs between two of them, so this bounds
#: how long preparing one statement's parameters holds the loop.
_EVENT_CHUNK = 500
_KEY_PREFIX = "_key_"  # bind names of the WHERE clause of partial updates

# A buffered event: (sequence number, call_sid, session_id, seq, t, at, kind, data as JSON).
_BufferedEvent = tuple[int, str, str, int, float, datetime, str, str]
# One record of a batch being split: an upsert (its key and row) or an event.
_Item = tuple[tuple[type[Any], tuple[Any, ...]], "_Upsert"] | _BufferedEvent
#: How long a stop waits for the database when a flush has just waited for it in vain: one more
#: try, then the rest goes to the spill file.
STOP_RETRY_WAIT = 1.0
#: Used for flush()'s default: the recorder's own ``flush_timeout``.
_DEFAULT: Any = object()


def utcnow() -> datetime:
    return datetime.now(UTC)


def sqlite_datetime(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it on SQLite (``2026-11-21 09:30:00.000000``), in C
    rather than through SQLAlchemy's per-value Python formatting."""
    return value.isoformat(" ", "microseconds")[:26]


class _Upsert:
    """A buffered row: the sequence number it was first handed over with, and its values."""

    __slots__ = ("first", "model", "partial", "row")

    def __init__(self, first: int, model: type[Any], partial: bool, row: dict[str, Any]) -> None:
        self.first = first
        self.model = model
        self.partial = partial
        self.row = row


class Recorder:
    """Buffers records and writes them behind the call."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float = 0.05,
        busy_interval: float = 0.25,
        busy_records: int = 50,
        batch_size: int = 2000,
        max_backoff: float = 5.0,
        max_events: int = 200_000,
        flush_timeout: float = 2.0,
        stop_timeout: float = 10.0,
        spill_dir: Path | None = None,
    ) -> None:
        self._db = db
        self._interval = interval
        self._busy_interval = max(busy_interval, interval)
        self._busy_records = busy_records
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self.max_events = max_events
        self.flush_timeout = flush_timeout
        self.stop_timeout = stop_timeout
        #: Where :meth:`stop` keeps what it could not store, and :meth:`start` finds it again
        #: (relay.storage.spill); None: what a stop cannot store is lost (and logged).
        self.spill_dir = spill_dir
        self._claims: list[tuple[int, spill.Claim]] = []  # restored files, by their last record
        #: Calls whose end came back from a spill file: their post-call work never ran (the
        #: app hands them to it, relay.web.postcall).
        self.restored_ends: list[str] = []
        #: Calls whose post-call work a stop could not finish (:meth:`defer_postcall`): they go
        #: to the spill file with the records, and the next start does that work.
        self._postcall: list[str] = []
        #: The last write failed because the database is in trouble (cleared by a write that
        #: succeeds); and when a flush last gave up waiting while it was.
        self.troubled = False
        self._gave_up_at: float | None = None
        self._retry_now = asyncio.Event()  # ends the writer's backoff at once (a stop)
        # Rows keyed for upserts (later updates of the same key replace earlier ones) and
        # plain inserts for events.
        # Each buffered record remembers the sequence number it was handed over with, so that
        # flush() knows when everything before a point is stored even under constant load.
        self._upserts: dict[tuple[type[Any], tuple[Any, ...]], _Upsert] = {}
        self._events: list[_BufferedEvent] = []
        self._queued = 0  # sequence number of the last record handed over
        self._written = 0  # every record up to this sequence number is stored
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failures = 0  # failed writes (each retried, or split)
        self.parked = 0  # rows the database refused, kept in parked_records
        self.lost = 0  # rows the database refused that could not even be parked
        self.dropped_events = 0  # events dropped because the backlog was full
        self.batches = 0  # transactions committed
        self.spilled = 0  # records a stop wrote to a spill file
        self.restored = 0  # records a start took back from spill files
        self.statements = 0  # statements those transactions ran
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._event_sql: str | None = None  # SQLite: the raw INSERT for events

    # -- handing records over (never awaits) ---------------------------------------------

    def event(
        self,
        *,
        call_sid: str,
        session_id: str,
        seq: int,
        t: float,
        kind: str,
        data: Mapping[str, Any],
    ) -> None:
        """Record an event. ``data`` is serialised at once (a snapshot; it may change after).

        Text, not the dict, waits in the buffer: the dict is freed at once and the buffered
        tuple holds nothing the garbage collector has to follow, so records waiting for the
        next write add nothing to the collector's work.
        """
        text = dumps_json(data)  # NULs already replaced
        if NUL in call_sid or NUL in session_id or NUL in kind:
            call_sid, session_id, kind = (
                without_nul(call_sid), without_nul(session_id), without_nul(kind)
            )  # fmt: skip
        self._queued += 1
        self._events.append((self._queued, call_sid, session_id, seq, t, utcnow(), kind, text))
        if len(self._events) > self.max_events:
            self._drop_oldest_events()
        self._wake.set()

    def _drop_oldest_events(self) -> None:
        """Keep the backlog bounded while the database is down: drop the oldest tenth."""
        excess = len(self._events) - self.max_events
        if excess <= 0:
            return
        count = max(excess, self.max_events // 10)
        del self._events[:count]
        self.dropped_events += count
        log.error(
            "recorder_backlog_full",
            dropped_events=count,
            dropped_total=self.dropped_events,
            max_events=self.max_events,
        )

    def call(self, **row: Any) -> None:
        """Insert or update a call: a whole row (every required column)."""
        self._upsert(Call, row, ("call_sid",), False)

    def update_call(self, call_sid: str, **fields: Any) -> None:
        """Change some fields of a call recorded earlier."""
        fields["call_sid"] = call_sid
        self._upsert(Call, fields, ("call_sid",), True)

    def session(self, **row: Any) -> None:
        self._upsert(RelaySession, row, ("session_id",), False)

    def update_session(self, session_id: str, **fields: Any) -> None:
        fields["session_id"] = session_id
        self._upsert(RelaySession, fields, ("session_id",), True)

    def turn(self, **row: Any) -> None:
        """Insert or update a turn (``call_sid`` and ``seq`` plus the fields to set)."""
        self._upsert(Turn, row, ("call_sid", "seq"), False)

    def _upsert(
        self, model: type[Any], row: dict[str, Any], keys: tuple[str, ...], partial: bool
    ) -> None:
        """Buffer a row (``row`` is the caller's ``**kwargs``: ours to keep); a partial one
        becomes an UPDATE unless a whole row of the same key is still buffered."""
        for column, value in row.items():  # JSON values: dumps_json cleans them when written
            if isinstance(value, str) and NUL in value:
                row[column] = without_nul(value)
        self._queued += 1
        key = (model, tuple([row[k] for k in keys]))
        existing = self._upserts.get(key)
        if existing is None:
            self._upserts[key] = _Upsert(self._queued, model, partial, row)
        else:
            existing.row.update(row)
            if not partial:
                existing.partial = False
        self._wake.set()

    @property
    def pending(self) -> int:
        return self._queued - self._written

    # -- the writer ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            if self.spill_dir is not None:
                self._restore(self.spill_dir)
            self._task = asyncio.create_task(self._run(), name="relay-recorder")

    async def flush(self, timeout: float | None = _DEFAULT) -> bool:
        """Wait until everything handed over before this call is stored. False on timeout
        (by default the recorder's ``flush_timeout``; None waits as long as it takes)."""
        if timeout is _DEFAULT:
            timeout = self.flush_timeout
        target = self._queued
        if self._written >= target:
            return True
        self._wake.set()
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._written >= target), timeout
                )
            except TimeoutError:
                if self.troubled:
                    self._gave_up_at = asyncio.get_running_loop().time()
                return False
        return True

    async def stop(self, timeout: float | None = None) -> None:
        """Flush everything (for at most ``timeout`` s, by default ``stop_timeout``), then stop
        the writer."""
        if self._task is None:
            return
        if timeout is None:
            timeout = self.stop_timeout
        given_up = self._gave_up_at
        now = asyncio.get_running_loop().time()
        if self.troubled and given_up is not None and now - given_up < self.stop_timeout:
            # A flush (the drain's, a hang-up's) has just waited in vain for a database in
            # trouble: one more try, at once, then what is left is spilled; waiting the whole
            # time again would only make the stop longer.
            timeout = min(timeout, STOP_RETRY_WAIT)
        self._retry_now.set()  # a writer waiting out its backoff tries again now
        stored = await self.flush(timeout)
        if not stored:
            log.error("recorder_flush_incomplete", pending=self.pending)
        self._closing = True
        self._wake.set()
        task = self._task
        while not task.done():  # cancelled again if a cancellation was ever swallowed
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
        self._task = None
        if self._upserts or self._events or self._postcall:
            self._spill()
        for _, held in self._claims:
            held.release()  # still not stored: the next start claims the file again
        self._claims.clear()

    # -- spill files (relay.storage.spill) --------------------------------------------------------

    def defer_postcall(self, call_sids: list[str]) -> None:
        """Calls whose post-call work a stopping process could not finish (the database was
        down, or the work was slow): :meth:`stop` keeps them in the spill file, and the next
        start hands them to its post-call work (:attr:`restored_ends`)."""
        self._postcall.extend(sid for sid in call_sids if sid not in self._postcall)

    def _spill(self) -> None:
        """Write what could not be stored to a spill file for the next start (see
        :mod:`relay.storage.spill`); without a spill directory, or when the file cannot be
        written, it is lost and logged."""
        rows = [
            spill.SpilledRow(u.model.__tablename__, u.partial, u.row)
            for u in sorted(self._upserts.values(), key=lambda u: u.first)
        ]
        events = [spill.SpilledEvent(*e[1:]) for e in self._events]
        calls = sorted({r.row["call_sid"] for r in rows if "call_sid" in r.row})
        postcall = list(self._postcall)
        if self.spill_dir is None:
            self._lost(rows, events, calls, postcall, None)
            return
        try:
            path = spill.write(
                self.spill_dir, rows, events, postcall=postcall, database=self._db.url
            )
        except OSError as exc:
            self._lost(
                rows,
                events,
                calls,
                postcall,
                f"cannot write a spill file in {self.spill_dir}: {exc}",
            )
            return
        self._postcall.clear()
        for _, held in self._claims:
            held.done()  # what they held is in the new file
        self._claims.clear()
        self.spilled += len(rows) + len(events)
        self._upserts.clear()
        self._events.clear()
        log.warning(
            "recorder_spilled", path=str(path), rows=len(rows), events=len(events), calls=calls,
            postcall=postcall,
            message="what the database could not store before the process stopped (records, "
            "and calls whose post-call work was not done): the next start with this data "
            "directory stores it and does that work",
        )  # fmt: skip

    @staticmethod
    def _lost(
        rows: list[spill.SpilledRow],
        events: list[spill.SpilledEvent],
        calls: list[str],
        postcall: list[str],
        error: str | None,
    ) -> None:
        log.error(
            "recorder_records_lost", records=len(rows) + len(events), calls=calls,
            postcall=postcall, error=error,
        )  # fmt: skip

    def _restore(self, directory: Path) -> None:
        """Hand the records of earlier stops' spill files to this recorder."""
        try:
            claims, bad = spill.claim(directory)
        except OSError as exc:
            log.error("recorder_spill_unreadable", directory=str(directory), error=str(exc))
            return
        for reason in bad:
            log.error("recorder_spill_unreadable", directory=str(directory), error=reason)
        for held in claims:
            unknown = next((r.table for r in held.rows if r.table not in _TABLES), None)
            if unknown is not None:  # not a table the recorder writes: keep the file for a person
                log.error("recorder_spill_unreadable", path=str(held.path), table=unknown)
                held.release()
                continue
            for r in held.rows:
                model = _TABLES[r.table]
                self._upsert(model, dict(r.row), _UPSERT_KEYS[model], r.partial)
                if model is Call and r.row.get("ended_at") is not None:
                    self.restored_ends.append(r.row["call_sid"])
            self.restored_ends.extend(held.postcall)
            for e in held.events:
                self._queued += 1
                self._events.append(
                    (self._queued, e.call_sid, e.session_id, e.seq, e.t, e.at, e.kind, e.data)
                )
            self._claims.append((self._queued, held))
            self.restored += held.records
            log.info("recorder_spill_restoring", path=str(held.path), records=held.records)
        self._release_stored_claims()  # a file of post-call work alone holds no records

    def _release_stored_claims(self) -> None:
        """Delete the spill files whose records are all stored now."""
        while self._claims and self._claims[0][0] <= self._written:
            _, held = self._claims.pop(0)
            held.done()
            log.info("recorder_spill_restored", path=str(held.path), records=held.records)

    def gap(self, records: int) -> float:
        """Seconds from the start of a write of ``records`` records to the start of the next."""
        return self._busy_interval if records >= self._busy_records else self._interval

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        started, gap = -self._interval, self._interval  # when the last write began, and its gap
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Gather what arrives until `gap` after the last write began: under load one
            # large transaction per gap, when idle a record waits at most `interval`.
            delay = started + gap - loop.time()
            await asyncio.sleep(max(delay, 0.0))
            if not (self._upserts or self._events):
                continue
            started = loop.time()
            gap = self.gap(len(self._upserts) + min(len(self._events), self._batch_size))
            upserts, self._upserts = self._upserts, {}
            if len(self._events) <= self._batch_size:
                events, self._events = self._events, []
            else:
                events = self._events[: self._batch_size]
                del self._events[: self._batch_size]
            try:
                try:
                    await self._write(upserts, events)
                except Exception as exc:
                    if not _refused_rows(exc):
                        raise
                    self.failures += 1
                    await self._isolate(upserts, events, exc)
            except asyncio.CancelledError:  # stopping mid-write: the batch goes to the spill
                self._put_back(upserts, events)
                raise
            except Exception as exc:  # the database is in trouble: keep it all, retry
                self.failures += 1
                self.troubled = True
                self._put_back(upserts, events)
                log.warning(
                    "recorder_write_failed",
                    error=str(exc) if isinstance(exc, (SQLAlchemyError, OSError)) else repr(exc),
                    pending=self.pending,
                    retry_in=backoff,
                )
                # Not asyncio.wait_for, which can swallow the stop's cancellation (relay.waits).
                await event_set(self._retry_now, backoff)
                self._retry_now.clear()
                backoff = min(backoff * 2, self._max_backoff)
                self._wake.set()
                continue
            backoff = 0.1
            self.troubled = False
            self._advance()
            if self._claims:
                self._release_stored_claims()
            if self._upserts or self._events:
                self._wake.set()
            async with self._progress:
                self._progress.notify_all()

    def _put_back(
        self,
        upserts: dict[tuple[type[Any], tuple[Any, ...]], _Upsert],
        events: list[_BufferedEvent],
    ) -> None:
        """Return a failed batch to the buffer, keeping newer updates of the same rows on top."""
        for key, item in upserts.items():
            newer = self._upserts.get(key)
            if newer is not None:
                item.row.update(newer.row)
                item.partial = item.partial and newer.partial
            self._upserts[key] = item
        self._events[:0] = events
        if len(self._events) > self.max_events:
            self._drop_oldest_events()

    async def _isolate(
        self,
        upserts: dict[tuple[type[Any], tuple[Any, ...]], _Upsert],
        events: list[_BufferedEvent],
        error: BaseException,
    ) -> None:
        """Write a batch the database refused, in halves, until each refused row stands alone
        and is parked. Leaves in ``upserts`` and ``events`` only what is not yet written when
        the database fails otherwise (then raises, and the caller puts those back)."""
        ordered = sorted(
            upserts.items(), key=lambda kv: (_MODEL_ORDER.index(kv[1].model), kv[1].partial)
        )
        items: list[_Item] = [*ordered, *events]
        parts: deque[tuple[list[_Item], BaseException | None]] = deque([(items, error)])
        while parts:
            part, refused = parts.popleft()
            if refused is None:
                try:
                    await self._write(*_unzip(part))
                    continue
                except Exception as exc:
                    if not _refused_rows(exc):
                        _keep_only([part, *(p for p, _ in parts)], upserts, events)
                        raise
                    refused = exc
            if len(part) > 1:
                middle = len(part) // 2
                parts.extendleft([(part[middle:], None), (part[:middle], None)])
                continue
            try:
                await self._park(part[0], refused)
            except Exception as exc:
                if not _refused_rows(exc):  # the database is in trouble: retry it all later
                    _keep_only([part, *(p for p, _ in parts)], upserts, events)
                    raise
                self.lost += 1  # not even storable as JSON text: logged, counted, let go
                log.error("recorder_row_lost", error=repr(exc)[:300], lost_total=self.lost)
        upserts.clear()
        events.clear()

    async def _park(self, item: _Item, error: BaseException) -> None:
        """Keep a refused row in ``parked_records`` with its error."""
        if len(item) == 2:
            upsert = item[1]
            assert isinstance(upsert, _Upsert)
            table, row = upsert.model.__tablename__, dict(upsert.row)
            if upsert.partial:
                row["_partial_update"] = True
        else:
            table = _EVENTS.name
            row = dict(zip(_EVENT_COLUMNS, item[1:], strict=True))
            row["data"] = orjson.Fragment(row["data"])
        message = without_nul(str(getattr(error, "orig", None) or error) or repr(error))
        call_sid = row.get("call_sid")
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(_PARKED),
                {
                    "table_name": table,
                    "call_sid": call_sid if isinstance(call_sid, str) else None,
                    "record": dumps_json(row),
                    "error": message[:4000],
                    "parked_at": utcnow(),
                },
            )
        self.parked += 1
        log.error(
            "recorder_row_parked", table=table, call_sid=call_sid, error=message[:300],
            parked_total=self.parked,
        )  # fmt: skip

    def _advance(self) -> None:
        waiting = min((u.first for u in self._upserts.values()), default=self._queued + 1)
        if self._events:
            waiting = min(waiting, self._events[0][0])
        self._written = waiting - 1

    async def _write(
        self,
        upserts: Mapping[tuple[type[Any], tuple[Any, ...]], _Upsert],
        events: list[_BufferedEvent],
    ) -> None:
        # Rows of one table with the same columns (and kind of write) go in one executemany.
        groups: dict[tuple[type[Any], bool, frozenset[str]], list[dict[str, Any]]] = {}
        for item in upserts.values():
            groups.setdefault((item.model, item.partial, frozenset(item.row)), []).append(item.row)
        ordered = sorted(groups.items(), key=lambda g: (_MODEL_ORDER.index(g[0][0]), g[0][1]))
        statements = 0
        async with self._db.engine.begin() as conn:
            for (model, partial, columns), rows in ordered:
                if partial:
                    stmt, params = self._update_statement(model, columns), _key_params(model, rows)
                else:
                    stmt, params = self._upsert_statement(model, columns), rows
                await conn.execute(stmt, params)
                statements += 1
            for start in range(0, len(events), _EVENT_CHUNK):
                await self._insert_events(conn, events[start : start + _EVENT_CHUNK])
                statements += 1
            if self._db.is_sqlite and any(model is Turn for model, _, _ in groups):
                # the turns just written (queued by their trigger) go into the search index
                await index_pending(conn, check=False)
                statements += 2
        self.batches += 1
        self.statements += statements

    # -- statements, built once --------------------------------------------------------------

    def _upsert_statement(self, model: type[Any], columns: frozenset[str]) -> Any:
        cache_key = ("upsert", model, columns)
        stmt = self._statements.get(cache_key)
        if stmt is None:
            table: Table = model.__table__
            base = self._db.insert(table)
            keys = _UPSERT_KEYS[model]
            updates = {c: base.excluded[c] for c in sorted(columns) if c not in keys}
            if updates:
                stmt = base.on_conflict_do_update(index_elements=list(keys), set_=updates)
            else:
                stmt = base.on_conflict_do_nothing(index_elements=list(keys))
            self._statements[cache_key] = stmt
        return stmt

    def _update_statement(self, model: type[Any], columns: frozenset[str]) -> Any:
        cache_key = ("update", model, columns)
        stmt = self._statements.get(cache_key)
        if stmt is None:
            table: Table = model.__table__
            keys = _UPSERT_KEYS[model]
            stmt = (
                update(table)
                .where(and_(*(table.c[k] == bindparam(_KEY_PREFIX + k) for k in keys)))
                .values({c: bindparam(c) for c in sorted(columns) if c not in keys})
            )
            self._statements[cache_key] = stmt
        return stmt

    async def _insert_events(self, conn: AsyncConnection, events: list[_BufferedEvent]) -> None:
        if self._db.is_sqlite:
            if self._event_sql is None:
                self._event_sql = (
                    f"INSERT INTO {_EVENTS.name} ({', '.join(_EVENT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _EVENT_COLUMNS)})"
                )
            await conn.exec_driver_sql(
                self._event_sql,
                [(e[1], e[2], e[3], e[4], sqlite_datetime(e[5]), e[6], e[7]) for e in events],
            )
        else:
            stmt = self._statements.get(("events",))
            if stmt is None:
                stmt = self._statements[("events",)] = insert(_EVENTS)
            # The JSON column's serialiser (orjson) writes a Fragment's text as it is.
            await conn.execute(
                stmt,
                [
                    {"call_sid": e[1], "session_id": e[2], "seq": e[3], "t": e[4], "at": e[5],
                     "kind": e[6], "data": orjson.Fragment(e[7])}
                    for e in events
                ],
            )  # fmt: skip


#: SQLSTATE classes that say the database is in trouble, whatever the rows: connection
#: exceptions (08), transaction rollback (40: deadlock, serialization), insufficient resources
#: (53), object not in prerequisite state (55: a lock not available), operator intervention (57:
#: shutting down, starting up, an administrator's shutdown) and system errors (58: I/O).
_TROUBLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver's error wrapped by SQLAlchemy (asyncpg's and psycopg's carry
    one; SQLite's none)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def database_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is in trouble and may recover (unreachable,
    restarting, locked, a connection lost), rather than a bug or a value it refuses: the
    recorder keeps such a batch to write again, and the post-call pass tries again."""
    if isinstance(exc, (OSError, TimeoutError, DisconnectionError, OperationalError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    code = _sqlstate(exc)
    if code is not None and code[:2] in _TROUBLE_SQLSTATE_CLASSES:
        # asyncpg's "the database system is shutting down" (57P03) is a bare DBAPIError
        return True
    if isinstance(exc, InterfaceError):
        # asyncpg reports a value of the wrong type as an interface error too
        return "connection" in str(exc).lower() or "closed" in str(exc).lower()
    return False


def _refused_rows(exc: BaseException) -> bool:
    """Whether the database refused some row of a batch (a constraint, a value it cannot
    store), rather than being in trouble itself (:func:`database_trouble`) or missing a table
    (a ProgrammingError: the schema, not the rows)."""
    return not (
        database_trouble(exc) or isinstance(exc, (ProgrammingError, asyncio.CancelledError))
    )


def _unzip(
    items: list[_Item],
) -> tuple[dict[tuple[type[Any], tuple[Any, ...]], _Upsert], list[_BufferedEvent]]:
    upserts: dict[tuple[type[Any], tuple[Any, ...]], _Upsert] = {}
    events: list[_BufferedEvent] = []
    for item in items:
        if len(item) == 2:
            key, upsert = item
            assert isinstance(upsert, _Upsert)
            upserts[key] = upsert
        else:
            events.append(item)
    return upserts, events


def _keep_only(
    parts: list[list[_Item]],
    upserts: dict[tuple[type[Any], tuple[Any, ...]], _Upsert],
    events: list[_BufferedEvent],
) -> None:
    """Reduce a batch to the records of ``parts`` (those not written yet)."""
    left_upserts, left_events = _unzip([item for part in parts for item in part])
    upserts.clear()
    upserts.update(left_upserts)
    events[:] = sorted(left_events)


def _key_params(model: type[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Partial updates' parameters: the key columns under their WHERE names."""
    keys = _UPSERT_KEYS[model]
    out = []
    for row in rows:
        params = {c: v for c, v in row.items() if c not in keys}
        for k in keys:
            params[_KEY_PREFIX + k] = row[k]
        out.append(params)
    return out
