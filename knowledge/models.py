"""Plain data passed in and out of the knowledge layer: documents, chunks, reports and hits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

FileStatus = Literal["added", "updated", "unchanged", "failed", "deleted"]


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading path, e.g. ``("Pricing", "Upright pianos")``.

    ``text`` holds paragraphs separated by blank lines.
    """

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded file: its title and ordered sections, before chunking."""

    title: str
    sections: tuple[Section, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document small enough to embed.

    ``text`` is the raw text; ``embed_text`` prefixes it with the title and heading path, which
    is what goes to the embedder (a chunk about "cost" under "Pricing > Grand pianos" is found
    by a question about grand pianos).
    """

    id: str
    doc_id: str
    position: int
    heading_path: tuple[str, ...]
    text: str
    embed_text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file of an ingest."""

    path: str
    doc_id: str
    status: FileStatus
    chunks: int = 0
    error: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class IngestReport:
    """Per-file results of :meth:`KnowledgeStore.add` or :meth:`KnowledgeStore.sync`."""

    files: tuple[FileResult, ...] = ()
    seconds: float = 0.0

    def _count(self, status: FileStatus) -> int:
        return Counter(f.status for f in self.files)[status]

    @property
    def added(self) -> int:
        return self._count("added")

    @property
    def updated(self) -> int:
        return self._count("updated")

    @property
    def unchanged(self) -> int:
        return self._count("unchanged")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def deleted(self) -> int:
        return self._count("deleted")

    @property
    def chunks_written(self) -> int:
        """Chunks written by added and updated documents."""
        return sum(f.chunks for f in self.files if f.status in ("added", "updated"))

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return self.failed == 0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.deleted} deleted, {self.failed} failed; "
            f"{self.chunks_written} chunks written in {self.seconds:.2f}s"
        )


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``score`` is cosine similarity (1 - cosine distance)."""

    chunk_id: str
    doc_id: str
    doc_version: int
    source: str
    heading_path: list[str]
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    """One recorded version of a document."""

    version: int
    sha256: str
    chunks: int
    loaded_at: str
    removed_at: str | None = None


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A document currently in a collection (its latest version)."""

    doc_id: str
    source: str
    version: int
    sha256: str
    chunks: int
    loaded_at: str


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """A stored chunk, as :meth:`KnowledgeStore.show` lists it."""

    chunk_id: str
    position: int
    heading_path: list[str]
    tokens: int
    preview: str


@dataclass(frozen=True, slots=True)
class DocumentDetail:
    """A document with its version history (oldest first) and its current chunks.

    For a removed document ``info`` is its last version and ``chunks`` is empty.
    """

    info: DocumentInfo
    versions: list[DocumentVersion] = field(default_factory=list)
    chunks: list[ChunkInfo] = field(default_factory=list)

    @property
    def removed(self) -> bool:
        """True when the document was removed (its history is kept)."""
        return bool(self.versions) and self.versions[-1].removed_at is not None
