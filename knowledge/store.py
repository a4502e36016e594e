"""The knowledge store: files in, searchable chunks out.

:class:`KnowledgeStore` is synchronous (Chroma's embedded client and onnxruntime block);
:class:`knowledge.aio.AsyncKnowledge` runs it in worker threads for the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowledge.backend import ChromaBackend, check_collection_name
from knowledge.chunking import Chunker
from knowledge.embedders import Embedder, LocalEmbedder
from knowledge.errors import (
    DocumentError,
    EmbeddingError,
    KnowledgeError,
    UnknownCollection,
    UnknownDocument,
)
from knowledge.ids import document_id, safe_relative_name, sha256_hex
from knowledge.loaders import load_document, loader_for
from knowledge.loading import LoadingProcess
from knowledge.manifest import Manifest, utc_now
from knowledge.models import (
    Chunk,
    ChunkInfo,
    DocumentDetail,
    DocumentInfo,
    FileResult,
    FileStatus,
    Hit,
    IngestReport,
)
from knowledge.tokens import WordPieceCounter

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger("knowledge")

Progress = Callable[[FileResult], None]

MANIFEST_FILE = "knowledge-manifest.sqlite3"
LOADERS_VERSION = 1
#: Texts per embedder call while ingesting (also the Chroma write batch).
EMBED_BATCH = 64


class KnowledgeStore:
    """Documents → chunks → vectors, per named collection (one per agent knowledge base).

    Args:
        path: Local data directory. Holds the embedded Chroma store and, in every mode, the
            document manifest (version history).
        url: A Chroma server (``http://host:8000``). Vectors then live on the server; without
            ``path`` only searching works (loading documents needs the manifest).
        embedder: Defaults to :class:`~knowledge.embedders.LocalEmbedder` (offline MiniLM).
        max_file_bytes: Larger files are refused.
        max_tokens: Chunk size limit in model tokens (the model's own limit is 256).
        overlap_tokens: At most this many tokens repeat between consecutive chunks.
        refresh_interval: How often (seconds) to look whether another process (the CLI, another
            worker) changed the documents; when it did, the store reopens its Chroma client
            (embedded) or forgets its collection handles (server), so the change is seen
            without a restart. 0 looks on every call.
        loading_process: Parse, chunk and embed documents in a child process on idle cores
            (:class:`~knowledge.loading.LoadingProcess`), for a process that serves calls
            too. Only with a :class:`~knowledge.embedders.LocalEmbedder`: an embedding API
            spends no local CPU.

    Thread-safe: searches run concurrently; writes are serialised by a lock. Call
    :meth:`close` (or use it as a context manager) when done.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        url: str | None = None,
        embedder: Embedder | None = None,
        max_file_bytes: int = 20_000_000,
        max_tokens: int = 220,
        overlap_tokens: int = 40,
        refresh_interval: float = 1.0,
        loading_process: bool = False,
    ) -> None:
        if path is None and url is None:
            raise ValueError("give path (embedded store) or url (Chroma server)")
        self.embedder: Embedder = embedder or LocalEmbedder()
        self.max_file_bytes = max_file_bytes
        self.chunker = Chunker(
            WordPieceCounter(), max_tokens=max_tokens, overlap_tokens=overlap_tokens
        )
        #: Where documents are parsed, chunked and embedded when not in this process.
        self.loading: LoadingProcess | None = None
        if loading_process and isinstance(self.embedder, LocalEmbedder):
            self.loading = LoadingProcess(
                self.embedder, max_tokens=max_tokens, overlap_tokens=overlap_tokens
            )
        self._backend = ChromaBackend(path=None if url else path, url=url)
        self._manifest = Manifest(path / MANIFEST_FILE) if path is not None else None
        self._write_lock = threading.RLock()
        self.refresh_interval = refresh_interval
        self.reloads = 0  # times the store reopened after a change made elsewhere
        self._refresh_lock = threading.Lock()
        self._generation: int | None = None  # the manifest's generation last seen
        self._next_check = 0.0

    @property
    def pipeline(self) -> str:
        """Fingerprint of loading and chunking; a change re-chunks unchanged files."""
        return f"loaders-v{LOADERS_VERSION}:{self.chunker.fingerprint}"

    # -- setup ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the Chroma client (HTTP connections, file handles). Safe to call twice;
        the store reopens on next use."""
        if self.loading is not None:
            self.loading.close()
        self._backend.close()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def warm_up(self) -> None:
        """Open the store and load the embedding model now, not on the first call."""
        self._backend.ping()
        load = getattr(self.embedder, "load", None)
        if callable(load):
            load()
        self.embedder.embed(["warm up"])

    def ping(self) -> None:
        """Raise :class:`~knowledge.errors.StoreUnavailable` unless the store answers."""
        self._backend.ping()

    def refresh(self, *, force: bool = False) -> bool:
        """Pick up changes other processes made (at most every ``refresh_interval`` s unless
        ``force``): True when the store reopened. Cheap: one small SQLite read."""
        if self._manifest is None:
            return False
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        with self._refresh_lock:
            self._next_check = now + self.refresh_interval
            generation = self._manifest.generation()
            if generation == self._generation:
                return False
            first, self._generation = self._generation is None, generation
        if first:
            return False
        self._reload()
        return True

    def _reload(self) -> None:
        """Drop what may be stale: the embedded client (its index is in memory), or the
        server's collection handles."""
        self.reloads += 1
        logger.info("knowledge_store_reloaded reloads=%d", self.reloads)
        if self._backend.url is None:
            self._backend.close()
        else:
            self._backend.forget_all()

    def _wrote(self, generation: int) -> None:
        """Our own change moved the generation on: nothing to reload for it (unless another
        process changed something in between, which the next refresh then picks up)."""
        with self._refresh_lock:
            if self._generation is not None and generation == self._generation + 1:
                self._generation = generation

    def collections(self) -> list[str]:
        """Names of all collections."""
        return self._backend.names()

    def count(self, collection: str) -> int:
        """Chunks in a collection (0 if it does not exist)."""
        handle = self._collection(collection, create=False)
        return 0 if handle is None else self._backend.count(handle)

    def drop(self, collection: str) -> bool:
        """Delete a collection and its history (e.g. to rebuild it with another model)."""
        with self._write_lock:
            dropped = self._backend.drop(collection)
            if self._manifest is not None:
                self._manifest.drop(collection)
                self._wrote(self._manifest.written_generation)
            return dropped

    # -- loading -------------------------------------------------------------------------------

    def add(
        self,
        collection: str,
        paths: Sequence[Path],
        *,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Load files and folders (recursively) into a collection.

        A file's document id is its path relative to the folder given (or its name, for a file
        given directly). Unchanged files are skipped, changed ones replaced. A bad file is
        reported as ``failed`` with its reason and the rest still load.
        """
        check_collection_name(collection)
        started = time.perf_counter()
        results: list[FileResult] = []
        with self._write_lock:
            seen: dict[str, str] = {}
            for file, relative in _expand(paths):
                result = self._add_file(collection, file, relative, seen)
                results.append(result)
                if progress is not None:
                    progress(result)
        return IngestReport(tuple(results), time.perf_counter() - started)

    def add_bytes(self, collection: str, filename: str, data: bytes) -> FileResult:
        """Load one uploaded file. ``filename`` may hold folders (``faq/prices.md``) but no
        ``..`` or absolute path.

        Raises :class:`~knowledge.errors.DocumentError` for a bad name or a bad file.
        """
        check_collection_name(collection)
        name = safe_relative_name(filename)
        with self._write_lock:
            return self._ingest(collection, document_id(name), name, data)

    def sync(
        self,
        collection: str,
        directory: Path,
        *,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Make a collection mirror a folder: add new files, update changed ones, delete the
        documents whose files are gone (including uploads that are not in the folder).

        A file that is present but fails to load keeps its previous version.
        """
        check_collection_name(collection)
        if not directory.is_dir():
            raise KnowledgeError(f"not a directory: {directory}")
        started = time.perf_counter()
        manifest = self._require_manifest()
        results: list[FileResult] = []
        with self._write_lock:
            seen: dict[str, str] = {}
            for file, relative in _expand([directory]):
                result = self._add_file(collection, file, relative, seen)
                results.append(result)
                if progress is not None:
                    progress(result)
            for info in manifest.documents(collection):
                if info.doc_id in seen:
                    continue
                self._remove(collection, info.doc_id)
                result = FileResult(info.source, info.doc_id, "deleted", info.chunks)
                results.append(result)
                if progress is not None:
                    progress(result)
        return IngestReport(tuple(results), time.perf_counter() - started)

    def remove(self, collection: str, doc_id: str) -> bool:
        """Delete a document's chunks; False if the collection did not have it."""
        with self._write_lock:
            return self._remove(collection, document_id(doc_id))

    def _add_file(
        self, collection: str, file: Path, relative: str, seen: dict[str, str]
    ) -> FileResult:
        doc_id = document_id(relative)
        try:
            if doc_id in seen:
                raise DocumentError(
                    relative,
                    f"{file} has the same document id ({doc_id!r}) as {seen[doc_id]}: rename "
                    "one, or add the folder above them so their ids differ",
                )
            seen[doc_id] = str(file)  # named in the message above (sync reads only the keys)
            loader_for(relative)
            try:
                size = file.stat().st_size
                if size > self.max_file_bytes:
                    raise DocumentError(relative, _too_big(size, self.max_file_bytes))
                data = file.read_bytes()
            except OSError as exc:
                raise DocumentError(relative, f"unreadable: {exc.strerror or exc}") from exc
            return self._ingest(collection, doc_id, relative, data)
        except DocumentError as exc:
            logger.info("document_failed doc_id=%s reason=%s", doc_id, exc.reason)
            return FileResult(relative, doc_id, "failed", error=exc.reason)

    def _ingest(self, collection: str, doc_id: str, source: str, data: bytes) -> FileResult:
        """Load, chunk, embed and write one document; raises DocumentError for a bad file."""
        loader_for(source)
        if len(data) > self.max_file_bytes:
            raise DocumentError(source, _too_big(len(data), self.max_file_bytes))
        manifest = self._require_manifest()
        sha = sha256_hex(data)
        handle = self._collection(collection, create=True)
        assert handle is not None
        current = manifest.current(collection, doc_id)
        if current is not None:
            info, pipeline = current
            if info.sha256 == sha and pipeline == self.pipeline:
                stored = self._backend.get(handle, where={"doc_id": doc_id})
                if len(stored["ids"]) == info.chunks:
                    return FileResult(
                        source, doc_id, "unchanged", info.chunks, version=info.version
                    )
        if self.loading is not None:
            chunks = self.loading.chunk(doc_id, source, data)
        else:
            chunks = self.chunker.chunk(doc_id, load_document(source, data))
        if not chunks:
            raise DocumentError(source, "no text found")
        info = DocumentInfo(
            doc_id=doc_id,
            source=source,
            version=manifest.next_version(collection, doc_id),
            sha256=sha,
            chunks=len(chunks),
            loaded_at=utc_now(),
        )
        self._write(collection, handle, info, chunks)
        status: FileStatus = "added" if current is None else "updated"
        logger.info(
            "document_%s collection=%s doc_id=%s version=%d chunks=%d",
            status,
            collection,
            doc_id,
            info.version,
            len(chunks),
        )
        return FileResult(source, doc_id, status, len(chunks), version=info.version)

    def _write(
        self, collection: str, handle: Collection, info: DocumentInfo, chunks: list[Chunk]
    ) -> None:
        """Replace a document's chunks without ever leaving a half-written version.

        New chunks are written first, then the version is recorded, then the old chunks are
        deleted. Chunks whose text did not change keep their vectors (only their metadata is
        rewritten). On any failure before the record, everything written is undone.
        """
        manifest = self._require_manifest()
        old = self._backend.get(handle, where={"doc_id": info.doc_id}, include=["metadatas"])
        old_meta: dict[str, dict[str, Any]] = dict(zip(old["ids"], old["metadatas"], strict=True))
        kept = [c for c in chunks if c.id in old_meta]
        fresh = [c for c in chunks if c.id not in old_meta]
        written: list[str] = []
        try:
            self._backend.update_metadata(
                handle, [c.id for c in kept], [_metadata(info, c) for c in kept]
            )
            for start in range(0, len(fresh), EMBED_BATCH):
                batch = fresh[start : start + EMBED_BATCH]
                vectors = self._embed([c.embed_text for c in batch], documents=True)
                written.extend(c.id for c in batch)
                self._backend.upsert(
                    handle,
                    [c.id for c in batch],
                    vectors,
                    [c.text for c in batch],
                    [_metadata(info, c) for c in batch],
                )
            manifest.record(collection, info, pipeline=self.pipeline)
            self._wrote(manifest.written_generation)
        except BaseException:
            self._undo(handle, written, {c.id: old_meta[c.id] for c in kept})
            raise
        stale = set(old_meta) - {c.id for c in chunks}
        self._backend.delete(handle, ids=sorted(stale))

    def _undo(self, handle: Collection, written: list[str], kept: dict[str, Any]) -> None:
        try:
            self._backend.delete(handle, ids=written)
            self._backend.update_metadata(handle, list(kept), list(kept.values()))
        except Exception:  # the original error matters more; say that the undo failed too
            logger.exception("document_rollback_failed ids=%d", len(written))

    def _embed(self, texts: list[str], *, documents: bool = False) -> list[list[float]]:
        """Vectors for ``texts`` (a document's chunks: in the loading process, if any)."""
        if documents and self.loading is not None:
            vectors = self.loading.embed(texts)
        else:
            vectors = self.embedder.embed(texts)
        if len(vectors) != len(texts) or any(len(v) != self.embedder.dimensions for v in vectors):
            raise EmbeddingError(
                f"embedder {self.embedder.name!r} returned {len(vectors)} vectors for "
                f"{len(texts)} texts, or not {self.embedder.dimensions} dimensions each"
            )
        return vectors

    def _remove(self, collection: str, doc_id: str) -> bool:
        handle = self._collection(collection, create=False)
        removed = False
        if handle is not None:
            stored = self._backend.get(handle, where={"doc_id": doc_id})
            self._backend.delete(handle, ids=stored["ids"])
            removed = bool(stored["ids"])
        if self._manifest is not None:
            removed = self._manifest.mark_removed(collection, doc_id) or removed
            self._wrote(self._manifest.written_generation)
        if removed:
            logger.info("document_removed collection=%s doc_id=%s", collection, doc_id)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def list_documents(self, collection: str) -> list[DocumentInfo]:
        """The documents in a collection, latest versions, by id."""
        return self._require_manifest().documents(collection)

    def show(self, collection: str, doc_id: str) -> DocumentDetail:
        """A document's version history and current chunks in order.

        Works for removed documents too (their history is kept); raises
        :class:`~knowledge.errors.UnknownDocument` for a document never loaded.
        """
        manifest = self._require_manifest()
        doc_id = document_id(doc_id)
        latest = manifest.latest(collection, doc_id)
        if latest is None:
            raise UnknownDocument(f"no document {doc_id!r} in collection {collection!r}")
        versions = manifest.versions(collection, doc_id)
        chunks: list[ChunkInfo] = []
        handle = None if versions[-1].removed_at else self._collection(collection, create=False)
        if handle is not None:
            stored = self._backend.get(
                handle, where={"doc_id": doc_id}, include=["metadatas", "documents"]
            )
            for chunk_id, meta, text in zip(
                stored["ids"], stored["metadatas"], stored["documents"], strict=True
            ):
                chunks.append(
                    ChunkInfo(
                        chunk_id=chunk_id,
                        position=int(meta["position"]),
                        heading_path=json.loads(meta["heading_path"]),
                        tokens=int(meta["tokens"]),
                        preview=_preview(text),
                    )
                )
        chunks.sort(key=lambda c: c.position)
        return DocumentDetail(latest, versions, chunks)

    def search(
        self, collection: str, query: str, *, k: int = 4, min_score: float = 0.0
    ) -> list[Hit]:
        """The ``k`` chunks most similar to ``query``, best first, with score ≥ ``min_score``.

        Raises :class:`~knowledge.errors.UnknownCollection` when nothing was ever loaded into
        the collection, :class:`~knowledge.errors.EmbeddingMismatch` when it was built with
        another embedding model.
        """
        if not query.strip() or k <= 0:
            return []
        handle = self._existing(collection)  # before the embedding: an unknown name costs none
        return self._search(collection, handle, self._embed([query])[0], k, min_score)

    def search_vector(
        self, collection: str, vector: Iterable[float], *, k: int = 4, min_score: float = 0.0
    ) -> list[Hit]:
        """Like :meth:`search`, for a query already embedded with this store's embedder (a
        unit vector of its ``dimensions``)."""
        if k <= 0:
            return []
        handle = self._existing(collection)
        return self._search(collection, handle, [float(x) for x in vector], k, min_score)

    def _search(
        self, collection: str, handle: Collection, vector: list[float], k: int, min_score: float
    ) -> list[Hit]:
        hits = self._query(collection, handle, vector, k, min_score)
        if hits is None:  # the index still held chunks deleted elsewhere: reopen, ask again
            self._reload()
            hits = self._query(collection, self._existing(collection), vector, k, min_score)
            if hits is None:
                raise KnowledgeError(f"collection {collection!r} returned deleted chunks")
        return hits

    def _existing(self, collection: str) -> Collection:
        """The collection's handle; raises :class:`UnknownCollection` when there is none."""
        handle = self._collection(collection, create=False)
        if handle is None:
            raise UnknownCollection(f"no collection {collection!r}")
        return handle

    def snapshot(self, collection: str) -> tuple[tuple[int, int], list[tuple[Hit, list[float]]]]:
        """Every chunk of a collection (as a :class:`Hit` with score 0) with its vector, and
        the change marker they were read at (see :meth:`changes`), for an in-memory index
        (:mod:`knowledge.memindex`). Raises like :meth:`search`."""
        marker = self.changes()
        handle = self._existing(collection)
        records = self._backend.get(handle, include=["embeddings", "documents", "metadatas"])
        rows: list[tuple[Hit, list[float]]] = []
        try:
            for chunk_id, vector, text, meta in zip(
                records["ids"],
                records["embeddings"],
                records["documents"],
                records["metadatas"],
                strict=True,
            ):
                hit = Hit(
                    chunk_id=chunk_id,
                    doc_id=str(meta["doc_id"]),
                    doc_version=int(meta["doc_version"]),
                    source=str(meta["source"]),
                    heading_path=list(json.loads(meta["heading_path"])),
                    text=text,
                    score=0.0,
                )
                rows.append((hit, list(vector)))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise KnowledgeError(f"unexpected answer from the vector store: {exc!r}") from exc
        return marker, rows

    def changes(self, *, refresh: bool = True) -> tuple[int, int]:
        """A marker that moves whenever documents change, in this process or (seen through
        :meth:`refresh`, so within ``refresh_interval``) in another. ``refresh=False`` only
        reads attributes (no I/O): the changes this process made or has already seen."""
        if refresh:
            self.refresh()
        written = self._manifest.written_generation if self._manifest is not None else 0
        return (self.reloads, written)

    def _query(
        self, collection: str, handle: Collection, vector: list[float], k: int, min_score: float
    ) -> list[Hit] | None:
        """The hits, or None when the store returned chunks without their text or metadata
        (an embedded index that has not seen another process delete them)."""
        try:
            result = self._backend.query(handle, vector, k)
        except UnknownCollection:
            self._backend.forget(collection)
            raise
        hits = []
        try:
            for chunk_id, text, meta, distance in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                strict=True,
            ):
                if text is None or meta is None or distance is None:
                    return None
                score = 1.0 - float(distance)
                if score < min_score:
                    continue
                hits.append(
                    Hit(
                        chunk_id=chunk_id,
                        doc_id=str(meta["doc_id"]),
                        doc_version=int(meta["doc_version"]),
                        source=str(meta["source"]),
                        heading_path=list(json.loads(meta["heading_path"])),
                        text=text,
                        score=score,
                    )
                )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise KnowledgeError(f"unexpected answer from the vector store: {exc!r}") from exc
        return hits

    # -- helpers -------------------------------------------------------------------------------

    def _collection(self, name: str, *, create: bool) -> Collection | None:
        self.refresh()
        return self._backend.collection(
            name, model=self.embedder.name, dimensions=self.embedder.dimensions, create=create
        )

    def _require_manifest(self) -> Manifest:
        if self._manifest is None:
            raise KnowledgeError(
                "loading and listing documents needs a local path= for the document manifest"
            )
        return self._manifest


def _metadata(info: DocumentInfo, chunk: Chunk) -> dict[str, str | int]:
    return {
        "doc_id": info.doc_id,
        "doc_version": info.version,
        "doc_sha256": info.sha256,
        "source": info.source,
        "position": chunk.position,
        "heading_path": json.dumps(list(chunk.heading_path), ensure_ascii=False),
        "tokens": chunk.tokens,
    }


def _preview(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _too_big(size: int, limit: int) -> str:
    return f"file is {size:,} bytes, over the {limit:,}-byte limit"


def _expand(paths: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    """Files to load with their names relative to the folder given; hidden ones skipped."""
    for path in paths:
        if path.is_dir():
            found = []
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    if not name.startswith("."):
                        file = Path(folder) / name
                        found.append((file, file.relative_to(path).as_posix()))
            yield from sorted(found, key=lambda item: item[1])
        else:
            yield path, path.name
