"""The transcript search index on SQLite (FTS5 ``turns_fts``), filled in batches.

Since migration 0006 a trigger only queues each new turn row (and each row whose text changed)
in ``turns_fts_pending``; :func:`index_pending` indexes the queue in one statement and empties
it. Indexing each row from its trigger cost 43 µs a row, and a busy line writes two or three
turn rows a turn. The recorder calls it in each of its write transactions, so a turn it stores
is searchable when it is stored; the console calls it before it searches, and the retention
job after it masks text, so rows anything else wrote are found too. PostgreSQL's index is an
expression index and needs none of this.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["INDEX_PENDING", "PENDING_TABLE", "has_pending", "index_pending"]

PENDING_TABLE: Final = "turns_fts_pending"
_INDEX: Final = (
    "INSERT INTO turns_fts(rowid, content) "
    f"SELECT t.id, t.content FROM {PENDING_TABLE} p JOIN turns t ON t.id = p.id"
)
_CLEAR: Final = f"DELETE FROM {PENDING_TABLE}"
#: The statements of :func:`index_pending`, for a plain ``sqlite3`` connection.
INDEX_PENDING: Final = (_INDEX, _CLEAR)


async def has_pending(conn: AsyncConnection) -> bool:
    """Whether any turn waits to be indexed (a read)."""
    found = await conn.exec_driver_sql(f"SELECT 1 FROM {PENDING_TABLE} LIMIT 1")
    return found.first() is not None


async def index_pending(conn: AsyncConnection, *, check: bool = True) -> bool:
    """Index the queued turns and empty the queue, in ``conn``'s transaction (SQLite only).

    With ``check``, first look whether any wait (:func:`has_pending`), and write nothing if none
    do; returns whether it indexed (or, without ``check``, tried to)."""
    if check and not await has_pending(conn):
        return False
    await conn.exec_driver_sql(_INDEX)
    await conn.exec_driver_sql(_CLEAR)
    return True
