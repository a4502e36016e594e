"""Repository functions for the business tables: customers, vehicles, quotes and bookings.

Two rules keep bookings right:

* **Times are stored in UTC.** SQLite keeps no UTC offset, so an aware local time would be
  stored as its wall clock and read back as UTC, hours off. :func:`utc` converts before a write
  or a comparison; :func:`aware` puts UTC back on what SQLite returns.
* **Capacity is checked under a lock.** :func:`booking_transaction` opens a write transaction
  that holds a lock from its first statement (``BEGIN IMMEDIATE`` on SQLite, a transaction-level
  advisory lock on Postgres), so two calls racing for the last free slot are served one after
  the other: the second sees the first one's booking and is offered other times.
"""

from __future__ import annotations

import contextlib
import secrets
import zlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from relay.domain.scheduling import Interval
from relay.errors import StorageError
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Quote, Vehicle

__all__ = [
    "BookingsBusy",
    "aware",
    "booking_transaction",
    "busy_intervals",
    "customer_by_phone",
    "ensure_customer",
    "new_booking_id",
    "new_quote_id",
    "upcoming_bookings",
    "utc",
    "vehicle_by_rego",
]

# Bookings hold a car bay or a crew for hours, never for days; a search this much wider than
# the period asked about finds every booking that overlaps it.
_LONGEST_BOOKING = timedelta(days=1)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC, for writing or comparing. Refuses a naive datetime."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def aware(moment: datetime) -> datetime:
    """A stored time made aware again (SQLite returns naive UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class BookingsBusy(StorageError):
    """The booking lock could not be taken in time (another booking held it too long)."""


@contextlib.asynccontextmanager
async def booking_transaction(db: Database, *, scope: str) -> AsyncIterator[AsyncSession]:
    """A unit of work that holds the booking lock for ``scope`` (an agent name) until it ends.

    Commits when the block finishes, rolls back when it raises. Keep the block short: on SQLite
    the lock is the database's single write lock. Raises :class:`BookingsBusy` when the lock is
    not free within the database's busy timeout.
    """
    async with db.session() as session:
        try:
            if db.is_sqlite:
                # The first statement on a fresh connection: sqlite3 has not begun a transaction
                # of its own, and BEGIN IMMEDIATE takes the write lock now rather than at the
                # first INSERT, so the capacity check below happens under it.
                await session.execute(text("BEGIN IMMEDIATE"))
            else:
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(scope)}
                )
        except OperationalError as exc:
            raise BookingsBusy(f"the booking lock for {scope!r} is busy: {exc.orig}") from exc
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


def _lock_key(scope: str) -> int:
    # A stable key for pg_advisory_xact_lock(bigint), the same in every process.
    return zlib.crc32(f"relay-bookings:{scope}".encode()) - 2**31


async def busy_intervals(
    session: AsyncSession,
    *,
    agent: str,
    start: datetime,
    end: datetime,
    exclude: str | None = None,
) -> list[Interval]:
    """Booked (not cancelled) periods of ``agent`` that may overlap [start, end)."""
    query = select(Booking.starts_at, Booking.ends_at).where(
        Booking.agent == agent,
        Booking.status == "booked",
        Booking.starts_at < utc(end),
        Booking.starts_at >= utc(start) - _LONGEST_BOOKING,
    )
    if exclude is not None:
        query = query.where(Booking.id != exclude)
    rows = (await session.execute(query)).all()
    return [
        Interval(aware(starts), aware(ends)) for starts, ends in rows if aware(ends) > utc(start)
    ]


async def new_booking_id(session: AsyncSession) -> str:
    """A free six-digit booking reference: easy to say, and to type on a keypad."""
    while True:
        candidate = str(100000 + secrets.randbelow(900000))
        if await session.get(Booking, candidate) is None:
            return candidate


async def new_quote_id(session: AsyncSession) -> str:
    """A free quote id such as ``Q482913`` (the letter keeps it apart from booking references)."""
    while True:
        candidate = f"Q{100000 + secrets.randbelow(900000)}"
        if await session.get(Quote, candidate) is None:
            return candidate


async def customer_by_phone(session: AsyncSession, phone: str) -> Customer | None:
    return await session.scalar(select(Customer).where(Customer.phone == phone))


async def ensure_customer(
    session: AsyncSession, *, phone: str, name: str | None, now: datetime
) -> Customer:
    """The customer with ``phone``, created if new. An existing name is never overwritten: the
    person calling may be booking for someone else in the household."""
    customer = await customer_by_phone(session, phone)
    if customer is None:
        customer = Customer(
            phone=phone, name=(name or "").strip() or "Unknown", created_at=utc(now)
        )
        session.add(customer)
        await session.flush()
    elif customer.name == "Unknown" and name and name.strip():
        customer.name = name.strip()
    return customer


async def vehicle_by_rego(session: AsyncSession, rego: str) -> Vehicle | None:
    """The vehicle with this registration (already normalised: upper case, no spaces)."""
    return await session.scalar(select(Vehicle).where(Vehicle.rego == rego).limit(1))


async def upcoming_bookings(
    session: AsyncSession,
    *,
    agent: str,
    phone: str,
    now: datetime,
    limit: int = 5,
) -> Sequence[Booking]:
    """``phone``'s booked (not cancelled) bookings with ``agent`` that have not ended yet."""
    rows = await session.scalars(
        select(Booking)
        .where(
            Booking.agent == agent,
            Booking.phone == phone,
            Booking.status == "booked",
            Booking.ends_at > utc(now),
        )
        .order_by(Booking.starts_at)
        .limit(limit)
    )
    return rows.all()
