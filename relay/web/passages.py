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

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from knowledge import AsyncKnowledge, Hit
    from relay.config import Settings
    from relay.services.retrieval import KnowledgeRetriever


class Serving(Protocol):
    """What :func:`runtime_retriever` reads of a serving process's ``relay.web.app.Runtime``
    (named here, not imported: the app imports the console, which imports this module)."""

    settings: Settings
    knowledge: AsyncKnowledge | None
    retriever: KnowledgeRetriever | None


def served_retriever(
    knowledge: AsyncKnowledge, settings: Settings, *, memory_index: bool = True
) -> KnowledgeRetriever:
    """A retriever over ``knowledge`` with the settings a serving process gives the one its
    calls use (``relay.web.app``): the same k, threshold, deadline and query cache.

    ``memory_index=False``: without the in-memory index and its worker threads, for a
    short-lived retriever over a store that has none (it then searches the store, as the
    calls' retriever does for a store it does not index). Call
    :meth:`~relay.services.retrieval.KnowledgeRetriever.aclose` when done with it.
    """
    from relay.services.retrieval import KnowledgeRetriever

    return KnowledgeRetriever(
        knowledge,
        k=settings.knowledge_k,
        min_score=settings.knowledge_min_score,
        timeout=settings.knowledge_timeout,
        query_cache=settings.knowledge_query_cache,
        memory_index=memory_index,
    )


def runtime_retriever(runtime: Serving) -> KnowledgeRetriever | None:
    """The retriever this process's calls use; None with the knowledge store off. A runtime
    given a store without a retriever (a test's) gets one over that store with the same
    settings, without an in-memory index."""
    if runtime.knowledge is None:
        return None
    if runtime.retriever is not None:
        return runtime.retriever
    return served_retriever(runtime.knowledge, runtime.settings, memory_index=False)


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


__all__ = ["Serving", "ask", "runtime_retriever", "served_retriever"]
