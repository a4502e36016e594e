"""What a call achieved and cost, the post-call webhook outbox, and sent e-mails.

Tables of their own (migration ``0004``), kept apart from ``models.py``'s recording tables:
they are written after a call ends, never on its hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from relay.storage.db import Database
from relay.storage.models import Base, UtcDateTime


class CallAnalysis(Base):
    """One call's outcomes, agent-specific fields, token usage and cost."""

    __tablename__ = "call_analyses"
    __table_args__ = (
        Index("ix_call_analyses_agent_ended_computed", "agent", "ended_at", "computed_at"),
    )

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent: Mapped[str] = mapped_column(String(64))
    ending: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcomes: Mapped[list[Any]] = mapped_column(JSON)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost_total: Mapped[float] = mapped_column(Float, default=0.0)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    analysed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    analysis_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookDelivery(Base):
    """The outbox: one post-call document per call and URL, delivered at most once."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        UniqueConstraint("call_sid", "url"),
        Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(String(64))
    agent: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | parked
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Email(Base):
    """An e-mail relay sent (a quote to a caller, a notification to the owner)."""

    __tablename__ = "emails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(64))
    call_sid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # quote | notification
    to_address: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # sent | failed | unknown
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


async def get_analysis(db: Database, call_sid: str) -> CallAnalysis | None:
    async with db.session() as session:
        return await session.get(CallAnalysis, call_sid)


async def save_analysis(db: Database, values: dict[str, Any]) -> None:
    """Insert or replace a call's analysis (``values`` holds every column): one upsert, where
    the ORM's ``merge`` read the row first."""
    statement = db.insert(CallAnalysis).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["call_sid"],
        set_={name: statement.excluded[name] for name in values if name != "call_sid"},
    )
    async with db.session() as session, session.begin():
        await session.execute(statement)


async def analyses(
    db: Database,
    *,
    agent: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sequence[CallAnalysis]:
    query = select(CallAnalysis).order_by(CallAnalysis.ended_at)
    if agent:
        query = query.where(CallAnalysis.agent == agent)
    if since:
        query = query.where(CallAnalysis.ended_at >= since)
    if until:
        query = query.where(CallAnalysis.ended_at < until)
    async with db.session() as session:
        return (await session.scalars(query)).all()
