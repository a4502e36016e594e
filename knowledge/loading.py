"""Documents parsed, chunked and embedded in a process of their own, on idle cores.

Loading a document costs seconds of CPU: parsing it, counting tokens to chunk it, and above
all embedding every chunk (about 47 ms for a chunk of 200 tokens on one AVX2 core). In
``relay serve`` that work shares the machine with the calls. Done in the server's own process,
even in threads at a lower priority, it slowed every call on the machine: its threads take
the interpreter lock between the model's runs, and a thread at a lower nice level is only
given a smaller share of a core, so an event loop that wakes up can still wait for it.

:class:`LoadingProcess` does that work in one spawned child process, which shares no lock with
the event loops, under Linux's ``SCHED_IDLE`` policy
(:func:`knowledge.priority.run_on_idle_cpu`): the kernel runs it only on a core that nothing
else wants and switches away as soon as something does. The store keeps the writes (Chroma and
the manifest); the child only turns bytes into chunks and texts into vectors, with the same
chunker settings and the same model files as the store, and it checks that its model embeds in
the store's vector space.

The child starts with the first document, and exits after ``idle_timeout`` seconds without
one (it holds its own copy of the model), when :meth:`LoadingProcess.close` is called, or when
its parent process is gone. A document that makes it crash (a parser's bug, memory) fails with
a :class:`~knowledge.errors.DocumentError`, and the next document starts a new child: the
server itself is not taken down.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from knowledge.errors import DocumentError, EmbeddingError

if TYPE_CHECKING:
    from knowledge.embedders import LocalEmbedder
    from knowledge.models import Chunk

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the child checks that its parent process is still there (seconds).
PARENT_CHECK_INTERVAL = 1.0


class LoadingProcess:
    """Runs :meth:`chunk` and :meth:`embed` in one child process on idle cores (see the module's
    docstring). Thread-safe; the store calls it under its write lock, one job at a time.

    Args:
        embedder: The store's embedder; the child builds its own from
            :meth:`~knowledge.embedders.LocalEmbedder.settings` and refuses to embed if its
            vector space differs.
        max_tokens, overlap_tokens: The store's chunker settings.
        idle_timeout: Seconds without a job after which the child exits (0: at once).
    """

    def __init__(
        self,
        embedder: LocalEmbedder,
        *,
        max_tokens: int,
        overlap_tokens: int,
        idle_timeout: float = 60.0,
    ) -> None:
        self._embedder = embedder
        self._chunking = (max_tokens, overlap_tokens)
        self.idle_timeout = idle_timeout
        #: Child processes started so far.
        self.started = 0
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._jobs = 0
        self._timer: threading.Timer | None = None

    @property
    def running(self) -> bool:
        """Whether a child process is up (or starting)."""
        return self._pool is not None

    def chunk(self, doc_id: str, source: str, data: bytes) -> list[Chunk]:
        """``data`` loaded as the document ``source`` and chunked; raises
        :class:`~knowledge.errors.DocumentError` for a bad file, as loading in process does."""
        try:
            return self.call(_chunk, doc_id, source, data)
        except BrokenProcessPool as exc:
            raise DocumentError(source, "the loading process stopped while reading it") from exc

    def embed(self, texts: list[str]) -> list[list[float]]:
        """The store's embedder's vectors for ``texts``, computed in the child."""
        try:
            return self.call(_embed, texts)
        except BrokenProcessPool as exc:
            raise EmbeddingError("the loading process stopped while embedding") from exc

    def call(self, function: Callable[..., T], /, *args: Any) -> T:
        """``function(*args)`` in the child (both picklable); waits for the result. A child
        that died is replaced on the next call."""
        pool = self._acquire()
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            raise
        finally:
            self._release()

    def close(self) -> None:
        """Stop the child (after a job it is running). Safe to call twice; the next job starts
        a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _acquire(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pool is None:
                max_tokens, overlap_tokens = self._chunking
                self._pool = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(
                        os.getpid(),
                        self._embedder.settings(),
                        self._embedder.name,
                        max_tokens,
                        overlap_tokens,
                    ),
                )
                self.started += 1
                logger.info("loading_process_started started=%d", self.started)
            self._jobs += 1
            return self._pool

    def _release(self) -> None:
        with self._lock:
            self._jobs -= 1
            if self._jobs or self._pool is None:
                return
            self._timer = threading.Timer(self.idle_timeout, self._expire)
            self._timer.name = "knowledge-loading-idle"
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        """The idle timeout passed: let the child go (it is waiting for nothing)."""
        with self._lock:
            if self._jobs or self._pool is None or self._timer is not threading.current_thread():
                return  # a job came in, or the process was closed, since this timer started
            pool, self._pool, self._timer = self._pool, None, None
        pool.shutdown(wait=False)
        logger.info("loading_process_stopped reason=idle")


# -- in the child ------------------------------------------------------------------------------

_child: dict[str, Any] = {}


def _start_child(
    parent: int,
    embedder_settings: dict[str, Any],
    space: str,
    max_tokens: int,
    overlap_tokens: int,
) -> None:
    from knowledge.chunking import Chunker
    from knowledge.priority import run_on_idle_cpu
    from knowledge.tokens import WordPieceCounter

    run_on_idle_cpu()  # before any other thread starts: they inherit it
    threading.Thread(
        target=_exit_with_parent, args=(parent,), name="loading-parent-watch", daemon=True
    ).start()
    _child["embedder_settings"] = embedder_settings
    _child["space"] = space
    _child["chunker"] = Chunker(
        WordPieceCounter(), max_tokens=max_tokens, overlap_tokens=overlap_tokens
    )


def _exit_with_parent(parent: int) -> None:
    """A killed parent cannot stop its pool: the child leaves by itself once it is gone."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_INTERVAL)
    os._exit(0)


def _chunk(doc_id: str, source: str, data: bytes) -> list[Chunk]:
    from knowledge.loaders import load_document

    return _child["chunker"].chunk(doc_id, load_document(source, data))  # type: ignore[no-any-return]


def _embed(texts: list[str]) -> list[list[float]]:
    embedder = _child.get("embedder")
    if embedder is None:
        from knowledge.embedders import LocalEmbedder

        embedder = LocalEmbedder(**_child["embedder_settings"])
        if embedder.name != _child["space"]:
            raise EmbeddingError(
                f"the loading process embeds with {embedder.name!r}, the store with "
                f"{_child['space']!r}"
            )
        _child["embedder"] = embedder
    return embedder.embed(texts)
