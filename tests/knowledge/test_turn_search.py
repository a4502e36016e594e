"""A turn's search: the caller's latest words, with the previous utterance as context.

Each utterance is embedded on its own and cached; a turn's hits are the best half for its own
words, then the best for its words with the context (knowledge.memindex). The quality tests use
the real offline model over the labelled fixtures, with the served ``k`` and ``min_score``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knowledge import KnowledgeStore, LocalEmbedder
from knowledge.memindex import MemoryIndex, merge_turn_hits
from knowledge.models import Hit

FIXTURES = Path(__file__).parent.parent / "fixtures" / "knowledge"
K, MIN_SCORE = 4, 0.3  # relay's defaults (RELAY_KNOWLEDGE_K, RELAY_KNOWLEDGE_MIN_SCORE)


def _hit(chunk: str) -> Hit:
    return Hit(chunk, f"{chunk}.md", 1, f"{chunk}.md", [], chunk, 0.5)


def _ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


@pytest.mark.parametrize(
    ("own", "around", "k", "expected"),
    [
        ("abcd", "wxyz", 4, "abwx"),  # half its own, half with the context
        ("abcd", "bawx", 4, "abwx"),  # a chunk both found comes once
        ("abcd", "", 4, "abcd"),  # the context found nothing: its own fill the rest
        ("", "wxyz", 4, "wxyz"),  # its own words found nothing ("how much is that?")
        ("ab", "w", 4, "abw"),
        ("abcde", "vwxyz", 5, "abcvw"),  # odd k: the larger half for its own words
        ("abc", "xyz", 1, "a"),
    ],
)
def test_merging_a_turns_hits(own: str, around: str, k: int, expected: str) -> None:
    merged = merge_turn_hits([_hit(c) for c in own], [_hit(c) for c in around], k)
    assert "".join(_ids(merged)) == expected


@pytest.fixture(scope="module")
def movers(tmp_path_factory: pytest.TempPathFactory, local_embedder: LocalEmbedder) -> Any:
    store = KnowledgeStore(path=tmp_path_factory.mktemp("turn-search"), embedder=local_embedder)
    assert store.sync("movers", FIXTURES / "movers").ok
    yield store
    store.close()


@pytest.fixture
def index(movers: KnowledgeStore) -> Iterator[MemoryIndex]:
    index = MemoryIndex(movers)
    yield index
    index.close()


def _questions() -> list[dict[str, str]]:
    return list(json.loads((FIXTURES / "movers-questions.json").read_text()))


def _documents(index: MemoryIndex, question: str, context: str) -> list[str]:
    hits = index.search("movers", question, context=context, k=K, min_score=MIN_SCORE)
    return [h.doc_id for h in hits]


def test_a_new_question_after_another_topic_finds_its_own_document(index: MemoryIndex) -> None:
    questions = _questions()
    pairs = list(itertools.permutations(questions, 2))
    # first among the passages, as when asked alone (the labelled questions keep their top-1)
    missed = [
        (a["question"], b["question"])
        for a, b in pairs
        if _documents(index, b["question"], a["question"])[:1] != [b["expected"]]
    ]
    assert len(pairs) == 306 and missed == []
    for item in questions:
        assert _documents(index, item["question"], "")[0] == item["expected"]
    # Embedding the two utterances as one text (relay before 7 December 2026) lost the new
    # question's document from the passages in 46 of the 270 pairs that change topic, and put
    # another first in 176.


def test_a_follow_up_finds_the_document_its_context_is_about(index: MemoryIndex) -> None:
    follow_ups = json.loads((FIXTURES / "movers-follow-ups.json").read_text())
    assert len(follow_ups) == 16
    missed = [
        item["question"]
        for item in follow_ups
        if item["expected"] not in _documents(index, item["question"], item["previous"])
    ]
    assert missed == []
    # alone, most of them find nothing over the threshold: the context is what answers them
    alone = sum(f["expected"] in _documents(index, f["question"], "") for f in follow_ups)
    assert alone <= 8


def test_each_utterance_is_embedded_once_whatever_came_before(index: MemoryIndex) -> None:
    first, second, third = (q["question"] for q in _questions()[:3])
    index.search("movers", first, k=K)
    assert index.embeddings == 1
    index.search("movers", second, context=first, k=K)  # the context's vector is cached
    assert index.embeddings == 2
    index.search("movers", second, context=third, k=K)  # the same words after others
    assert index.embeddings == 3  # only the new context
    # every vector cached: answered without blocking, as the blocking path answers
    now = index.search_now("movers", first, context=third, k=K, min_score=MIN_SCORE)
    assert now is not None
    assert _ids(now) == _ids(index.search("movers", first, context=third, k=K, min_score=0.3))
    assert index.embeddings == 3
    # a context never embedded: not answerable at once
    assert index.search_now("movers", first, context="storage for a month", k=K) is None


def test_a_large_collection_searched_through_the_store_merges_the_same_way(
    movers: KnowledgeStore,
) -> None:
    memory, large = MemoryIndex(movers), MemoryIndex(movers, max_chunks=0)
    try:
        for item in json.loads((FIXTURES / "movers-follow-ups.json").read_text())[:6]:
            args = ("movers", item["question"])
            kwargs: dict[str, Any] = {"context": item["previous"], "k": K, "min_score": MIN_SCORE}
            via_store = large.search(*args, **kwargs)
            assert _ids(via_store) == _ids(memory.search(*args, **kwargs))
            assert item["expected"] in [h.doc_id for h in via_store]
        assert large.rebuilds == 0 and memory.rebuilds == 1
    finally:
        memory.close()
        large.close()
