"""Tables and units of work of the operator console (``relay.web.console``).

Console users (salted scrypt password hashes), console settings (the cookie-signing secret
shared by every worker), supervisor commands for calls in progress (whisper, take over, end:
written by the console, read by the session that serves the call, on whichever worker) and
booking confirmations. Migration ``0002``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Index, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from relay.storage.db import Database
from relay.storage.models import Base

ROLES = ("owner", "editor")
#: Supervisor command kinds a session acts on.
COMMANDS = ("whisper", "takeover", "end")


class ConsoleUser(Base):
    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsoleSetting(Base):
    __tablename__ = "console_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CallCommand(Base):
    """A supervisor's instruction for a call in progress; the serving session marks it done."""

    __tablename__ = "call_commands"
    __table_args__ = (Index("ix_call_commands_pending", "call_sid", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_sid: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # whisper | takeover | end
    argument: Mapped[str] = mapped_column(Text, default="")  # the note, or the number
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | failed
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BookingConfirmation(Base):
    __tablename__ = "booking_confirmations"

    booking_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    confirmed_by: Mapped[str] = mapped_column(String(64))
    confirmed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ConsoleDaily(Base):
    """One agent's figures for one finished day in the business's time zone (the console's
    analytics rollup; the figures carry the `zone` and `version` they were computed with)."""

    __tablename__ = "console_daily"

    agent: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- passwords ----------------------------------------------------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        given = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(given, expected)


# -- users --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    created_at: datetime
    stamp: str = ""  # see credential_stamp


def credential_stamp(password_hash: str) -> str:
    """Names one setting of a user's password: every hash has a fresh salt, so setting the
    password again (``relay users add`` on an existing user, even with the same password), or
    removing the user and adding them back, gives a new stamp. A console session carries the
    stamp it was begun with and ends when it no longer matches. It tells nothing of the
    password (a digest of the salted hash)."""
    return hashlib.sha256(b"relay-console-user\0" + password_hash.encode()).hexdigest()[:32]


async def add_user(db: Database, username: str, password: str, role: str) -> bool:
    """Add a user, or replace the password and role of an existing one (which ends the
    sessions they began before: :func:`credential_stamp`). True when the user existed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    hashed = hash_password(password)
    async with db.session() as session, session.begin():
        user = await session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
        if user is None:
            session.add(
                ConsoleUser(
                    username=username,
                    password_hash=hashed,
                    role=role,
                    created_at=datetime.now(UTC),
                )
            )
            return False
        user.password_hash, user.role = hashed, role
        return True


async def list_users(db: Database) -> list[UserInfo]:
    async with db.session() as session:
        rows = await session.scalars(select(ConsoleUser).order_by(ConsoleUser.username))
        return [UserInfo(u.username, u.role, u.created_at) for u in rows]


async def remove_user(db: Database, username: str) -> bool:
    async with db.session() as session, session.begin():
        user = await session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
        if user is None:
            return False
        await session.delete(user)
        return True


async def has_users(db: Database) -> bool:
    async with db.session() as session:
        return (await session.scalar(select(ConsoleUser.id).limit(1))) is not None


async def authenticate(db: Database, username: str, password: str) -> UserInfo | None:
    async with db.session() as session:
        user = await session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
    if user is None:
        check_password(password, _DUMMY_HASH)  # the same time whether or not the user exists
        return None
    if not check_password(password, user.password_hash):
        return None
    return UserInfo(user.username, user.role, user.created_at, credential_stamp(user.password_hash))


_DUMMY_HASH = hash_password(secrets.token_hex(8))


async def user_credential(db: Database, username: str) -> tuple[str, str] | None:
    """The user's role and :func:`credential_stamp` (one indexed row), or None when there is
    no such user: what every console request checks its session against."""
    async with db.session() as session:
        row = (
            await session.execute(
                select(ConsoleUser.role, ConsoleUser.password_hash).where(
                    ConsoleUser.username == username
                )
            )
        ).first()
    return None if row is None else (row.role, credential_stamp(row.password_hash))


# -- settings -----------------------------------------------------------------------------


async def shared_secret(db: Database, key: str = "session_secret") -> str:
    """A random secret stored once in the database, so every worker signs the same way."""
    async with db.session() as session:
        value = await session.scalar(select(ConsoleSetting.value).where(ConsoleSetting.key == key))
    if value is not None:
        return value
    try:
        async with db.session() as session, session.begin():
            session.add(ConsoleSetting(key=key, value=secrets.token_urlsafe(32)))
    except IntegrityError:
        pass  # another worker stored it first
    async with db.session() as session:
        stored = await session.scalar(select(ConsoleSetting.value).where(ConsoleSetting.key == key))
    assert stored is not None
    return stored


async def revoke_session(db: Database, nonce: str, expires: int) -> None:
    """Refuse a signed-out session's cookie from now on (until it would have expired anyway);
    forget revocations whose sessions have expired."""
    now = int(datetime.now(UTC).timestamp())
    async with db.session() as session, session.begin():
        if await session.get(ConsoleSetting, f"revoked:{nonce}") is None:
            session.add(ConsoleSetting(key=f"revoked:{nonce}", value=str(expires)))
        stale = await session.scalars(
            select(ConsoleSetting).where(ConsoleSetting.key.like("revoked:%")).limit(1000)
        )
        for row in stale:
            if row.value.isdigit() and int(row.value) < now:
                await session.delete(row)


async def session_revoked(db: Database, nonce: str) -> bool:
    async with db.session() as session:
        return await session.get(ConsoleSetting, f"revoked:{nonce}") is not None


# -- supervisor commands -------------------------------------------------------------------


async def add_command(db: Database, call_sid: str, kind: str, argument: str, by: str) -> int:
    if kind not in COMMANDS:
        raise ValueError(f"unknown command {kind!r}")
    async with db.session() as session, session.begin():
        command = CallCommand(
            call_sid=call_sid,
            kind=kind,
            argument=argument,
            created_by=by,
            created_at=datetime.now(UTC),
            status="pending",
        )
        session.add(command)
        await session.flush()
        return command.id


@dataclass(frozen=True)
class PendingCommand:
    id: int
    kind: str
    argument: str
    created_by: str


async def take_commands(db: Database, call_sid: str) -> list[PendingCommand]:
    """The call's pending commands, oldest first, marked done (each is acted on once)."""
    async with db.session() as session, session.begin():
        rows = (
            await session.scalars(
                select(CallCommand)
                .where(CallCommand.call_sid == call_sid, CallCommand.status == "pending")
                .order_by(CallCommand.id)
            )
        ).all()
        if not rows:
            return []
        ids = [row.id for row in rows]
        result = await session.execute(
            update(CallCommand)
            .where(CallCommand.id.in_(ids), CallCommand.status == "pending")
            .values(status="done", done_at=datetime.now(UTC))
        )
        if result.rowcount != len(ids):  # type: ignore[attr-defined]  # another reader won
            return []
        return [PendingCommand(r.id, r.kind, r.argument, r.created_by) for r in rows]


async def take_pending(db: Database, call_sids: list[str]) -> list[tuple[str, PendingCommand]]:
    """Every pending command of these calls, oldest first, marked done in the same
    transaction (one query for all of a worker's calls; each command is acted on once)."""
    if not call_sids:
        return []
    async with db.session() as session, session.begin():
        rows = (
            await session.scalars(
                select(CallCommand)
                .where(CallCommand.status == "pending", CallCommand.call_sid.in_(call_sids))
                .order_by(CallCommand.id)
            )
        ).all()
        if not rows:
            return []
        await session.execute(
            update(CallCommand)
            .where(CallCommand.id.in_([r.id for r in rows]))
            .values(status="done", done_at=datetime.now(UTC))
        )
        return [(r.call_sid, PendingCommand(r.id, r.kind, r.argument, r.created_by)) for r in rows]
