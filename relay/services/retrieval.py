"""Grounding: the knowledge passages handed to the model before each LLM round.

Retrieval runs in the knowledge layer's worker threads with a deadline; when the store is slow
or broken the call goes on without reference material (the failure is logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import fcntl
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import structlog

from knowledge import (
    AsyncKnowledge,
    EmbeddingMismatch,
    Hit,
    KnowledgeBusy,
    KnowledgeError,
    KnowledgeStore,
    OpenAIEmbedder,
    StoreUnavailable,
)
from knowledge.memindex import MemoryIndex, merge_turn_hits
from relay.agents import AgentProfile
from relay.config import Settings

log = structlog.get_logger("relay.services.retrieval")


@dataclass(frozen=True)
class Retrieved:
    """Reference material for one turn, and its provenance (what a call's ``Retriever`` returns)."""

    message: str  # the system message handed to the model
    provenance: list[dict[str, Any]]
    elapsed_ms: float
    error: str | None = None
    #: The previous turn's material, kept for a turn that asks nothing new (needs_retrieval).
    reused: bool = False


INTRO = (
    "Reference material from the business's own documents, most relevant first. Answer from it "
    "when it covers the question; do not read sources or scores aloud. If it does not cover the "
    "question, say you are not sure rather than guessing."
)


def open_knowledge(settings: Settings, *, serving: bool = False) -> AsyncKnowledge:
    """The knowledge store the settings describe (embedded Chroma under the data dir by default).

    ``serving``: for ``relay serve``, where documents uploaded in the console load in a
    process of their own on idle cores, never beside the calls (:mod:`knowledge.loading`).
    """
    embedder = None
    if settings.embeddings == "openai":
        embedder = OpenAIEmbedder(
            httpx.Client(timeout=30.0),
            model=settings.embedding_model,
            base_url=settings.llm_base_url,
            api_key=settings.openai_api_key,
        )
    store = KnowledgeStore(
        path=settings.knowledge_path,
        url=settings.chroma_url or running_chroma_server(settings.data_dir),
        embedder=embedder,
        refresh_interval=settings.knowledge_refresh,
        loading_process=serving,
    )
    return AsyncKnowledge(store)


def running_chroma_server(data_dir: Path) -> str | None:
    """The URL of the Chroma server a running ``relay serve --workers N`` supervises for this
    data directory, so that the CLI and every worker use it rather than the files under it."""
    from relay.services.chroma_server import discover

    return discover(data_dir)


class NotReady(enum.Enum):
    """:meth:`KnowledgeRetriever.retrieve_now` could not answer without waiting."""

    NOT_READY = "not-ready"


NOT_READY: Final = NotReady.NOT_READY

#: Shed searches are logged at most this often (seconds), with how many since the last line:
#: an overloaded process sheds hundreds a second.
_SHED_LOG_INTERVAL: Final = 10.0

#: Recent answers whose passages message is kept (:meth:`KnowledgeRetriever._material`).
_MATERIALS_KEPT: Final = 256


def format_passages(hits: Sequence[Hit]) -> str:
    lines = [INTRO]
    for number, hit in enumerate(hits, 1):
        where = " > ".join(hit.heading_path) if hit.heading_path else hit.source
        lines.append(f"[{number}] ({hit.source}: {where})\n{hit.text}")
    return "\n\n".join(lines)


def provenance(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [
        {"doc_id": h.doc_id, "version": h.doc_version, "chunk_id": h.chunk_id, "source": h.source,
         "heading": list(h.heading_path), "score": round(h.score, 4)}
        for h in hits
    ]  # fmt: skip


#: Words that alone make an utterance an acknowledgement, a greeting or a courtesy: a turn made
#: only of these (and numbers) asks nothing new of the documents.
ACKNOWLEDGEMENTS = frozenset({
    "yes", "yeah", "yea", "yep", "yup", "aye", "no", "nope", "nah", "ok", "okay", "alright",
    "all", "right", "sure", "fine", "good", "great", "perfect", "lovely", "cool", "awesome",
    "excellent", "brilliant", "nice", "wonderful", "fantastic", "correct", "exactly",
    "absolutely", "definitely", "certainly", "thanks", "thank", "you", "ta", "cheers", "please",
    "hello", "hi", "hey", "bye", "goodbye", "that", "that's", "thats", "it", "is", "sounds",
    "uh", "um", "umm", "er", "erm", "ah", "oh", "mm", "mhm", "hmm", "understood", "agreed",
})  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def needs_retrieval(utterance: str) -> bool:
    """Whether a caller's turn may need the documents: not when it has no word (digits, a
    keypad reply, a number read out) or when every word is an acknowledgement, greeting or
    courtesy (:data:`ACKNOWLEDGEMENTS`: "yes please", "No thanks.", "okay, great", "bye").
    Such a turn keeps the previous turn's reference material (relay.call.turn)."""
    words = _WORD.findall(utterance.lower())
    return any(word not in ACKNOWLEDGEMENTS for word in words)


def turn_context(query: str, latest: str) -> str:
    """The context a turn's search uses with the caller's ``latest`` words: the earlier words of
    its ``query`` (``Transcript.recent_user_text()``: the latest words after the previous
    utterance, unless the latest alone is long), unless they ask nothing ("yes please"),
    when the latest words stand alone. See :mod:`knowledge.memindex` for how a context is
    used: each utterance keeps its own cached vector."""
    if not latest or query == latest or not query.endswith(latest):
        return ""
    context = query[: -len(latest)].strip()
    return context if needs_retrieval(context) else ""


class KnowledgeRetriever:
    """The session's :class:`~relay.call.session.Retriever` over an :class:`AsyncKnowledge`."""

    def __init__(
        self,
        knowledge: AsyncKnowledge,
        *,
        k: int = 4,
        min_score: float = 0.3,
        timeout: float = 0.5,
        memory_index: bool = True,
        prefetch_delay: float = 0.25,
        query_cache: int = 4096,
    ) -> None:
        self.knowledge = knowledge
        self.k = k
        self.min_score = min_score
        self.timeout = timeout
        self.failures = 0  # turns left ungrounded by any store trouble (shed ones included)
        self.shed = 0  # of those, searches refused at once under load (KnowledgeBusy)
        self._shed_logged = 0  # shed searches already logged
        self._shed_log_at = 0.0  # when the last retrieval_shed line was logged (monotonic)
        self.retrievals = 0
        self.skipped = 0  # turns that asked nothing new (retrieve_turn)
        self.elapsed_ms_total = 0.0  # wall time of every retrieve()
        self.prefetched = 0  # query embeddings started from partial transcripts
        self.prefetch_delay = prefetch_delay
        #: The passages message and provenance of recent answers, by the hits' identity (the
        #: memory index hands the same Hit objects back for the same words).
        self._materials: OrderedDict[
            tuple[int, ...], tuple[tuple[Hit, ...], str, list[dict[str, Any]]]
        ] = OrderedDict()
        self._prefetches: dict[str, asyncio.TimerHandle] = {}
        #: Searches from memory with cached query vectors (see knowledge.memindex); None: every
        #: search goes to the store.
        self.index: MemoryIndex | None = (
            MemoryIndex(knowledge.store, cache_size=query_cache) if memory_index else None
        )

    async def _search(
        self,
        collection: str,
        query: str,
        *,
        context: str = "",
        k: int,
        min_score: float,
        timeout: float,
    ) -> list[Hit]:
        index = self._serving_index()
        if index is not None:
            return await index.asearch(
                collection, query, context=context, k=k, min_score=min_score, timeout=timeout
            )
        knowledge = self.knowledge
        own = await knowledge.search(collection, query, k=k, min_score=min_score, timeout=timeout)
        if not context:
            return own
        # No memory index (a test's swapped store): the context half from both texts as one.
        around = await knowledge.search(
            collection, f"{context} {query}", k=k, min_score=min_score, timeout=timeout
        )
        return merge_turn_hits(own, around, k)

    def _serving_index(self) -> MemoryIndex | None:
        """The memory index, if it serves the store this retriever holds (a test may swap the
        knowledge for another)."""
        index = self.index
        if index is not None and index.store is getattr(self.knowledge, "store", None):
            return index
        return None

    async def preview(self, collection: str, question: str, *, timeout: float) -> list[Hit]:
        """The passages a turn asking ``question`` gets (same path, k and threshold), for the
        console's "ask the documents". Raises like the store."""
        return await self._search(
            collection, question, k=self.k, min_score=self.min_score, timeout=timeout
        )

    def prefetch(self, agent: AgentProfile, partial: str, *, previous: str, key: str) -> None:
        """Called with each partial transcript (``prompt`` with ``last: false``) while the
        caller speaks: once the partial has stood for ``prefetch_delay`` seconds with no newer
        one for the same ``key`` (the call), embed ``partial``, so that the turn finds its
        vector ready if the final words are the same (and ``previous``, the caller's last
        finished utterance and the turn's context, if its vector is no longer cached). Never
        raises."""
        index = self.index
        if index is None or not agent.knowledge_collection or not needs_retrieval(partial):
            return
        waiting = self._prefetches.pop(key, None)
        if waiting is not None:
            waiting.cancel()
        context = previous if needs_retrieval(previous) else ""

        def start() -> None:
            self._prefetches.pop(key, None)
            try:
                if index.prefetch(partial) is not None:
                    self.prefetched += 1
                if context:  # embedded by its own turn, unless since forgotten
                    index.prefetch(context)
            except Exception as exc:  # a prefetch is only ever a head start
                log.info("retrieval_prefetch_failed", error=repr(exc)[:200])

        loop = asyncio.get_running_loop()
        self._prefetches[key] = loop.call_later(self.prefetch_delay, start)

    def counters(self) -> dict[str, float]:
        """What the retriever did so far (``/metrics.json``; ``relay bench`` reads them)."""
        counters: dict[str, float] = {
            "retrievals": self.retrievals,
            "retrieval_failures": self.failures,
            "retrieval_shed": self.shed,
            "retrieval_skipped": self.skipped,
            "retrieval_prefetched": self.prefetched,
            "retrieval_ms_total": round(self.elapsed_ms_total, 3),
        }
        index = self.index
        if index is not None:
            counters |= {
                "query_embeddings": index.embeddings,
                "query_cache_hits": index.cache_hits,
                "query_embed_cpu_ms": round(index.embed_cpu_seconds * 1000, 3),
                "retrieval_cpu_ms": round(
                    (index.search_cpu_seconds + index.prefetch_cpu_seconds) * 1000, 3
                ),
                "index_rebuilds": index.rebuilds,
                "query_contexts_skipped": index.contexts_skipped,
            }
        return counters

    async def warm_index(self, agents: Sequence[AgentProfile]) -> None:
        """Build the agents' collections' in-memory matrices now, not on the first call."""
        index = self.index
        if index is None:
            return
        for collection in {a.knowledge_collection for a in agents if a.knowledge_collection}:
            try:
                await asyncio.to_thread(index.search, collection, "warm up", k=1)
            except StoreUnavailable:
                raise  # the warm-up is tried again (relay.web.app)
            except KnowledgeError as exc:
                log.info("knowledge_index_not_warmed", collection=collection, error=str(exc)[:200])

    async def aclose(self) -> None:
        """Stop the memory index's worker threads."""
        if self.index is not None:
            await asyncio.to_thread(self.index.close)

    async def retrieve_turn(
        self, agent: AgentProfile, query: str, *, latest: str, previous: Retrieved | None
    ) -> Retrieved | None:
        """A turn's retrieval: :meth:`retrieve`, unless the caller's latest words ask nothing
        new (:func:`needs_retrieval`), when the previous turn's material is kept (no search)."""
        if not needs_retrieval(latest):
            return self._reused(previous)
        return await self.retrieve(agent, query, latest=latest)

    def _reused(self, previous: Retrieved | None) -> Retrieved | None:
        """A turn that asks nothing new: the previous turn's material, if it had any."""
        self.skipped += 1
        if previous is None or previous.error is not None or not previous.provenance:
            return None
        return dataclasses.replace(previous, elapsed_ms=0.0, reused=True)

    def retrieve_now(
        self, agent: AgentProfile, query: str, *, latest: str, previous: Retrieved | None
    ) -> Retrieved | NotReady | None:
        """:meth:`retrieve_turn` when it can be answered without waiting (a turn that asks
        nothing new, or a query whose vector is cached and whose matrix is current): the
        common turn then reaches its request without a timeout scope or a coroutine; else
        :data:`NOT_READY`, and the turn awaits :meth:`retrieve_turn`."""
        if not needs_retrieval(latest):
            return self._reused(previous)
        collection = agent.knowledge_collection
        if not collection or not query.strip():
            return None
        index = self._serving_index()
        if index is None:
            return NOT_READY
        started = time.perf_counter()
        try:
            hits = index.search_now(
                collection,
                latest or query,
                context=turn_context(query, latest),
                k=self.k,
                min_score=self.min_score,
            )
        except Exception:  # the awaited path records and logs it
            return NOT_READY
        if hits is None:
            return NOT_READY
        self.retrievals += 1
        return self._found(hits, started)

    async def retrieve(
        self, agent: AgentProfile, query: str, *, latest: str | None = None
    ) -> Retrieved | None:
        """The material for ``query``; with ``latest`` (the caller's latest words, the end of
        ``query``), a turn's search: ``latest`` with the rest of ``query`` as its context
        (:func:`turn_context`)."""
        collection = agent.knowledge_collection
        if not collection or not query.strip():
            return None
        started = time.perf_counter()
        self.retrievals += 1
        context = turn_context(query, latest) if latest else ""
        try:
            hits = await self._search(
                collection,
                latest or query,
                context=context,
                k=self.k,
                min_score=self.min_score,
                timeout=self.timeout,
            )
        except Exception as exc:  # any store trouble leaves the turn ungrounded, never fails it
            self.failures += 1
            elapsed = (time.perf_counter() - started) * 1000
            error = str(exc) if isinstance(exc, KnowledgeError) else repr(exc)
            if isinstance(exc, KnowledgeBusy):
                self.shed += 1
                self._log_shed(collection, error)
            else:
                log.warning(
                    "retrieval_failed",
                    collection=collection,
                    error=error[:300],
                    elapsed_ms=round(elapsed, 1),
                )
            return Retrieved(message="", provenance=[], elapsed_ms=elapsed, error=error)
        return self._found(hits, started)

    def _log_shed(self, collection: str, error: str) -> None:
        """One ``retrieval_shed`` warning per :data:`_SHED_LOG_INTERVAL` at most, counting the
        searches shed since the previous one (every one is in the ``retrieval_shed`` metric)."""
        now = time.monotonic()
        if self._shed_logged and now < self._shed_log_at + _SHED_LOG_INTERVAL:
            return
        log.warning(
            "retrieval_shed",
            collection=collection,
            shed=self.shed - self._shed_logged,
            shed_total=self.shed,
            error=error[:300],
        )
        self._shed_logged, self._shed_log_at = self.shed, now

    def _found(self, hits: list[Hit], started: float) -> Retrieved:
        """A search's hits as the turn's material; ``started``: when the search began."""
        message, cited = self._material(hits)
        elapsed = (time.perf_counter() - started) * 1000
        self.elapsed_ms_total += elapsed
        return Retrieved(message=message, provenance=cited, elapsed_ms=elapsed)

    def _material(self, hits: list[Hit]) -> tuple[str, list[dict[str, Any]]]:
        """The system message and provenance for ``hits``: made once for the same hits (the
        same objects), since formatting kilobytes of passages is on the way to the request."""
        if not hits:
            return "", []
        key = tuple(map(id, hits))
        materials = self._materials
        found = materials.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], hits, strict=True)):
            materials.move_to_end(key)
            return found[1], found[2]
        made = (tuple(hits), format_passages(hits), provenance(hits))
        materials[key] = made  # the tuple keeps the hits alive, so their ids stay theirs
        if len(materials) > _MATERIALS_KEPT:
            materials.popitem(last=False)
        return made[1], made[2]

    async def search(self, collection: str, query: str, k: int = 4) -> list[Hit]:
        """For the ``search_knowledge`` tool: explicit look-ups, same store, same deadline x4.
        Raises only :class:`KnowledgeError`."""
        try:
            return await self._search(
                collection, query, k=k, min_score=0.0, timeout=self.timeout * 4
            )
        except KnowledgeError:
            raise
        except Exception as exc:
            self.failures += 1
            raise KnowledgeError(f"knowledge search failed: {exc!r}") from exc

    async def autoload(self, agents: Sequence[AgentProfile], documents: Path) -> None:
        """Load ``documents/<collection>/`` into each empty collection (first start).

        Several workers start together: one loads while the others wait for it (a file lock
        beside the documents folder), then find the collections full. A store that cannot be
        reached raises StoreUnavailable (the warm-up tries again); a collection's other
        errors are logged and the next collection is loaded."""
        async with _exclusive(documents.parent / ".knowledge-autoload.lock"):
            await self._autoload(agents, documents)

    async def _autoload(self, agents: Sequence[AgentProfile], documents: Path) -> None:
        for agent in agents:
            collection = agent.knowledge_collection
            folder = documents / collection if collection else None
            if folder is None or not folder.is_dir():
                continue
            try:
                if await self.knowledge.count(collection) > 0:  # type: ignore[arg-type]
                    continue
                report = await self.knowledge.sync(collection, folder)  # type: ignore[arg-type]
            except StoreUnavailable:
                raise
            except KnowledgeError as exc:
                hint = (
                    f"rebuild it: relay knowledge drop -c {collection} --yes && relay knowledge load-shipped"
                    if isinstance(exc, EmbeddingMismatch)
                    else None
                )
                log.error(
                    "knowledge_autoload_failed",
                    collection=collection,
                    error=str(exc)[:300],
                    hint=hint,
                )
                continue
            log.info("knowledge_autoloaded", collection=collection, **_totals(report))


@contextlib.asynccontextmanager
async def _exclusive(path: Path) -> AsyncIterator[None]:
    """An exclusive lock between processes (``flock``), waited for without blocking the loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def _totals(report: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for result in report.files:
        totals[str(result.status)] = totals.get(str(result.status), 0) + 1
    return totals
