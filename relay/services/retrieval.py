"""Grounding: the knowledge passages handed to the model before each LLM round.

Retrieval runs in the knowledge layer's worker threads with a deadline; when the store is slow
or broken the call goes on without reference material (the failure is logged and counted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from knowledge import (
    AsyncKnowledge,
    EmbeddingMismatch,
    Hit,
    KnowledgeError,
    KnowledgeStore,
    OpenAIEmbedder,
)
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


INTRO = (
    "Reference material from the business's own documents, most relevant first. Answer from it "
    "when it covers the question; do not read sources or scores aloud. If it does not cover the "
    "question, say you are not sure rather than guessing."
)


def open_knowledge(settings: Settings) -> AsyncKnowledge:
    """The knowledge store the settings describe (embedded Chroma under the data dir by default)."""
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
    )
    return AsyncKnowledge(store)


def running_chroma_server(data_dir: Path) -> str | None:
    """The URL of the Chroma server a running ``relay serve --workers N`` supervises for this
    data directory, so that the CLI and every worker use it rather than the files under it."""
    from relay.services.chroma_server import discover

    return discover(data_dir)


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


class KnowledgeRetriever:
    """The session's :class:`~relay.call.session.Retriever` over an :class:`AsyncKnowledge`."""

    def __init__(
        self, knowledge: AsyncKnowledge, *, k: int = 4, min_score: float = 0.3, timeout: float = 0.5
    ) -> None:
        self.knowledge = knowledge
        self.k = k
        self.min_score = min_score
        self.timeout = timeout
        self.failures = 0
        self.retrievals = 0

    async def retrieve(self, agent: AgentProfile, query: str) -> Retrieved | None:
        collection = agent.knowledge_collection
        if not collection or not query.strip():
            return None
        started = time.perf_counter()
        self.retrievals += 1
        try:
            hits = await self.knowledge.search(
                collection, query, k=self.k, min_score=self.min_score, timeout=self.timeout
            )
        except Exception as exc:  # any store trouble leaves the turn ungrounded, never fails it
            self.failures += 1
            elapsed = (time.perf_counter() - started) * 1000
            error = str(exc) if isinstance(exc, KnowledgeError) else repr(exc)
            log.warning(
                "retrieval_failed",
                collection=collection,
                error=error[:300],
                elapsed_ms=round(elapsed, 1),
            )
            return Retrieved(message="", provenance=[], elapsed_ms=elapsed, error=error)
        elapsed = (time.perf_counter() - started) * 1000
        return Retrieved(
            message=format_passages(hits) if hits else "",
            provenance=provenance(hits),
            elapsed_ms=elapsed,
        )

    async def search(self, collection: str, query: str, k: int = 4) -> list[Hit]:
        """For the ``search_knowledge`` tool: explicit look-ups, same store, same deadline x4.
        Raises only :class:`KnowledgeError`."""
        try:
            return await self.knowledge.search(
                collection, query, k=k, min_score=0.0, timeout=self.timeout * 4
            )
        except KnowledgeError:
            raise
        except Exception as exc:
            self.failures += 1
            raise KnowledgeError(f"knowledge search failed: {exc!r}") from exc

    async def autoload(self, agents: Sequence[AgentProfile], documents: Path) -> None:
        """Load ``documents/<collection>/`` into each empty collection (first start)."""
        for agent in agents:
            collection = agent.knowledge_collection
            folder = documents / collection if collection else None
            if folder is None or not folder.is_dir():
                continue
            try:
                if await self.knowledge.count(collection) > 0:  # type: ignore[arg-type]
                    continue
                report = await self.knowledge.sync(collection, folder)  # type: ignore[arg-type]
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


def _totals(report: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for result in report.files:
        totals[str(result.status)] = totals.get(str(result.status), 0) + 1
    return totals
