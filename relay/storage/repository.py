"""Keyword-only repository functions: one short unit of work each."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import Text, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relay.storage.db import Database
from relay.storage.models import Call, Event, ParkedRecord, RelaySession, SideEffect, Turn
from relay.storage.requests import expand_requests


async def call_history(db: Database, call_sid: str) -> tuple[Call | None, list[Turn]]:
    """A call and its turns in order (what a resumed session starts from)."""
    async with db.session() as session:
        call = await session.get(Call, call_sid)
        if call is None:
            return None, []
        return call, await call_turns_in(session, call_sid)


async def call_turns_in(session: AsyncSession, call_sid: str) -> list[Turn]:
    """A call's turns in order, within a unit of work already open."""
    rows = await session.scalars(select(Turn).where(Turn.call_sid == call_sid).order_by(Turn.seq))
    return list(rows.all())


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
        return await call_events_in(session, call_sid)


async def call_events_in(session: AsyncSession, call_sid: str) -> list[Event]:
    """:func:`call_events` within a unit of work already open."""
    rows = await session.scalars(select(Event).where(Event.call_sid == call_sid).order_by(Event.id))
    events = list(rows.all())
    expand_requests(events)
    return events


async def call_events_of(
    session: AsyncSession,
    call_sid: str,
    kinds: Collection[str],
    *,
    keep: Callable[[str, str], bool] | None = None,
) -> list[dict[str, Any]]:
    """A call's events of ``kinds`` in order, as plain dicts (``session_id``, ``seq``, ``kind``,
    ``data``), every ``llm_request`` with its full ``body``.

    For work that reads a few kinds of a long call (outcomes, usage): no ORM objects, and each
    row's JSON is decoded only if ``keep(kind, json_text)`` says so (all of them by default),
    so a call's thousands of token frames cost a substring test each rather than an object
    and a decode.
    """
    query = (
        select(Event.session_id, Event.seq, Event.kind, cast(Event.data, Text))
        .where(Event.call_sid == call_sid, Event.kind.in_(sorted(kinds)))
        .order_by(Event.id)
    )
    rows = (await session.execute(query)).all()
    events = [
        {"session_id": session_id, "seq": seq, "kind": kind, "data": orjson.loads(text)}
        for session_id, seq, kind, text in rows
        if text is not None and (keep is None or keep(kind, text))
    ]
    expand_requests(events)
    return events


async def call_language(db: Database, call_sid: str) -> str | None:
    """The language a call last switched to (its latest ``language_switched`` event), or None
    when it never switched: what a resumed session speaks and listens in."""
    async with db.session() as session:
        events = await call_events_of(session, call_sid, ("language_switched",))
    return str(events[-1]["data"]["code"]) if events else None


async def call_sessions(db: Database, call_sid: str) -> list[RelaySession]:
    async with db.session() as session:
        return await call_sessions_in(session, call_sid)


async def call_sessions_in(session: AsyncSession, call_sid: str) -> list[RelaySession]:
    """A call's sessions in the order they started, within a unit of work already open."""
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


@dataclass(frozen=True)
class SideEffectClaim:
    """What the side-effect ledger answered when a key was claimed.

    ``state`` is ``claimed`` (this caller may run the side effect now), ``done`` (it ran before;
    ``result`` is what it said then), ``running`` (another attempt holds the key) or ``unknown``
    (an earlier attempt got no answer in time and may have taken effect: never run it again).
    """

    state: Literal["claimed", "done", "running", "unknown"]
    result: str | None = None


async def claim_side_effect(
    db: Database, key: str, tool: str, call_sid: str | None
) -> SideEffectClaim:
    """Claim an idempotency key in its own transaction, before the side effect runs.

    Two concurrent attempts cannot both get ``claimed``; a failed attempt's key can be claimed
    again. :func:`relay.tools.ledger.once` builds the tools' at-most-once rule on this.
    """
    now = datetime.now(UTC)
    try:
        async with db.session() as session, session.begin():
            existing = await session.get(SideEffect, key)
            if existing is not None and existing.status == "done":
                return SideEffectClaim("done", existing.result)
            if existing is not None and existing.status == "running":
                return SideEffectClaim("running")
            if existing is not None and existing.status == "unknown":
                return SideEffectClaim("unknown", existing.result)
            if existing is None:
                session.add(
                    SideEffect(
                        key=key, tool=tool, call_sid=call_sid, status="running", created_at=now
                    )
                )
            else:
                existing.status = "running"
    except IntegrityError:
        return SideEffectClaim("running")
    return SideEffectClaim("claimed")


async def tools_done(db: Database, call_sid: str) -> set[str]:
    """The side-effect tools that succeeded in a call (a resumed call's booking guard)."""
    async with db.session() as session:
        rows = await session.scalars(
            select(SideEffect.tool).where(
                SideEffect.call_sid == call_sid, SideEffect.status == "done"
            )
        )
        return set(rows)


async def settle_side_effect(db: Database, key: str, *, status: str, result: str | None) -> None:
    """Store how a claimed side effect ended (``done``, ``failed`` or ``unknown``) and what it
    said."""
    async with db.session() as session, session.begin():
        row = await session.get(SideEffect, key)
        if row is not None:
            row.status = status
            row.result = result


async def stored_turns(db: Database, call_sid: str) -> Sequence[Turn]:
    return (await call_history(db, call_sid))[1]


async def parked_records(db: Database, *, limit: int = 100) -> Sequence[ParkedRecord]:
    """The rows the recorder could not write (newest first), each with the database's error."""
    async with db.session() as session:
        rows = await session.scalars(
            select(ParkedRecord).order_by(ParkedRecord.id.desc()).limit(limit)
        )
        return rows.all()
