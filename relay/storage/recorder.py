"""The write-behind recorder.

A call never waits for the database: sessions hand records to :meth:`Recorder.event`,
:meth:`Recorder.turn` and friends, which only append to an in-memory buffer. A background task
writes the buffer in batches (one transaction each), retries with backoff while the database
fails, and :meth:`Recorder.flush` waits until everything handed over so far is stored. On
shutdown :meth:`Recorder.stop` flushes: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from relay.storage.db import Database
from relay.storage.models import Call, Event, RelaySession, Turn

log = structlog.get_logger("relay.recorder")

_UPSERT_KEYS: dict[type[Any], tuple[str, ...]] = {
    Call: ("call_sid",),
    RelaySession: ("session_id",),
    Turn: ("call_sid", "seq"),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Recorder:
    """Buffers records and writes them behind the call."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float = 0.05,
        batch_size: int = 2000,
        max_backoff: float = 5.0,
    ) -> None:
        self._db = db
        self._interval = interval
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        # Rows keyed for upserts (later updates of the same key replace earlier ones) and
        # plain inserts for events.
        # Each buffered record remembers the sequence number it was handed over with, so that
        # flush() knows when everything before a point is stored even under constant load.
        self._upserts: dict[tuple[type[Any], tuple[Any, ...]], tuple[int, dict[str, Any]]] = {}
        self._events: list[tuple[int, dict[str, Any]]] = []
        self._queued = 0  # sequence number of the last record handed over
        self._written = 0  # every record up to this sequence number is stored
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failures = 0

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
        self._queued += 1
        self._events.append(
            (self._queued, {"call_sid": call_sid, "session_id": session_id, "seq": seq, "t": t,
                            "at": utcnow(), "kind": kind, "data": data})
        )  # fmt: skip
        self._wake.set()

    def call(self, **row: Any) -> None:
        """Insert or update a call: a whole row (every required column)."""
        self._upsert(Call, row)

    def update_call(self, call_sid: str, **fields: Any) -> None:
        """Change some fields of a call recorded earlier."""
        self._upsert(Call, {"call_sid": call_sid, **fields}, partial=True)

    def session(self, **row: Any) -> None:
        self._upsert(RelaySession, row)

    def update_session(self, session_id: str, **fields: Any) -> None:
        self._upsert(RelaySession, {"session_id": session_id, **fields}, partial=True)

    def turn(self, **row: Any) -> None:
        """Insert or update a turn (``call_sid`` and ``seq`` plus the fields to set)."""
        self._upsert(Turn, row)

    def _upsert(self, model: type[Any], row: dict[str, Any], *, partial: bool = False) -> None:
        """Buffer a row; a partial one becomes an UPDATE unless a whole row is still buffered."""
        self._queued += 1
        key = (model, tuple(row[k] for k in _UPSERT_KEYS[model]))
        existing = self._upserts.get(key)
        if existing is None:
            self._upserts[key] = (self._queued, {"__model__": model, "__partial__": partial, **row})
        else:
            existing[1].update(row)
            if not partial:
                existing[1]["__partial__"] = False
        self._wake.set()

    @property
    def pending(self) -> int:
        return self._queued - self._written

    # -- the writer ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-recorder")

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything handed over before this call is stored. False on timeout."""
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
                return False
        return True

    async def stop(self, timeout: float = 30.0) -> None:
        """Flush everything, then stop the writer."""
        if self._task is None:
            return
        stored = await self.flush(timeout)
        if not stored:
            log.error("recorder_flush_incomplete", pending=self.pending)
        self._closing = True
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Gather what arrives over the next few milliseconds into one transaction.
            await asyncio.sleep(self._interval)
            while self._upserts or self._events:
                upserts, self._upserts = self._upserts, {}
                events, self._events = (
                    self._events[: self._batch_size],
                    self._events[self._batch_size :],
                )
                try:
                    await self._write([r for _, r in upserts.values()], [r for _, r in events])
                except (SQLAlchemyError, OSError) as exc:
                    self.failures += 1
                    # Put the batch back, keeping newer updates of the same rows on top.
                    for key, (first, row) in upserts.items():
                        newer = self._upserts.get(key)
                        if newer is not None:
                            merged = {**row, **newer[1]}
                            merged["__partial__"] = row["__partial__"] and newer[1]["__partial__"]
                            self._upserts[key] = (first, merged)
                        else:
                            self._upserts[key] = (first, row)
                    self._events[:0] = events
                    log.warning(
                        "recorder_write_failed",
                        error=str(exc),
                        pending=self.pending,
                        retry_in=backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                backoff = 0.1
                waiting = [first for first, _ in self._upserts.values()]
                if self._events:
                    waiting.append(self._events[0][0])
                self._written = min(waiting) - 1 if waiting else self._queued
                async with self._progress:
                    self._progress.notify_all()

    async def _write(self, upserts: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        by_model: dict[type[Any], list[dict[str, Any]]] = {}
        for row in upserts:
            by_model.setdefault(row["__model__"], []).append(row)
        async with self._db.session() as session, session.begin():
            for model in (Call, RelaySession, Turn):
                for row in by_model.get(model, ()):
                    values = {k: v for k, v in row.items() if k not in ("__model__", "__partial__")}
                    if row["__partial__"]:
                        keys = _UPSERT_KEYS[model]
                        await session.execute(
                            update(model)
                            .where(*(getattr(model, k) == values[k] for k in keys))
                            .values({k: v for k, v in values.items() if k not in keys})
                        )
                    else:
                        await session.execute(self._upsert_statement(model, values))
            if events:
                await session.execute(insert(Event), events)

    def _upsert_statement(self, model: type[Any], row: dict[str, Any]) -> Any:
        dialect: Callable[..., Any] = sqlite.insert if self._db.is_sqlite else postgresql.insert
        stmt = dialect(model).values(**row)
        keys = _UPSERT_KEYS[model]
        updates = {k: stmt.excluded[k] for k in row if k not in keys}
        if not updates:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=updates)
