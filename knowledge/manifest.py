"""The version history of every document, in a small SQLite file beside the vectors.

One row per version of a document: its content hash, chunk count and load time, and when it
was removed. Chroma holds the current chunks; the manifest remembers how they got there. Each
call opens its own short-lived connection, so a manifest is safe to use from any thread and
from several processes (SQLite locks the file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from knowledge.errors import StoreUnavailable
from knowledge.models import DocumentInfo, DocumentVersion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS document_versions (
    collection  TEXT    NOT NULL,
    doc_id      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    pipeline    TEXT    NOT NULL,
    chunks      INTEGER NOT NULL,
    loaded_at   TEXT    NOT NULL,
    removed_at  TEXT,
    PRIMARY KEY (collection, doc_id, version)
);
CREATE TABLE IF NOT EXISTS store_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_generation (id, generation) VALUES (1, 0);
"""
_BUMP = "UPDATE store_generation SET generation = generation + 1 RETURNING generation"


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class Manifest:
    """Document versions per collection, stored in SQLite at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        #: The generation this object's last change moved the store to.
        self.written_generation = 0

    def _bump(self, conn: sqlite3.Connection) -> None:
        (generation,) = conn.execute(_BUMP).fetchone()
        self.written_generation = int(generation)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(_SCHEMA)
                    self._ready = True
                with conn:  # one transaction, committed or rolled back
                    yield conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"knowledge manifest {self.path}: {exc}") from exc

    def generation(self) -> int:
        """A counter that every change of any collection increments (in every process that
        shares the manifest): readers compare it to notice documents changed under them."""
        with self._connect() as conn:
            (value,) = conn.execute("SELECT generation FROM store_generation").fetchone()
        return int(value)

    def current(self, collection: str, doc_id: str) -> tuple[DocumentInfo, str] | None:
        """The live version of a document and its pipeline fingerprint, or None."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT doc_id, source, version, sha256, chunks, loaded_at, pipeline "
                "FROM document_versions WHERE collection = ? AND doc_id = ? "
                "AND removed_at IS NULL ORDER BY version DESC LIMIT 1",
                (collection, doc_id),
            ).fetchone()
        if row is None:
            return None
        return DocumentInfo(*row[:6]), row[6]

    def latest(self, collection: str, doc_id: str) -> DocumentInfo | None:
        """The newest recorded version of a document, live or removed."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT doc_id, source, version, sha256, chunks, loaded_at "
                "FROM document_versions WHERE collection = ? AND doc_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (collection, doc_id),
            ).fetchone()
        return None if row is None else DocumentInfo(*row)

    def next_version(self, collection: str, doc_id: str) -> int:
        """One more than the highest version ever recorded for the document."""
        with self._connect() as conn:
            (latest,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM document_versions "
                "WHERE collection = ? AND doc_id = ?",
                (collection, doc_id),
            ).fetchone()
        return int(latest) + 1

    def record(
        self,
        collection: str,
        info: DocumentInfo,
        *,
        pipeline: str,
    ) -> None:
        """Record a new live version; every earlier live version is marked removed."""
        with self._connect() as conn:
            conn.execute(
                "UPDATE document_versions SET removed_at = ? "
                "WHERE collection = ? AND doc_id = ? AND removed_at IS NULL",
                (info.loaded_at, collection, info.doc_id),
            )
            conn.execute(
                "INSERT INTO document_versions (collection, doc_id, version, source, sha256, "
                "pipeline, chunks, loaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    collection,
                    info.doc_id,
                    info.version,
                    info.source,
                    info.sha256,
                    pipeline,
                    info.chunks,
                    info.loaded_at,
                ),
            )
            self._bump(conn)

    def mark_removed(self, collection: str, doc_id: str) -> bool:
        """Mark the live version removed; False if there was none."""
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE document_versions SET removed_at = ? "
                "WHERE collection = ? AND doc_id = ? AND removed_at IS NULL",
                (utc_now(), collection, doc_id),
            )
            removed = cursor.rowcount > 0
            self._bump(conn)  # the chunks may have gone even without a version
        return removed

    def documents(self, collection: str) -> list[DocumentInfo]:
        """Live documents of a collection, by id."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT doc_id, source, version, sha256, chunks, loaded_at "
                "FROM document_versions WHERE collection = ? AND removed_at IS NULL "
                "ORDER BY doc_id",
                (collection,),
            ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def versions(self, collection: str, doc_id: str) -> list[DocumentVersion]:
        """Every recorded version of a document, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version, sha256, chunks, loaded_at, removed_at FROM document_versions "
                "WHERE collection = ? AND doc_id = ? ORDER BY version",
                (collection, doc_id),
            ).fetchall()
        return [DocumentVersion(*row) for row in rows]

    def drop(self, collection: str) -> None:
        """Forget a collection's history."""
        with self._connect() as conn:
            conn.execute("DELETE FROM document_versions WHERE collection = ?", (collection,))
            self._bump(conn)
