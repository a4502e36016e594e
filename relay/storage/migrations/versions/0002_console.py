"""operator console: users, settings, supervisor commands, booking confirmations; indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "console_settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "call_commands",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("argument", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_call_commands_pending", "call_commands", ["call_sid", "status"])
    op.create_table(
        "booking_confirmations",
        sa.Column("booking_id", sa.String(length=16), nullable=False),
        sa.Column("confirmed_by", sa.String(length=64), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("booking_id"),
    )
    op.create_table(
        "console_daily",
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agent", "day"),
    )
    # What the console's lists and analytics filter and sort by (100,000 calls and more).
    op.create_index("ix_calls_agent_started", "calls", ["agent", "started_at"])
    op.create_index("ix_calls_ended_started", "calls", ["ended_at", "started_at"])
    op.create_index("ix_calls_outcome_started", "calls", ["outcome", "started_at"])
    op.create_index("ix_calls_from_number", "calls", ["from_number", "call_sid"])
    op.create_index("ix_quotes_created", "quotes", ["created_at"])
    op.create_index("ix_tickets_status_created", "tickets", ["status", "created_at"])
    op.create_index("ix_messages_created", "messages", ["created_at"])
    op.create_index("ix_bookings_created", "bookings", ["created_at"])
    # "Words said": a full-text index of the turns, kept by the database itself.
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    else:
        op.execute(
            "CREATE INDEX ix_turns_content_fts ON turns USING gin (to_tsvector('simple', content))"
        )


#: An external-content FTS5 table over turns.content, kept in step by triggers (an update that
#: leaves the text alone costs nothing), and filled from the turns already stored.
SQLITE_FTS = (
    "CREATE VIRTUAL TABLE turns_fts USING fts5(content, content='turns', content_rowid='id')",
    "CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN "
    "INSERT INTO turns_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN "
    "INSERT INTO turns_fts(turns_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER turns_fts_update AFTER UPDATE OF content ON turns "
    "WHEN old.content IS NOT new.content BEGIN "
    "INSERT INTO turns_fts(turns_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO turns_fts(rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO turns_fts(turns_fts) VALUES ('rebuild')",
)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("turns_fts_insert", "turns_fts_delete", "turns_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS turns_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_turns_content_fts")
    for index, table in (
        ("ix_bookings_created", "bookings"),
        ("ix_messages_created", "messages"),
        ("ix_tickets_status_created", "tickets"),
        ("ix_quotes_created", "quotes"),
        ("ix_calls_from_number", "calls"),
        ("ix_calls_outcome_started", "calls"),
        ("ix_calls_ended_started", "calls"),
        ("ix_calls_agent_started", "calls"),
    ):
        op.drop_index(index, table_name=table)
    op.drop_table("console_daily")
    op.drop_table("booking_confirmations")
    op.drop_index("ix_call_commands_pending", table_name="call_commands")
    op.drop_table("call_commands")
    op.drop_table("console_settings")
    op.drop_table("console_users")
