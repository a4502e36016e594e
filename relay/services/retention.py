"""Retention and privacy: how long call records stay, and deleting one call on request.

* :func:`purge` deletes, for calls older than a number of days, the transcripts (``turns``),
  events (every frame, and the model request and response bodies, which are events), parked
  recorder rows and sent webhook documents, and clears the handoff summary and the post-call
  summary and fields. The ``calls``, ``sessions`` and ``call_analyses`` rows stay: they are the
  aggregates (agent, outcomes, times, turn counts, usage, cost) that reports are built from.
* :func:`mask_numbers` replaces the caller's number of calls older than a number of days (the
  ``from`` of an inbound call, the ``to`` of an outbound one) with a masked form that keeps the
  country and area prefix (``+614xxxxxxxx``), in the call row and in whatever of its
  transcript, events, handoff summary and post-call documents is still stored, however it was
  written there (a caller says ``0412 345 678``: ``04xx xxx xxx``); the caller's name is
  cleared. The business's own line is left alone, as redaction leaves it.
* :func:`delete_call` removes everything recorded about one call (a caller's request): the
  call, its sessions, turns, events, parked recorder rows, tool idempotency records, post-call
  analysis and webhook documents. Business records made during the call (bookings, quotes,
  messages, tickets, e-mails) are the business's own and stay; the report counts them so the
  operator can act on them too.

The server runs :func:`run_daily` once a day when ``RELAY_RETENTION_DAYS`` or
``RELAY_MASK_NUMBERS_AFTER_DAYS`` is set; ``relay sessions purge`` and ``relay sessions
delete`` do the same by hand. Every function is idempotent (several workers may run it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import (
    JSON,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    type_coerce,
    update,
)

from relay.privacy import find_number
from relay.storage.db import Database
from relay.storage.models import (
    Booking,
    Call,
    Event,
    Message,
    ParkedRecord,
    Quote,
    RelaySession,
    SideEffect,
    Ticket,
    Turn,
)
from relay.storage.outcomes import CallAnalysis, Email, WebhookDelivery
from relay.storage.textsearch import index_pending

log = structlog.get_logger("relay.services.retention")

DAY = 86_400.0
#: Characters of a number kept when it is masked: "+614" (country and mobile prefix).
KEEP = 4


@dataclass
class Report:
    """Rows changed, by table."""

    rows: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, count: int | None) -> None:
        if count:
            self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def mask(number: str) -> str:
    """``+61412345678`` → ``+614xxxxxxxx``: the prefix kept, every later character an ``x``."""
    if len(number) <= KEEP:
        return number
    return number[:KEEP] + "x" * (len(number) - KEEP)


def is_outbound(direction: str | None) -> bool:
    """Whether the business called (Twilio's ``outbound-api``, ``outbound-dial``): then the
    caller's number is the call's ``to``; otherwise (``inbound``, or not recorded) its ``from``."""
    return (direction or "").startswith("outbound")


async def purge(db: Database, *, older_than_days: float, now: datetime | None = None) -> Report:
    """Delete transcripts, events and model bodies older than ``older_than_days``."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    report = Report()
    async with db.engine.begin() as conn:
        old_calls = select(Call.call_sid).where(Call.started_at < cutoff)
        result = await conn.execute(
            delete(Turn).where(or_(Turn.created_at < cutoff, Turn.call_sid.in_(old_calls)))
        )
        report.add("turns", result.rowcount)
        result = await conn.execute(
            delete(Event).where(or_(Event.at < cutoff, Event.call_sid.in_(old_calls)))
        )
        report.add("events", result.rowcount)
        result = await conn.execute(delete(ParkedRecord).where(ParkedRecord.parked_at < cutoff))
        report.add("parked_records", result.rowcount)
        result = await conn.execute(
            update(Call)
            .where(Call.started_at < cutoff, Call.handoff_data.is_not(None))
            .values(handoff_data=None)
        )
        report.add("calls", result.rowcount)
        # After the call (relay.storage.outcomes): the analysis keeps its outcomes, usage and
        # cost (aggregates) but loses the summary and fields (about the caller); the webhook
        # documents already sent (or given up on) go.
        result = await conn.execute(
            update(CallAnalysis)
            .where(
                CallAnalysis.call_sid.in_(old_calls),
                or_(CallAnalysis.summary.is_not(None), cast(CallAnalysis.fields, Text) != "{}"),
            )
            .values(summary=None, fields={})
        )
        report.add("call_analyses", result.rowcount)
        result = await conn.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.created_at < cutoff, WebhookDelivery.status != "pending"
            )
        )
        report.add("webhook_outbox", result.rowcount)
    log.info("retention_purged", older_than_days=older_than_days, **report.rows)
    return report


