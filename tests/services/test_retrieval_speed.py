"""Retrieval off the critical path (issue 14): the skip rule for turns that ask nothing new,
the query a partial transcript prefetches, and both over a real call (real uvicorn and
WebSockets, the scripted model, a real Chroma store with the hashing embedder)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from knowledge import AsyncKnowledge, KnowledgeStore
from knowledge.memindex import merge_turn_hits, query_key
from knowledge.testing import HashingEmbedder
from relay.call.transcript import Transcript
from relay.services.retrieval import (
    NOT_READY,
    KnowledgeRetriever,
    Retrieved,
    needs_retrieval,
    turn_context,
)
from relay.testing import ScriptedLLM, Text

DOCS = {
    "insurance.md": "# Insurance\n\nEvery piano move includes insurance cover up to fifty "
    "thousand dollars per piano.\n",
    "storage.md": "# Storage\n\nWe store pianos in a climate controlled depot, charged weekly.\n",
    "stairs.md": "# Stairs\n\nWe count every step without a lift at each end of the move.\n",
}


@pytest.mark.parametrize(
    ("utterance", "needed"),
    [
        ("yes please", False),
        ("No thanks.", False),
        ("Okay, great!", False),
        ("Thank you, bye", False),
        ("That's all, thanks", False),
        ("uh huh", True),  # "huh" is not on the list: when unsure, search
        ("0412 345 678", False),
        ("1 2 3 4 #", False),
        ("", False),
        ("Is it insured?", True),
        ("yes, is my piano insured?", True),
        ("Do you store pianos", True),
        ("gracias", True),
        ("sí", True),
    ],
)
def test_the_skip_rule(utterance: str, needed: bool) -> None:
    assert needs_retrieval(utterance) is needed


@pytest.mark.parametrize(
    ("said", "latest", "context"),
    [
        ([], "Do you store pianos?", ""),
        (["Hi, I need a quote."], "Do you store pianos?", "Hi, I need a quote."),
        (["one", "two"], "three", "two"),
        (["short"], "long " * 70, ""),  # the latest alone is over 300 characters
        (["x" * 400], "and is it insured?", "x" * 400),
        (["Is it insured?", "Yes please."], "How much?", ""),  # asks nothing: no context
    ],
)
def test_a_turns_context_is_the_previous_utterance_that_asked_something(
    said: list[str], latest: str, context: str
) -> None:
    transcript = Transcript(record=lambda row: None, now=lambda: datetime.now(UTC))
    for text in said:
        transcript.user(text)
        transcript.assistant("Sure.")
    transcript.user(latest)
    query, own = transcript.recent_user_text(), transcript.recent_user_text(messages=1)
    assert turn_context(query, own) == context


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KnowledgeStore]:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    with KnowledgeStore(path=tmp_path / "kb", embedder=HashingEmbedder()) as store:
        assert store.sync("piano-removals", docs).ok
        yield store


async def test_partials_in_a_row_prefetch_once(store: KnowledgeStore) -> None:
    retriever = KnowledgeRetriever(AsyncKnowledge(store), prefetch_delay=0.01)
    try:
        agent = type("Agent", (), {"knowledge_collection": "piano-removals"})()
        retriever.prefetch(agent, "Do you", previous="", key="call-1")  # type: ignore[arg-type]
        retriever.prefetch(agent, "Do you store", previous="", key="call-1")  # type: ignore[arg-type]
        retriever.prefetch(agent, "yes", previous="", key="call-2")  # type: ignore[arg-type]
        assert retriever.index is not None
        for _ in range(500):  # the debounce, then the embedding in a worker thread
            if retriever.index.cached("do you store"):
                break
            await asyncio.sleep(0.01)
        assert retriever.index.cached("Do you store")
        assert not retriever.index.cached("Do you") and not retriever.index.cached("yes")
        assert retriever.prefetched == 1 and retriever.index.embeddings == 1
    finally:
        await retriever.aclose()
        await retriever.knowledge.aclose()


async def test_a_cached_query_is_answered_at_once_as_the_awaited_path_answers_it(
    store: KnowledgeStore,
) -> None:
    retriever = KnowledgeRetriever(AsyncKnowledge(store), min_score=-1.0)
    agent: Any = type("Agent", (), {"knowledge_collection": "piano-removals"})()
    query = "Do you store pianos?"
    try:
        # words never embedded: the turn must wait (nothing is searched yet)
        assert retriever.retrieve_now(agent, query, latest=query, previous=None) is NOT_READY
        assert retriever.retrievals == 0
        awaited = await retriever.retrieve_turn(agent, query, latest=query, previous=None)
        assert awaited is not None and awaited.provenance
        # now cached: answered without waiting, with the same passages and provenance
        now = retriever.retrieve_now(agent, query, latest=query, previous=None)
        assert isinstance(now, Retrieved)
        assert (now.message, now.provenance) == (awaited.message, awaited.provenance)
        assert retriever.retrievals == 2 and retriever.index is not None
        assert retriever.index.embeddings == 1
        # the same hits again: the same message, made once
        again = retriever.retrieve_now(agent, query, latest=query, previous=None)
        assert isinstance(again, Retrieved) and again.message is now.message
        # a turn that asks nothing new keeps the previous material, as retrieve_turn does
        kept = retriever.retrieve_now(agent, query, latest="Yes please.", previous=now)
        assert isinstance(kept, Retrieved) and kept.reused and kept.message == now.message
        assert retriever.skipped == 1
        assert retriever.retrieve_now(agent, query, latest="Okay.", previous=None) is None
    finally:
        await retriever.aclose()
        await retriever.knowledge.aclose()


async def test_a_document_changed_after_an_answer_is_not_answered_from_the_old_matrix(
    store: KnowledgeStore, tmp_path: Path
) -> None:
    retriever = KnowledgeRetriever(AsyncKnowledge(store), min_score=-1.0)
    agent: Any = type("Agent", (), {"knowledge_collection": "piano-removals"})()
    query = "Do you store pianos?"
    try:
        await retriever.retrieve_turn(agent, query, latest=query, previous=None)
        assert isinstance(
            retriever.retrieve_now(agent, query, latest=query, previous=None), Retrieved
        )
        extra = tmp_path / "more"
        extra.mkdir()
        (extra / "storage.md").write_text("# Storage\n\nWe store pianos for $40 a week.\n")
        assert store.add("piano-removals", [extra / "storage.md"]).ok
        # this process's own change: the matrix is stale, so the turn takes the awaited path
        assert retriever.retrieve_now(agent, query, latest=query, previous=None) is NOT_READY
        fresh = await retriever.retrieve_turn(agent, query, latest=query, previous=None)
        assert fresh is not None
        assert any(p["source"].endswith("storage.md") for p in fresh.provenance)
    finally:
        await retriever.aclose()
        await retriever.knowledge.aclose()


def _swap_in(store: KnowledgeStore, holder: dict[str, KnowledgeRetriever]) -> Any:
    def configure(runtime: Any) -> None:
        retriever = KnowledgeRetriever(AsyncKnowledge(store), min_score=0.1, prefetch_delay=0.0)
        runtime.deps.retriever = runtime.retriever = holder["retriever"] = retriever

    return configure


def _reference(request: dict[str, Any]) -> list[str]:
    # The per-turn system message (last, issue 15) holds the time, then the passages.
    texts = [m["content"] for m in request["messages"][-1:] if m["role"] == "system"]
    notes = ("Current date and time: ", "(Notes for you")
    parts = ["\n\n".join(p for p in t.split("\n\n") if not p.startswith(notes)) for t in texts]
    return [p for p in parts if p]


async def _call(
    start_relay: Any, store: KnowledgeStore, said: list[str]
) -> tuple[list[list[str]], dict[str, Any]]:
    """A real call that says ``said`` (the model answers each turn), with the retriever over
    ``store``: each request's reference material, and the server's metrics after the call."""
    holder: dict[str, KnowledgeRetriever] = {}
    llm = ScriptedLLM([Text(f"Answer {n}.") for n in range(len(said))])
    async with start_relay(
        llm, configure=_swap_in(store, holder), RELAY_KNOWLEDGE="false"
    ) as relay:
        call = relay.call()
        await call.connect()
        for text in said:
            await call.say(text)
        metrics = (await relay.http.get(relay.base_url + "/metrics.json")).json()
        await call.close()
    retriever = holder["retriever"]
    await retriever.aclose()
    await retriever.knowledge.aclose()
    return [_reference(r) for r in llm.requests], metrics


async def test_a_turn_that_asks_nothing_new_keeps_the_previous_material(
    start_relay: Any, store: KnowledgeStore
) -> None:
    said = [
        "Is my piano insured during the move?",
        "Yes please.",
        "And how do you count the stairs?",
    ]
    (first, second, third), metrics = await _call(start_relay, store, said)
    assert len(first) == 1 and "insurance.md" in first[0].split("[2]")[0]
    assert second == first  # "Yes please." searched nothing and kept the material
    assert len(third) == 1 and "stairs.md" in third[0].split("[2]")[0]
    assert metrics["retrievals"] == 2 and metrics["retrieval_skipped"] == 1
    assert metrics["query_embeddings"] == 2 and metrics["index_rebuilds"] == 1


async def test_a_partial_transcript_prefetches_the_final_query(
    start_relay: Any, store: KnowledgeStore
) -> None:
    holder: dict[str, KnowledgeRetriever] = {}
    llm = ScriptedLLM([Text("We do.")])
    async with start_relay(
        llm, configure=_swap_in(store, holder), RELAY_KNOWLEDGE="false"
    ) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("do you store pianos", last=False)
        index = holder["retriever"].index
        assert index is not None
        for _ in range(500):  # the prefetch runs in a worker thread
            if index.cached("Do you store pianos?"):
                break
            await asyncio.sleep(0.01)
        reply = await call.say("Do you store pianos?")
        metrics = (await relay.http.get(relay.base_url + "/metrics.json")).json()
        await call.close()
    retriever = holder["retriever"]
    await retriever.aclose()
    await retriever.knowledge.aclose()

    assert reply.text == "We do."
    [reference] = _reference(llm.requests[0])
    assert "storage.md" in reference.split("[2]")[0]
    # one embedding: the partial's; the final found it cached (same words)
    assert metrics["retrieval_prefetched"] == 1 and metrics["query_embeddings"] == 1
    assert metrics["query_cache_hits"] >= 1
    assert query_key("Do you store pianos?") == "do you store pianos"


async def test_without_the_memory_index_a_turn_merges_its_words_and_its_context_alike(
    store: KnowledgeStore,
) -> None:
    retriever = KnowledgeRetriever(AsyncKnowledge(store), k=2, min_score=-1.0, memory_index=False)
    agent: Any = type("Agent", (), {"knowledge_collection": "piano-removals"})()
    previous, latest = (
        "Do you store pianos in a depot, charged weekly?",
        "And do you count every step?",
    )
    try:
        found = await retriever.retrieve(agent, f"{previous} {latest}", latest=latest)
        assert found is not None
        own = store.search("piano-removals", latest, k=2, min_score=-1.0)
        around = store.search("piano-removals", f"{previous} {latest}", k=2, min_score=-1.0)
        assert [h.doc_id for h in own][:1] == ["stairs.md"]
        assert [h.doc_id for h in around][:1] == ["storage.md"]
        # one for its own words, one for its words with the context
        assert [p["doc_id"] for p in found.provenance] == ["stairs.md", "storage.md"]
        assert [p["chunk_id"] for p in found.provenance] == [
            h.chunk_id for h in merge_turn_hits(own, around, 2)
        ]
    finally:
        await retriever.aclose()
        await retriever.knowledge.aclose()


async def test_words_asked_again_after_other_words_cost_no_embedding(
    start_relay: Any, store: KnowledgeStore
) -> None:
    insured = "Is my piano insured during the move?"
    # the third turn asks the first question's words again, after other words this time
    (first, second, third), metrics = await _call(
        start_relay, store, [insured, "Do you store pianos?", insured]
    )
    assert "insurance.md" in first[0].split("[2]")[0]
    assert "storage.md" in second[0].split("[2]")[0]  # its own words first, not the context's
    assert "insurance.md" in third[0].split("[2]")[0]
    # each utterance embedded once: the third turn's words and its context were both cached
    assert metrics["retrievals"] == 3 and metrics["query_embeddings"] == 2
