"""Tables. One module so the migration history has one source of truth."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Appended to a value cut to its column's length.
TRUNCATED = "…"


class Bounded(TypeDecorator[str]):
    """``VARCHAR(n)`` that never refuses a row: on databases that enforce the length
    (PostgreSQL), a longer value is cut to ``n`` characters ending in ``…``. SQLite does not
    enforce lengths, so there the value is stored whole (and no Python runs per value)."""

    impl = String
    cache_ok = True

    @property
    def python_type(self) -> type[Any]:
        return str

    def bind_processor(self, dialect: Dialect) -> Any:
        length = self.impl_instance.length  # type: ignore[attr-defined]
        if dialect.name == "sqlite" or not length:
            return None

        def cut(value: Any) -> Any:
            if isinstance(value, str) and len(value) > length:
                return value[: length - len(TRUNCATED)] + TRUNCATED
            return value

        return cut


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC time, read back the same on every database: a naive ``datetime`` in UTC.

    SQLite stores and returns naive values; PostgreSQL's ``timestamptz`` returns aware ones,
    which the rest of relay (written against naive UTC) could not compare with its own. On
    PostgreSQL a naive value is bound as UTC and values read are converted to naive UTC. On
    SQLite the dialect's own processing runs unchanged (no extra Python per value).
    """

    impl = DateTime
    cache_ok = True

    @property
    def python_type(self) -> type[Any]:
        return datetime

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def bind_processor(self, dialect: Dialect) -> Any:
        inner = self.impl_instance.dialect_impl(dialect).bind_processor(dialect)
        if dialect.name == "sqlite":
            return inner

        def bind(value: Any) -> Any:
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return inner(value) if inner is not None else value

        return bind

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        inner = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        if dialect.name == "sqlite":
            return inner

        def result(value: Any) -> Any:
            if inner is not None:
                value = inner(value)
            if isinstance(value, datetime) and value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            return value

        return result


# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Call(Base):
    """One phone call (one CallSid), across every relay session it had."""

    __tablename__ = "calls"

    call_sid: Mapped[str] = mapped_column(Bounded(64), primary_key=True)
    agent: Mapped[str] = mapped_column(Bounded(64), index=True)
    from_number: Mapped[str] = mapped_column(Bounded(64), default="")
    to_number: Mapped[str] = mapped_column(Bounded(64), default="")
    direction: Mapped[str] = mapped_column(Bounded(32), default="")
    caller_name: Mapped[str] = mapped_column(Bounded(128), default="")
    status: Mapped[str] = mapped_column(Bounded(32), default="in-progress")
    outcome: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    handoff_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    customer_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    # Sockets Twilio reconnected by itself (applicationReconnect; relay.call.reconnect).
    reconnects: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RelaySession(Base):
    """One ConversationRelay WebSocket session (a call has more than one after a reconnect)."""

    __tablename__ = "sessions"

    session_id: Mapped[str] = mapped_column(Bounded(64), primary_key=True)
    call_sid: Mapped[str] = mapped_column(Bounded(64), index=True)
    agent: Mapped[str] = mapped_column(Bounded(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    close_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resumed: Mapped[bool] = mapped_column(Boolean, default=False)
    frames_in: Mapped[int] = mapped_column(Integer, default=0)
    frames_out: Mapped[int] = mapped_column(Integer, default=0)


class Turn(Base):
    """One message of the conversation history, with its timings.

    Timings are ``time.perf_counter()`` seconds of the process that served the turn; the
    ``*_ms`` columns are the derived latencies from the prompt, for querying.
    """

    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("call_sid", "seq"),
        Index("ix_turns_call", "call_sid", "seq"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(Bounded(64))
    session_id: Mapped[str] = mapped_column(Bounded(64))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(Bounded(16))  # user | assistant | tool
    content: Mapped[str] = mapped_column(Text, default="")
    lang: Mapped[str | None] = mapped_column(Bounded(16), nullable=True)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    heard_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    spoken_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    tool_call_id: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    tool_name: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    retrieval: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_received_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    retrieval_done_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    llm_request_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_token_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_frame_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_token_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_token_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    first_frame_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Event(Base):
    """Everything that happened on a session, in order: the recording replay uses."""

    __tablename__ = "events"
    # a call's events are always read in id order (migration 0007)
    __table_args__ = (Index("ix_events_call_id", "call_sid", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(Bounded(64))
    session_id: Mapped[str] = mapped_column(Bounded(64))
    seq: Mapped[int] = mapped_column(Integer)
    t: Mapped[float] = mapped_column(Float)  # perf_counter seconds
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(Bounded(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    phone: Mapped[str] = mapped_column(Bounded(32), unique=True)
    name: Mapped[str] = mapped_column(Bounded(128))
    email: Mapped[str | None] = mapped_column(Bounded(256), nullable=True)
    address: Mapped[str | None] = mapped_column(Bounded(256), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Vehicle(Base):
    __tablename__ = "vehicles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    make: Mapped[str] = mapped_column(Bounded(64))
    model: Mapped[str] = mapped_column(Bounded(64))
    year: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rego: Mapped[str | None] = mapped_column(Bounded(16), nullable=True, index=True)
    odometer_km: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_service: Mapped[date | None] = mapped_column(Date, nullable=True)


class Quote(Base):
    __tablename__ = "quotes"

    id: Mapped[str] = mapped_column(Bounded(16), primary_key=True)
    agent: Mapped[str] = mapped_column(Bounded(64))
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True, index=True)
    caller: Mapped[str | None] = mapped_column(Bounded(32), nullable=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    breakdown: Mapped[list[Any]] = mapped_column(JSON)
    total_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(Bounded(3))
    move_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    valid_until: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str] = mapped_column(Bounded(16), default="quoted")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Booking(Base):
    """A booked piano move (one per quote) or a service appointment."""

    __tablename__ = "bookings"

    id: Mapped[str] = mapped_column(Bounded(16), primary_key=True)
    agent: Mapped[str] = mapped_column(Bounded(64), index=True)
    kind: Mapped[str] = mapped_column(Bounded(16))  # move | appointment
    quote_id: Mapped[str | None] = mapped_column(
        ForeignKey("quotes.id"), nullable=True, unique=True
    )
    service: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    customer_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    vehicle_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    phone: Mapped[str | None] = mapped_column(Bounded(32), nullable=True, index=True)
    name: Mapped[str | None] = mapped_column(Bounded(128), nullable=True)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(Bounded(16), default="booked")  # booked | cancelled
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Message(Base):
    """An SMS sent through Twilio's Messages API."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(Bounded(64))
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    to_number: Mapped[str] = mapped_column(Bounded(32))
    from_number: Mapped[str] = mapped_column(Bounded(32))
    body: Mapped[str] = mapped_column(Text)
    twilio_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    status: Mapped[str] = mapped_column(Bounded(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Ticket(Base):
    """A callback request taken when no person could take the call."""

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(Bounded(64))
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    name: Mapped[str] = mapped_column(Bounded(128))
    phone: Mapped[str] = mapped_column(Bounded(32))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Bounded(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SideEffect(Base):
    """The idempotency ledger: one row per side effect key, with the result it produced."""

    __tablename__ = "side_effects"

    key: Mapped[str] = mapped_column(Bounded(128), primary_key=True)
    tool: Mapped[str] = mapped_column(Bounded(64))
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True)
    status: Mapped[str] = mapped_column(Bounded(16))  # running | done | failed
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ParkedRecord(Base):
    """A record the recorder could not write (the database refused that row alone): kept here
    whole, with the error, for an operator to read (``relay sessions parked``) or fix up."""

    __tablename__ = "parked_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    table_name: Mapped[str] = mapped_column(Bounded(32))
    call_sid: Mapped[str | None] = mapped_column(Bounded(64), nullable=True, index=True)
    record: Mapped[str] = mapped_column(Text)  # the row as JSON
    error: Mapped[str] = mapped_column(Text)
    parked_at: Mapped[datetime] = mapped_column(UtcDateTime())