async def mask_numbers(
    db: Database, *, older_than_days: float, now: datetime | None = None
) -> Report:
    """Mask the caller's number (and clear the caller's name) of calls older than the cutoff:
    in the call row and wherever its transcript, events, handoff summary and post-call
    documents hold it, in any written form (:func:`relay.privacy.find_number`: the number as
    the caller said it, ``0412 345 678``, becomes ``04xx xxx xxx``). The business's own line
    stays, as in redaction (:mod:`relay.privacy`): it says whose call it was, not who called,
    and a masked recording still replays against it."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    report = Report()
    outbound = Call.direction.like("outbound%")
    # The caller's number: the ``to`` of an outbound call (a reminder), else the ``from``.
    caller = case((outbound, Call.to_number), else_=Call.from_number)
    async with db.engine.begin() as conn:
        rows = (
            await conn.execute(
                select(Call.call_sid, Call.direction, caller).where(
                    Call.started_at < cutoff,
                    or_(
                        and_(func.length(caller) > KEEP, caller.not_like("%x%")),
                        Call.caller_name != "",
                    ),
                )
            )
        ).all()
        texts: list[tuple[Any, Any, str, bool]] = [  # model, text, column, JSON?
            (Turn, Turn.content, "content", False),
            (Event, cast(Event.data, Text), "data", True),
            (ParkedRecord, ParkedRecord.record, "record", False),
            (CallAnalysis, CallAnalysis.summary, "summary", False),
            (CallAnalysis, cast(CallAnalysis.fields, Text), "fields", True),
            (WebhookDelivery, WebhookDelivery.body, "body", False),
        ]
        for call_sid, direction, number in rows:
            callers = "to_number" if is_outbound(direction) else "from_number"
            values: dict[str, Any] = {callers: mask(number), "caller_name": ""}
            if len(number) <= KEEP or "x" in number:
                await conn.execute(update(Call).where(Call.call_sid == call_sid).values(values))
                report.add("calls", 1)
                continue
            # The number as written anywhere in what is stored of the call (the caller says
            # "0412 345 678"), each form masked as the number itself is.
            numbers = {number: mask(number)}
            for model, column in [(Call, Call.handoff_data), *((m, c) for m, c, _, _ in texts)]:
                stored = await conn.scalars(
                    select(column).where(model.call_sid == call_sid, column.is_not(None))
                )
                for text in stored:
                    for written in _written(text, number):
                        numbers.setdefault(written, _mask_written(written, number))
            values["handoff_data"] = _replaced(Call.handoff_data, numbers)
            await conn.execute(update(Call).where(Call.call_sid == call_sid).values(values))
            report.add("calls", 1)
            for model, column, name, is_json in texts:
                changed = _replaced(column, numbers)
                result = await conn.execute(
                    update(model)
                    .where(model.call_sid == call_sid, or_(*[column.contains(n) for n in numbers]))
                    .values({name: _json(db, changed) if is_json else changed})
                )
                report.add(model.__tablename__, result.rowcount)
        if db.is_sqlite and report.rows.get("turns"):
            await index_pending(conn)  # the masked texts, into the search index
    if report.total:
        log.info("retention_masked", older_than_days=older_than_days, **report.rows)
    return report


def _written(text: str, number: str) -> set[str]:
    """The forms ``number`` is written in ``text``; in a JSON document also in its strings
    (read whole, a JSON document held in a string included: a frame's ``raw``), where an
    escape (``\\n0412 345 678``) does not glue a letter to the number."""
    found = set(find_number(text, number))
    if text[:1] in ("{", "["):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return found
        for string in _strings(value):
            for written in _written(string, number):
                found.add(written)
                found.add(orjson.dumps(written).decode()[1:-1])  # as the JSON text holds it
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _mask_written(written: str, number: str) -> str:
    """``written`` (``number`` as written somewhere) masked to keep what :func:`mask` keeps of
    ``number``: its last digits are the national number's, and as many of them become ``x``
    as :func:`mask` hides (``0412 345 678`` -> ``04xx xxx xxx``, ``+61 412 345 678`` ->
    ``+61 4xx xxx xxx``); the separators stay."""
    hidden = len(re.sub(r"\D", "", number)) - (KEEP - 1)
    out = list(written)
    for at in reversed([i for i, c in enumerate(written) if c.isdigit()][-hidden:]):
        out[at] = "x"
    return "".join(out)


def _replaced(column: Any, numbers: dict[str, str]) -> Any:
    """``column`` with every number in ``numbers`` (written form to its mask) masked, longest
    first (one SQL expression)."""
    expression = column
    for written in sorted(numbers, key=len, reverse=True):
        expression = func.replace(expression, written, numbers[written])
    return expression


def _json(db: Database, text: Any) -> Any:
    # SQLite keeps JSON as text; Postgres needs the text cast back to its json type.
    return type_coerce(text, JSON) if db.is_sqlite else cast(text, JSON)


async def delete_call(db: Database, call_sid: str) -> Report:
    """Delete everything recorded about ``call_sid``. ``rows`` also counts (as ``kept_*``) the
    business records made during the call, which are not deleted."""
    report = Report()
    async with db.engine.begin() as conn:
        for model in (
            Turn, Event, RelaySession, SideEffect, ParkedRecord, CallAnalysis, WebhookDelivery,
            Call,
        ):  # fmt: skip
            result = await conn.execute(delete(model).where(model.call_sid == call_sid))
            report.add(model.__tablename__, result.rowcount)
        for kept in (Booking, Quote, Message, Ticket, Email):
            count = await conn.scalar(
                select(func.count()).select_from(kept).where(kept.call_sid == call_sid)
            )
            if count:
                report.rows[f"kept_{kept.__tablename__}"] = int(count)
    log.info("call_deleted", call_sid=call_sid, **report.rows)
    return report


async def run_daily(
    db: Database,
    *,
    retention_days: float | None,
    mask_after_days: float | None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    every: float = DAY,
    first_after: float = 60.0,
) -> None:
    """Purge and mask ``first_after`` seconds after start (not during start-up, when calls
    reconnect), then once every ``every`` seconds, until cancelled. A failure is logged and
    retried at the next round: retention never stops the service."""
    await asyncio.sleep(first_after)
    while True:
        try:
            if retention_days is not None:
                await purge(db, older_than_days=retention_days, now=now())
            if mask_after_days is not None:
                await mask_numbers(db, older_than_days=mask_after_days, now=now())
        except Exception as exc:
            log.error("retention_failed", error=repr(exc)[:300])
        await asyncio.sleep(every)
