"""Searching the business's own documents (the knowledge store) during a call."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from relay.tools.base import ToolContext, ToolResult, tool

log = structlog.get_logger("relay.tools")

#: Passages returned, and the longest passage passed to the model (the rest is cut).
TOP_K = 3
MAX_PASSAGE = 900


@tool(timeout=5.0)
async def search_knowledge(ctx: ToolContext, query: str) -> ToolResult:
    """Search the business's own documents (services, policies, prices, FAQs) when the reference material you already have does not answer the caller's question. Answer only from what it returns.

    Args:
        query: The question in a few plain words, e.g. "loan car licence" or "insurance while in storage".
    """
    store = ctx.services.get("knowledge")
    collection = ctx.agent.knowledge_collection
    if store is None or not collection:
        return ToolResult(
            "There are no documents to search for this business. Say you're not sure, and offer "
            "to take a message or put the caller through.",
            data={"error": "no knowledge store"},
        )
    try:
        hits = await store.search(collection, query, k=TOP_K)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the call goes on without the documents
        log.warning("knowledge_search_failed", error=repr(exc)[:300])
        return ToolResult(
            "The documents can't be searched just now. Say you're not sure, and offer to take a "
            "message or put the caller through.",
            data={"error": f"search failed: {exc.__class__.__name__}"},
        )
    if not hits:
        return ToolResult(
            "Nothing in our documents answers that. Say you're not sure, and offer to take a "
            "message or put the caller through.",
            data={"hits": []},
        )
    passages = [f"[{n}] From {_where(hit)}: {_trim(hit.text)}" for n, hit in enumerate(hits, 1)]
    return ToolResult(
        "From our documents (answer only from these; if they don't answer it, say so):\n"
        + "\n".join(passages),
        data={
            "hits": [{"source": hit.source, "score": round(float(hit.score), 4)} for hit in hits]
        },
    )


def _where(hit: Any) -> str:
    headings = getattr(hit, "heading_path", None) or []
    return " > ".join([str(hit.source), *map(str, headings)])


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_PASSAGE else text[: MAX_PASSAGE - 1].rsplit(" ", 1)[0] + "…"


TOOLS = [search_knowledge]
