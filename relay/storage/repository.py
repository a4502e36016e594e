"""Keyword-only repository functions: one short unit of work each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from relay.storage.db import Database
from relay.storage.models import Call, Event, RelaySession, SideEffect, Turn
from relay.storage.requests import expand_requests

if TYPE_CHECKING:
    from relay.tools.base import ToolResult


async def call_history(db: Database, call_sid: str) -> tuple[Call | None, list[Turn]]:
    """A call and its turns in order (what a resumed session starts from)."""
    async with db.session() as session:
        call = await session.get(Call, call_sid)
        if call is None:
            return None, []
        turns = (
            await session.scalars(select(Turn).where(Turn.call_sid == call_sid).order_by(Turn.seq))
        ).all()
        return call, list(turns)


async def get_call(db: Database, call_sid: str) -> Call | None:
    async with db.session() as session:
        return await session.get(Call, call_sid)


async def list_calls(
    db: Database,
    *,
    agent: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    outcome: str | None = None,
    limit: int = 50,
) -> list[Call]:
    query = select(Call).order_by(Call.started_at.desc()).limit(limit)
    if agent:
        query = query.where(Call.agent == agent)
    if since:
        query = query.where(Call.started_at >= since)
    if until:
        query = query.where(Call.started_at < until)
    if outcome:
        query = query.where(Call.outcome == outcome)
    async with db.session() as session:
        return list((await session.scalars(query)).all())


async def call_events(db: Database, call_sid: str) -> list[Event]:
    """A call's events in order, every ``llm_request`` with its full ``body``."""
    async with db.session() as session:
        rows = await session.scalars(
            select(Event).where(Event.call_sid == call_sid).order_by(Event.id)
        )
        events = list(rows.all())
    expand_requests(events)
    return events


async def call_sessions(db: Database, call_sid: str) -> list[RelaySession]:
    async with db.session() as session:
        rows = await session.scalars(
            select(RelaySession)
            .where(RelaySession.call_sid == call_sid)
            .order_by(RelaySession.started_at)
        )
        return list(rows.all())


async def count_events(db: Database, call_sid: str) -> int:
    async with db.session() as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(Event).where(Event.call_sid == call_sid)
            )
            or 0
        )


async def once(
    db: Database,
    key: str,
    tool: str,
    call_sid: str | None,
    run: Callable[[], Awaitable[ToolResult]],
) -> ToolResult:
    """Run a side effect at most once per idempotency key.

    The key is claimed in its own transaction before the side effect runs, so two concurrent
    attempts cannot both run it; a finished one returns the stored result instead.
    """
    from relay.tools.base import ToolResult

    now = datetime.now(UTC)
    try:
        async with db.session() as session, session.begin():
            existing = await session.get(SideEffect, key)
            if existing is not None and existing.status == "done":
                return ToolResult(
                    f"{existing.result} (Already done earlier in this call; not repeated.)",
                    data={"idempotent_replay": True},
                )
            if existing is not None and existing.status == "running":
                return ToolResult(
                    "That is already being done; wait for it rather than asking again.",
                    data={"error": "in progress"},
                )
            if existing is None:
                session.add(
                    SideEffect(
                        key=key, tool=tool, call_sid=call_sid, status="running", created_at=now
                    )
                )
            else:
                existing.status = "running"
    except IntegrityError:
        return ToolResult(
            "That is already being done; wait for it rather than asking again.",
            data={"error": "in progress"},
        )
    status = "failed"
    result: ToolResult | None = None
    try:
        result = await run()
        status = "failed" if result.data and "error" in result.data else "done"
        return result
    finally:
        async with db.session() as session, session.begin():
            row = await session.get(SideEffect, key)
            if row is not None:
                row.status = status
                row.result = result.content if result is not None else None


async def stored_turns(db: Database, call_sid: str) -> Sequence[Turn]:
    return (await call_history(db, call_sid))[1]
