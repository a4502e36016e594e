"""The passages a question gets: exactly what a call's turn asking it is given.

The console's "Ask a question", ``GET /admin/knowledge/{collection}/search`` and
``relay knowledge search`` all answer through :func:`ask`, which takes the calls' own path,
:meth:`KnowledgeRetriever.preview <relay.services.retrieval.KnowledgeRetriever.preview>`: the
in-memory index (:mod:`knowledge.memindex`), the question's words as
:func:`~knowledge.memindex.query_key` makes them (lower case, no punctuation), at most
``RELAY_KNOWLEDGE_K`` passages and none under ``RELAY_KNOWLEDGE_MIN_SCORE``. So the three show
the same passages, scores and order for the same words, and the same as a turn's provenance.
A search straight through the store (:meth:`knowledge.KnowledgeStore.search`) would not: it
embeds the text as typed, case and punctuation included, and knows neither k nor threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knowledge import AsyncKnowledge, Hit
    from relay.config import Settings
    from relay.services.retrieval import KnowledgeRetriever


def served_retriever(knowledge: AsyncKnowledge, settings: Settings) -> KnowledgeRetriever:
    """The retriever the settings describe over ``knowledge``: the one a serving process gives
    its calls (``relay.web.app``), and ``relay knowledge search`` its own (same k, threshold,
    deadline, prefetch delay and query cache). Call
    :meth:`~relay.services.retrieval.KnowledgeRetriever.aclose` when done with it."""
    from relay.services.retrieval import KnowledgeRetriever

    return KnowledgeRetriever(
        knowledge,
        k=settings.knowledge_k,
        min_score=settings.knowledge_min_score,
        timeout=settings.knowledge_timeout,
        prefetch_delay=settings.knowledge_prefetch_delay,
        query_cache=settings.knowledge_query_cache,
    )


async def ask(
    retriever: KnowledgeRetriever,
    collection: str,
    question: str,
    *,
    limit: int | None = None,
    timeout: float,
) -> list[Hit]:
    """The passages a turn of a call asking ``question`` is given from ``collection``, best
    first; ``limit``: only the first that many of them.

    Raises like the store: :class:`~knowledge.errors.UnknownCollection` for a collection
    nothing was ever loaded into, :class:`~knowledge.errors.KnowledgeTimeout` after
    ``timeout`` seconds, any other :class:`~knowledge.errors.KnowledgeError` for a store in
    trouble.
    """
    hits = await retriever.preview(collection, question, timeout=timeout)
    return hits if limit is None else hits[: max(0, limit)]


__all__ = ["ask", "served_retriever"]
