"""Searching a collection from memory: exact top-k by one matrix-vector product.

A caller's question should not wait for a vector-store round trip, nor for the embedding model
when the same words were embedded a moment ago. :class:`MemoryIndex` keeps, per collection, a
``(chunks, dimensions)`` float32 matrix of the stored chunk vectors (read once from the store)
and an LRU cache of query vectors, so that a search is:

* the query's vector: from the cache, else one embedding (in a worker thread);
* one matrix-vector product and a partial sort: exact cosine top-k (Chroma's HNSW index is
  approximate), about 10 µs for the shipped documents (133 chunks), well under a millisecond
  at 10,000.

The matrix follows the documents: it is rebuilt when the store's change marker
(:meth:`KnowledgeStore.changes`) moves, which happens at once for changes made through this
process's store and within ``refresh_interval`` for changes made elsewhere (another worker, the
CLI), exactly like the store's own refresh. Collections larger than ``max_chunks`` are searched
through the store as before.

:meth:`search_now` answers without blocking (no I/O, no model run) when it can: cached vector,
matrix checked within ``refresh_interval``. :meth:`prefetch` embeds a query in the background so
that a later search of the same words finds its vector cached (partial transcripts).

**A turn's search** (``context=``, the caller's previous utterance). A follow-up such as "how
much is that a week?" means little without the words before it, while a new question means
itself. Each utterance is embedded on its own, so a question has one cached vector whatever was
said before it, and the search returns, out of ``k`` hits, the best ``ceil(k / 2)`` for the
turn's own words, then the best for its words and the context together (the sum of the two unit
vectors, the context weighted :data:`CONTEXT_WEIGHT`), then its own next best
(:func:`merge_turn_hits`). See ``tests/knowledge/test_turn_search.py`` for what that keeps.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from knowledge.errors import EmbeddingError, KnowledgeBusy, KnowledgeTimeout, UnknownCollection
from knowledge.models import Hit
from knowledge.priority import BACKGROUND_NICENESS, lower_thread_priority

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Weight of the latest search in the running mean of a search's wall time in the worker
#: threads (:meth:`MemoryIndex.expected_wait`); one search counts for at most ``_JOB_CAP``
#: times the mean, so that a rare slow one (a matrix rebuilt after a document changed) does not
#: make the next searches look hopeless.
_JOB_WEIGHT = 0.2
_JOB_CAP = 4.0
#: The share of its deadline a search may expect to spend queued and running before it is
#: shed: the estimate is a mean, so half leaves room for the searches that take longer.
_SHED_SHARE = 0.5

#: How much nicer (lower priority) than the process the worker threads run (Linux): a busy
#: process's event loop, which streams every call's words, gets the cores before a query
#: embedding does, and embeddings use what is left (:mod:`knowledge.priority`).
WORKER_NICENESS = BACKGROUND_NICENESS

#: How much a turn's context (the previous utterance) weighs against its own words in the
#: context half of its hits. Above 1, since the turn's own words already have their half.
CONTEXT_WEIGHT = 1.5

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from knowledge.store import KnowledgeStore

    Vector = npt.NDArray[np.float32]


_NOT_WORD = re.compile(r"[^\w']+|(?<!\w)'|'(?!\w)")


def query_key(query: str) -> str:
    """What is embedded for a query: its words, lower-cased, without punctuation.

    The local model is uncased, and punctuation barely moves a question's vector (the labelled
    questions rank the same with and without), so a final transcript that differs from an
    earlier partial one only in case and punctuation ("can you move it" / "Can you move it?")
    shares its vector."""
    return " ".join(_NOT_WORD.sub(" ", query.lower()).split())


def _digest(words: str) -> bytes:
    return hashlib.blake2b(words.encode(), digest_size=16).digest()


#: (query digest, context digest or b"", k, min_score)
_AnswerKey = tuple[bytes, bytes, int, float]


def _keyed(query: str, context: str, k: int, min_score: float) -> tuple[str, str, _AnswerKey]:
    """A search's words, its context's words, and the key of its answer."""
    words, around = query_key(query), query_key(context)
    return words, around, (_digest(words), _digest(around) if around else b"", k, min_score)


def merge_turn_hits(own: Sequence[Hit], around: Sequence[Hit], k: int) -> list[Hit]:
    """A turn's ``k`` hits from those for its own words (``own``, best first) and those for its
    words with their context (``around``): the best ``ceil(k / 2)`` of ``own``, then ``around``
    in order, then the rest of ``own``; each chunk once."""
    picked: list[Hit] = []
    seen: set[str] = set()
    first = own[: (k + 1) // 2]
    for hit in itertools.chain(first, around, own[len(first) :]):
        if len(picked) == k:
            break
        if hit.chunk_id not in seen:
            seen.add(hit.chunk_id)
            picked.append(hit)
    return picked


@dataclass
class _Matrix:
    marker: tuple[int, int]
    hits: list[Hit]
    vectors: Vector  # (n, d), unit rows
    checked_at: float
    #: Answers already given from this matrix, by (query digest, context digest, k,
    #: min_score): a question asked again (the same words on another call) costs a dict
    #: look-up, not numpy's cold start. Dropped with the matrix when the documents change.
    answers: OrderedDict[_AnswerKey, list[Hit]] = field(default_factory=OrderedDict)


class MemoryIndex:
    """Exact in-memory search over a :class:`KnowledgeStore`'s collections.

    Args:
        store: The store whose collections and embedder are used.
        cache_size: Query vectors kept (least recently used dropped first); 0 turns the cache
            off.
        max_chunks: Collections with more chunks are searched through the store.
        threads: Worker threads for embeddings and matrix rebuilds (:meth:`asearch`,
            :meth:`prefetch`).

    Thread-safe. ``embeddings`` / ``embed_cpu_seconds`` count the query embeddings run and
    the CPU they took (prefetches included); ``cache_hits`` the query vectors that searches
    found cached (a turn's search with context needs two); ``rebuilds`` the matrices
    (re)built; ``search_cpu_seconds`` the CPU of :meth:`asearch` calls, all included, and
    ``prefetch_cpu_seconds`` that of :meth:`prefetch`.

    **Load shedding.** A search that must wait for the worker threads (a query vector not
    cached, and no thread free) is refused at once with :class:`KnowledgeBusy` when the
    searches already queued and running would keep it past half its ``timeout``
    (:meth:`expected_wait`): it would likely time out, and refusing it now spares the caller
    the wait and the process the embedding (``shed`` counts them). The worker threads run at
    a lower priority than the event loop (:data:`WORKER_NICENESS`). While searches are
    queued, a prefetch is skipped, and a turn whose context was not embedded (its own turn
    was shed) searches its own words alone rather than cost two embeddings
    (``contexts_skipped``).
    """

    def __init__(
        self,
        store: KnowledgeStore,
        *,
        cache_size: int = 4096,
        max_chunks: int = 50_000,
        threads: int = 2,
    ) -> None:
        self.store = store
        self.cache_size = cache_size
        self.max_chunks = max_chunks
        self.embeddings = 0
        self.embed_cpu_seconds = 0.0
        self.cache_hits = 0
        self.rebuilds = 0
        self.search_cpu_seconds = 0.0  # CPU of asearch calls (embeddings and rebuilds included)
        self.prefetch_cpu_seconds = 0.0  # CPU of prefetched embeddings
        self.shed = 0  # searches refused at once: they could not have finished in time
        self.contexts_skipped = 0  # turns searched without their context's vector (under load)
        self.threads = max(1, threads)
        self._queued = 0  # searches handed to the worker threads and not started yet
        self._running = 0  # searches running in the worker threads
        self._job_seconds: float | None = None  # running mean of a search's wall time there
        self._matrices: dict[str, _Matrix] = {}
        self._large: dict[str, tuple[int, int]] = {}  # too large, as of this change marker
        # keyed by a digest of the words: the callers' words themselves are not kept
        self._vectors: OrderedDict[bytes, Vector] = OrderedDict()
        self._inflight: dict[bytes, Future[Vector]] = {}
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            self.threads,
            thread_name_prefix="knowledge-index",
            initializer=functools.partial(lower_thread_priority, WORKER_NICENESS),
        )
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def close(self) -> None:
        """Stop the worker threads (after the running jobs) and the watcher."""
        self._closed.set()
        self._pool.shutdown(wait=True)
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout=10)

    def _watch(self) -> None:
        """Every ``refresh_interval``: look for changes made elsewhere and rebuild what moved,
        so that searches never wait for that check (one small SQLite read a second). Like
        the worker threads, it runs below the event loop's priority: a rebuild after an upload
        elsewhere reopens the store and reads every vector."""
        lower_thread_priority(WORKER_NICENESS)
        while not self._closed.wait(max(self.store.refresh_interval, 0.05)):
            for collection in list(self._matrices):
                try:
                    self._fresh(collection)
                except Exception as exc:  # the next search reports it; keep watching
                    logger.info(
                        "knowledge_index_check_failed collection=%s error=%r", collection, exc
                    )

    def _start_watcher(self) -> None:
        if self._watcher is None and self.store.refresh_interval > 0 and not self._closed.is_set():
            self._watcher = threading.Thread(
                target=self._watch, name="knowledge-index-watch", daemon=True
            )
            self._watcher.start()

    # -- searching ---------------------------------------------------------------------------

    def search(
        self,
        collection: str,
        query: str,
        *,
        context: str = "",
        k: int = 4,
        min_score: float = 0.0,
    ) -> list[Hit]:
        """Like :meth:`KnowledgeStore.search` (same errors), from memory, for the words of
        ``query`` (:func:`query_key`), with the words of ``context`` as a turn's context (see
        the module's docstring). Blocking."""
        words, around, key = _keyed(query, context, k, min_score)
        if not words or k <= 0:
            return []
        matrix = self._fresh(collection)
        if matrix is not None:
            with self._lock:
                answer = self._kept(matrix, key)
                if answer is not None:
                    self.cache_hits += 2 if around else 1
                    return answer
        vector = self.vector(words)
        around_vector = self._context_vector(around) if around else None
        if around and around_vector is None:  # under load: the turn's own words alone
            key = (key[0], b"", k, min_score)
        context_vector = None if around_vector is None else self._around(vector, around_vector)
        if matrix is None:  # too large: through the store

            def through_store(v: Vector) -> list[Hit]:
                return self.store.search_vector(collection, v, k=k, min_score=min_score)

            return _turn_top(through_store, vector, context_vector, k)
        return self._answer(matrix, key, vector, context_vector)

    def _context_vector(self, around: str) -> Vector | None:
        """The vector of a turn's context: cached (its own turn embedded it), else embedded
        now, unless searches are queued for the worker threads: then None, and the turn
        searches its own words alone rather than cost two embeddings (``contexts_skipped``)."""
        with self._lock:
            if self._queued and _digest(around) not in self._vectors:
                self.contexts_skipped += 1
                return None
        return self.vector(around)

    def search_now(
        self,
        collection: str,
        query: str,
        *,
        context: str = "",
        k: int = 4,
        min_score: float = 0.0,
    ) -> list[Hit] | None:
        """The hits if they can be had without blocking: the query vector (and the context's)
        cached, the matrix unchanged by this process since it was built and checked for
        changes made elsewhere by the watcher thread (every ``refresh_interval``) lately; else
        None."""
        # Counted as CPU by the wall clock: this path never waits, and the thread's CPU clock
        # is a system call, a point at which a busy machine can switch away from the turn
        # just before its model request goes out.
        started = time.perf_counter()
        try:
            return self._search_now(collection, query, context, k, min_score)
        finally:
            self._spent(time.perf_counter() - started)

    def _search_now(
        self, collection: str, query: str, context: str, k: int, min_score: float
    ) -> list[Hit] | None:
        words, around, key = _keyed(query, context, k, min_score)
        if not words or k <= 0:
            return []
        matrix = self._matrices.get(collection)
        interval = self.store.refresh_interval
        if (
            matrix is None
            or interval <= 0  # "look on every search": the blocking path does
            or time.monotonic() >= matrix.checked_at + 3 * interval  # the watcher fell behind
            or matrix.marker != self.store.changes(refresh=False)
        ):
            return None
        digest, around_digest = key[0], key[1]
        with self._lock:
            vector = self._vectors.get(digest)
            around_vector = self._vectors.get(around_digest) if around else None
            if vector is None or (around and around_vector is None):
                return None
            self._vectors.move_to_end(digest)
            if around:
                self._vectors.move_to_end(around_digest)
            self.cache_hits += 2 if around else 1
            answer = self._kept(matrix, key)
            if answer is not None:
                return answer
        context_vector = None if around_vector is None else self._around(vector, around_vector)
        return self._answer(matrix, key, vector, context_vector)

    @staticmethod
    def _around(vector: Vector, context: Vector) -> Vector:
        """The unit vector of a turn's words with their context (:data:`CONTEXT_WEIGHT`)."""
        import numpy as np

        mixed = vector + np.float32(CONTEXT_WEIGHT) * context
        norm = float(np.linalg.norm(mixed))
        if norm == 0:
            return vector
        mixed /= norm
        return mixed

    @staticmethod
    def _kept(matrix: _Matrix, key: _AnswerKey) -> list[Hit] | None:
        """A copy of the answer kept for ``key`` (the caller holds the lock), or None."""
        answer = matrix.answers.get(key)
        if answer is None:
            return None
        matrix.answers.move_to_end(key)
        return list(answer)

    def _answer(
        self, matrix: _Matrix, key: _AnswerKey, vector: Vector, context: Vector | None
    ) -> list[Hit]:
        """The top hits for ``vector`` (with ``context``, a turn's: :func:`merge_turn_hits`),
        kept in the matrix's answers (as many as query vectors are cached)."""
        k, min_score = key[2], key[3]
        hits = _turn_top(lambda v: _top(matrix, v, k, min_score), vector, context, k)
        if self.cache_size > 0:
            with self._lock:
                matrix.answers[key] = hits
                while len(matrix.answers) > self.cache_size:
                    matrix.answers.popitem(last=False)
        return list(hits)

    async def asearch(
        self,
        collection: str,
        query: str,
        *,
        context: str = "",
        k: int = 4,
        min_score: float = 0.0,
        timeout: float | None = None,
    ) -> list[Hit]:
        """:meth:`search_now` if it can answer, else :meth:`search` in a worker thread;
        raises :class:`KnowledgeTimeout` after ``timeout`` seconds."""
        hits = self.search_now(collection, query, context=context, k=k, min_score=min_score)
        if hits is not None:
            return hits
        if timeout is not None:
            self._admit(timeout)

        def run() -> list[Hit]:
            started = time.thread_time()
            try:
                return self.search(collection, query, context=context, k=k, min_score=min_score)
            finally:
                self._spent(time.thread_time() - started)

        future = asyncio.wrap_future(self._submit(run))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise KnowledgeTimeout(f"knowledge search took longer than {timeout}s") from exc

    def expected_wait(self) -> float | None:
        """About how long a search handed to the worker threads now would take to finish,
        from the searches queued and running and the recent mean of their wall time; None
        until one has run."""
        with self._lock:
            return self._expected()[0]

    def _expected(self) -> tuple[float | None, int]:
        """(:meth:`expected_wait`, searches a new one would wait behind); under the lock."""
        behind = max(0, self._queued + self._running + 1 - self.threads)
        job = self._job_seconds
        return (None if job is None else job * (1 + behind / self.threads)), behind

    def _admit(self, timeout: float) -> None:
        """Raise :class:`KnowledgeBusy` (and count it) when a search would have to wait for
        the worker threads and is expected to take over :data:`_SHED_SHARE` of ``timeout``.
        A search that finds a thread free is never shed: refusing it would spare nothing."""
        with self._lock:
            expected, behind = self._expected()
            if not behind or expected is None or expected <= timeout * _SHED_SHARE:
                return
            self.shed += 1
            ahead = self._queued + self._running
        raise KnowledgeBusy(
            f"knowledge search shed: the {ahead} searches ahead of it would take about "
            f"{expected:.2f}s, over half its {timeout}s deadline"
        )

    def _observe(self, took: float) -> None:
        """Fold one search's wall time in a worker thread into the running mean; under the
        lock."""
        mean = self._job_seconds
        if mean is None:
            self._job_seconds = took
        else:
            self._job_seconds = mean + _JOB_WEIGHT * (min(took, _JOB_CAP * mean) - mean)

    def _submit(self, job: Callable[[], T]) -> Future[T]:
        """Run ``job`` in a worker thread, counted while queued and running (a job cancelled
        before it started only leaves the queue)."""

        def run() -> T:
            with self._lock:
                self._queued -= 1
                self._running += 1
            started = time.perf_counter()
            try:
                return job()
            finally:
                took = time.perf_counter() - started
                with self._lock:
                    self._running -= 1
                    self._observe(took)

        def dropped(future: Future[T]) -> None:
            if future.cancelled():  # never started: run() did not take it off the queue
                with self._lock:
                    self._queued -= 1

        with self._lock:
            self._queued += 1
        try:
            future = self._pool.submit(run)
        except BaseException:
            with self._lock:
                self._queued -= 1
            raise
        future.add_done_callback(dropped)
        return future

    def _spent(self, seconds: float) -> None:
        with self._lock:
            self.search_cpu_seconds += seconds

    # -- query vectors -----------------------------------------------------------------------

    def vector(self, query: str) -> Vector:
        """The query's unit vector: cached, being computed (waited for), or computed now."""
        words = query_key(query)
        key = _digest(words)
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
                self.cache_hits += 1
                return vector
            pending = self._inflight.get(key)
        if pending is not None:
            return pending.result()
        return self._embed(words)

    def cached(self, query: str) -> bool:
        """Whether the query's vector is in the cache."""
        with self._lock:
            return _digest(query_key(query)) in self._vectors

    def prefetch(self, query: str) -> Future[Vector] | None:
        """Embed ``query`` in the background (unless cached or already under way, or searches
        are queued for the worker threads), so that a search of the same words soon after
        finds its vector ready. None when nothing to do."""
        words = query_key(query)
        if not words:
            return None
        key = _digest(words)
        with self._lock:
            if key in self._vectors or key in self._inflight or self._queued:
                return None  # cached, under way, or searches are waiting: they come first
            future: Future[Vector] = Future()
            self._inflight[key] = future

        def run() -> None:
            try:
                future.set_result(self._embed(words, announced=True))
            except BaseException as exc:
                future.set_exception(exc)

        try:
            self._submit(run)
        except RuntimeError:  # shut down
            with self._lock:
                self._inflight.pop(key, None)
            return None
        return future

    def _embed(self, words: str, *, announced: bool = False) -> Vector:
        import numpy as np

        key = _digest(words)
        started = time.thread_time()
        try:
            embedder = self.store.embedder
            embed_array = getattr(embedder, "embed_array", None)
            if callable(embed_array):
                vector = np.asarray(embed_array([words])[0], dtype=np.float32)
            else:
                vector = np.asarray(embedder.embed([words])[0], dtype=np.float32)
            if vector.shape != (embedder.dimensions,):
                raise EmbeddingError(
                    f"embedder {embedder.name!r} returned a vector of shape {vector.shape}"
                )
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                vector = vector / norm
        finally:
            with self._lock:
                self.embeddings += 1
                spent = time.thread_time() - started
                self.embed_cpu_seconds += spent
                if announced:
                    self._inflight.pop(key, None)
                    self.prefetch_cpu_seconds += spent
        with self._lock:
            if self.cache_size > 0:
                self._vectors[key] = vector
                self._vectors.move_to_end(key)
                while len(self._vectors) > self.cache_size:
                    self._vectors.popitem(last=False)
        return vector

    # -- the matrices ------------------------------------------------------------------------

    def _fresh(self, collection: str) -> _Matrix | None:
        """The collection's matrix, checked against the store's change marker at most every
        ``refresh_interval`` (rebuilt when it moved); None for a collection too large."""
        store = self.store
        matrix = self._matrices.get(collection)
        now = time.monotonic()
        if (
            matrix is not None
            and now < matrix.checked_at + store.refresh_interval
            and matrix.marker == store.changes(refresh=False)
        ):
            return matrix
        # a collection too large is searched through the store, with the store's own refresh
        if collection in self._large and self._large[collection] == store.changes():
            return None
        with self._build_lock:
            store.refresh(force=True)
            marker = store.changes(refresh=False)
            matrix = self._matrices.get(collection)
            if matrix is not None and matrix.marker == marker:
                matrix.checked_at = now
                return matrix
            return self._build(collection, marker)

    def _build(self, collection: str, marker: tuple[int, int]) -> _Matrix | None:
        import numpy as np

        if self.store.count(collection) > self.max_chunks:
            self._matrices.pop(collection, None)
            self._large[collection] = marker
            return None
        self._large.pop(collection, None)
        try:
            marker, rows = self.store.snapshot(collection)
        except UnknownCollection:
            self._matrices.pop(collection, None)
            raise
        dimensions = self.store.embedder.dimensions
        vectors = np.asarray([v for _, v in rows], dtype=np.float32).reshape(-1, dimensions)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.clip(norms, 1e-12, None)
        matrix = _Matrix(marker, [hit for hit, _ in rows], vectors, time.monotonic())
        self._matrices[collection] = matrix
        self.rebuilds += 1
        self._start_watcher()
        return matrix


def _turn_top(
    top: Callable[[Vector], list[Hit]], vector: Vector, context: Vector | None, k: int
) -> list[Hit]:
    """``top(vector)``, or with a turn's ``context`` vector the two searches merged
    (:func:`merge_turn_hits`)."""
    hits = top(vector)
    return hits if context is None else merge_turn_hits(hits, top(context), k)


def _top(matrix: _Matrix, vector: Vector, k: int, min_score: float) -> list[Hit]:
    """The ``k`` rows most similar to ``vector``, best first (ties: stored order)."""
    import numpy as np

    count = len(matrix.hits)
    if count == 0:
        return []
    scores = matrix.vectors @ vector
    if k < count:
        picked = np.argpartition(-scores, k - 1)[:k]
        order = picked[np.lexsort((picked, -scores[picked]))]
    else:
        order = np.lexsort((np.arange(count), -scores))
    hits = []
    for index in order.tolist():
        score = float(scores[index])
        if score < min_score:
            break
        hit = matrix.hits[index]
        hits.append(
            Hit(
                hit.chunk_id,
                hit.doc_id,
                hit.doc_version,
                hit.source,
                hit.heading_path,
                hit.text,
                score,
            )
        )
    return hits
