"""transcript search index filled in batches: triggers queue the turns, one statement indexes them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 08:00:00

SQLite only (PostgreSQL's index is an expression index, kept by the database). Migration 0002's
triggers indexed each turn row in ``turns_fts`` as it was written: 43 µs a row, against 17 µs
for the same rows indexed by one statement per transaction (a one-off script, 44,000 rows in
batches of 110; 9 µs a row with no index). Now the insert trigger only queues the row's id in
``turns_fts_pending``; :func:`relay.storage.textsearch.index_pending` indexes the queue and
empties it, in the recorder's every write and before the console searches. A row whose text
changes after it was indexed leaves the index (``delete``) and is queued again; a row deleted
while queued only leaves the queue.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op
from alembic.script import ScriptDirectory

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_QUEUED = "EXISTS (SELECT 1 FROM turns_fts_pending WHERE id = old.id)"

UPGRADE = (
    "CREATE TABLE turns_fts_pending (id INTEGER NOT NULL PRIMARY KEY)",
    "DROP TRIGGER IF EXISTS turns_fts_insert",
    "DROP TRIGGER IF EXISTS turns_fts_update",
    "DROP TRIGGER IF EXISTS turns_fts_delete",
    "CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN "
    "INSERT OR IGNORE INTO turns_fts_pending(id) VALUES (new.id); END",
    "CREATE TRIGGER turns_fts_update AFTER UPDATE OF content ON turns "
    "WHEN old.content IS NOT new.content BEGIN "
    "INSERT INTO turns_fts(turns_fts, rowid, content) "
    f"SELECT 'delete', old.id, old.content WHERE NOT {_QUEUED}; "
    "INSERT OR IGNORE INTO turns_fts_pending(id) VALUES (new.id); END",
    "CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN "
    "INSERT INTO turns_fts(turns_fts, rowid, content) "
    f"SELECT 'delete', old.id, old.content WHERE NOT {_QUEUED}; "
    "DELETE FROM turns_fts_pending WHERE id = old.id; END",
)

#: Index what waits, then migration 0002's own triggers again (read from 0002, not restated).
DOWNGRADE = (
    "INSERT INTO turns_fts(rowid, content) "
    "SELECT t.id, t.content FROM turns_fts_pending p JOIN turns t ON t.id = p.id",
    "DROP TRIGGER IF EXISTS turns_fts_insert",
    "DROP TRIGGER IF EXISTS turns_fts_update",
    "DROP TRIGGER IF EXISTS turns_fts_delete",
    "DROP TABLE IF EXISTS turns_fts_pending",
)


def _triggers_of_0002() -> list[str]:
    """The ``CREATE TRIGGER`` statements of migration 0002's ``SQLITE_FTS``."""
    script = ScriptDirectory(str(Path(__file__).resolve().parents[1])).get_revision("0002")
    assert script is not None
    return [s for s in script.module.SQLITE_FTS if s.startswith("CREATE TRIGGER")]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in (*DOWNGRADE, *_triggers_of_0002()):
            op.execute(statement)
