"""The knowledge store for asyncio code: every call runs in a worker thread.

Searches and writes get separate small thread pools, so a long ingest never queues ahead of a
caller's question. A timed-out call raises :class:`~knowledge.errors.KnowledgeTimeout`; its
thread finishes in the background (a thread cannot be interrupted), and its result is dropped.
"""

# ``timeout=`` on every call is the documented API (a per-call budget in seconds, converted to
# KnowledgeTimeout); asyncio.timeout() would leave callers to translate TimeoutError themselves.

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from knowledge.errors import KnowledgeTimeout
from knowledge.models import DocumentDetail, DocumentInfo, FileResult, Hit, IngestReport
from knowledge.priority import lower_thread_priority
from knowledge.store import KnowledgeStore, Progress

T = TypeVar("T")


class AsyncKnowledge:
    """Async facade over a :class:`KnowledgeStore`.

    Args:
        store: The synchronous store to run.
        read_workers: Threads for searches and other reads (onnxruntime and Chroma release
            the GIL, so two overlap well on two cores).
        write_workers: Threads for loading and removing documents. They run
            :data:`~knowledge.priority.BACKGROUND_NICENESS` below the process (Linux), with
            the threads they start, so that an editor's upload does not slow the calls.

    Use as an async context manager, or call :meth:`aclose` on shutdown: it waits for the
    running calls and closes the store.
    """

    def __init__(
        self, store: KnowledgeStore, *, read_workers: int = 2, write_workers: int = 1
    ) -> None:
        self.store = store
        self._reads = ThreadPoolExecutor(read_workers, thread_name_prefix="knowledge-read")
        # nobody waits on the line for a document to load: it takes the cores the event
        # loop leaves (the embedder's threads, started from this one, inherit its priority)
        self._writes = ThreadPoolExecutor(
            write_workers, thread_name_prefix="knowledge-write", initializer=lower_thread_priority
        )

    async def __aenter__(self) -> AsyncKnowledge:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the worker threads after the calls already running, then close the store."""
        await asyncio.to_thread(self._reads.shutdown, wait=True)
        await asyncio.to_thread(self._writes.shutdown, wait=True)
        await asyncio.to_thread(self.store.close)

    async def _run(
        self,
        pool: ThreadPoolExecutor,
        timeout: float | None,
        call: Callable[..., T],
        /,
        *args: object,
        **kwargs: object,
    ) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(pool, functools.partial(call, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            name = getattr(call, "__name__", "call")
            raise KnowledgeTimeout(f"knowledge {name} took longer than {timeout}s") from exc

    async def warm_up(self, *, timeout: float | None = None) -> None:
        """Open the store and load the model in a worker thread."""
        await self._run(self._reads, timeout, self.store.warm_up)

    async def search(
        self,
        collection: str,
        query: str,
        *,
        k: int = 4,
        min_score: float = 0.0,
        timeout: float | None = None,
    ) -> list[Hit]:
        """See :meth:`KnowledgeStore.search`; raises KnowledgeTimeout after ``timeout`` s."""
        return await self._run(
            self._reads, timeout, self.store.search, collection, query, k=k, min_score=min_score
        )

    async def count(self, collection: str, *, timeout: float | None = None) -> int:
        """See :meth:`KnowledgeStore.count`."""
        return await self._run(self._reads, timeout, self.store.count, collection)

    async def collections(self, *, timeout: float | None = None) -> list[str]:
        """See :meth:`KnowledgeStore.collections`."""
        return await self._run(self._reads, timeout, self.store.collections)

    async def list_documents(
        self, collection: str, *, timeout: float | None = None
    ) -> list[DocumentInfo]:
        """See :meth:`KnowledgeStore.list_documents`."""
        return await self._run(self._reads, timeout, self.store.list_documents, collection)

    async def show(
        self, collection: str, doc_id: str, *, timeout: float | None = None
    ) -> DocumentDetail:
        """See :meth:`KnowledgeStore.show`."""
        return await self._run(self._reads, timeout, self.store.show, collection, doc_id)

    async def add(
        self,
        collection: str,
        paths: Sequence[Path],
        *,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> IngestReport:
        """See :meth:`KnowledgeStore.add`. ``progress`` is called from the worker thread."""
        return await self._run(
            self._writes, timeout, self.store.add, collection, paths, progress=progress
        )

    async def add_bytes(
        self, collection: str, filename: str, data: bytes, *, timeout: float | None = None
    ) -> FileResult:
        """See :meth:`KnowledgeStore.add_bytes`."""
        return await self._run(
            self._writes, timeout, self.store.add_bytes, collection, filename, data
        )

    async def sync(
        self,
        collection: str,
        directory: Path,
        *,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> IngestReport:
        """See :meth:`KnowledgeStore.sync`. ``progress`` is called from the worker thread."""
        return await self._run(
            self._writes, timeout, self.store.sync, collection, directory, progress=progress
        )

    async def remove(self, collection: str, doc_id: str, *, timeout: float | None = None) -> bool:
        """See :meth:`KnowledgeStore.remove`."""
        return await self._run(self._writes, timeout, self.store.remove, collection, doc_id)

    async def drop(self, collection: str, *, timeout: float | None = None) -> bool:
        """See :meth:`KnowledgeStore.drop`."""
        return await self._run(self._writes, timeout, self.store.drop, collection)
