"""The in-memory index (knowledge.memindex): exact top-k, cached query vectors, and a matrix
that follows the documents (own changes at once, another process's within refresh_interval)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from knowledge import (
    KnowledgeBusy,
    KnowledgeStore,
    KnowledgeTimeout,
    LocalEmbedder,
    UnknownCollection,
)
from knowledge.memindex import WORKER_NICENESS, MemoryIndex, query_key
from knowledge.testing import HashingEmbedder

DOCS = {
    "insurance.md": "# Insurance\n\nEvery piano is insured in transit up to fifty thousand.\n\n"
    "## Claims\n\nClaims for damage must reach us within seven days of the move.\n",
    "stairs.md": "# Stairs\n\nEach flight of stairs adds forty dollars. A narrow staircase may "
    "need a site visit. We hoist a piano through a window when the stairs are too tight.\n",
    "storage.md": "# Storage\n\nStoring a piano costs thirty dollars a week in our depot, kept "
    "at a steady temperature and humidity.\n\n## Visits\n\nVisit your piano by appointment.\n",
    "cancel.md": "# Cancelling\n\nCancel more than two days before the move at no cost. The "
    "deposit is refunded on early cancellation.\n",
}
QUESTIONS = [
    "Is my piano insured?",
    "How much do stairs cost?",
    "Can you STORE my piano, and how much a week?",
    "What if I cancel the move?",
    "claims for damage",
    "window hoist narrow staircase",
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    return docs


@pytest.fixture
def loaded(store: KnowledgeStore, folder: Path) -> KnowledgeStore:
    assert store.sync("movers", folder).ok
    return store


@pytest.fixture
def index(loaded: KnowledgeStore) -> Iterator[MemoryIndex]:
    index = MemoryIndex(loaded)
    yield index
    index.close()


def exact(store: KnowledgeStore, query: str) -> dict[str, float]:
    """Brute force: every stored chunk's cosine to the words the index embeds."""
    handle = store._collection("movers", create=False)
    assert handle is not None
    records = store._backend.get(handle, include=["embeddings"])
    vectors = np.asarray(records["embeddings"], dtype=np.float64)
    q = np.asarray(store.embedder.embed([query_key(query)])[0], dtype=np.float64)
    scores = vectors @ q / np.linalg.norm(vectors, axis=1) / np.linalg.norm(q)
    return dict(zip(records["ids"], scores.tolist(), strict=True))


@pytest.mark.parametrize("k", [1, 3, 4, 50])
def test_same_top_k_as_the_exact_computation(
    index: MemoryIndex, loaded: KnowledgeStore, k: int
) -> None:
    for question in QUESTIONS:
        hits = index.search("movers", question, k=k, min_score=-1.0)
        scores = exact(loaded, question)
        best = sorted(scores.values(), reverse=True)[:k]
        # the k best scores, best first, each the chunk's true score (ties in any order)
        assert [h.score for h in hits] == pytest.approx(best, abs=1e-5), question
        assert [h.score for h in hits] == pytest.approx(
            [scores[h.chunk_id] for h in hits], abs=1e-5
        )
        assert len({h.chunk_id for h in hits}) == len(hits)
        # with the store's own texts and metadata
        theirs = {
            h.chunk_id: h for h in loaded.search("movers", query_key(question), k=50, min_score=-1)
        }
        for hit in hits:
            assert (hit.text, hit.doc_id, hit.source, hit.heading_path) == (
                theirs[hit.chunk_id].text,
                theirs[hit.chunk_id].doc_id,
                theirs[hit.chunk_id].source,
                theirs[hit.chunk_id].heading_path,
            )


def test_min_score_and_empty_queries(index: MemoryIndex) -> None:
    hits = index.search("movers", "Is my piano insured?", k=10, min_score=0.25)
    assert hits and all(h.score >= 0.25 for h in hits)
    assert index.search("movers", "  ?! ", k=4) == []
    assert index.search_now("movers", "", k=4) == []
    assert index.search("movers", "piano", k=0) == []


def test_a_query_vector_is_embedded_once_and_then_served_without_blocking(
    index: MemoryIndex, embedder: HashingEmbedder
) -> None:
    assert index.search_now("movers", "Is my piano insured?") is None  # nothing built yet
    first = index.search("movers", "Is my piano insured?", k=3)
    texts = embedder.texts_embedded
    again = index.search_now("movers", "is my PIANO insured", k=3)  # same words
    assert again == first
    assert embedder.texts_embedded == texts
    assert index.embeddings == 1 and index.cache_hits == 1 and index.rebuilds == 1


def test_the_cache_is_bounded(loaded: KnowledgeStore) -> None:
    index = MemoryIndex(loaded, cache_size=2)
    try:
        for question in QUESTIONS[:3]:
            index.search("movers", question)
        assert not index.cached(QUESTIONS[0])
        assert index.cached(QUESTIONS[1]) and index.cached(QUESTIONS[2])
    finally:
        index.close()


def test_own_changes_are_seen_at_once(
    index: MemoryIndex, loaded: KnowledgeStore, folder: Path
) -> None:
    question = "Do you tune pianos after the move?"
    assert all(h.doc_id != "tuning.md" for h in index.search("movers", question, k=2))
    assert index.search_now("movers", question, k=2) is not None
    loaded.add_bytes(
        "movers", "tuning.md", b"# Tuning\n\nWe tune pianos after the move, tune tune.\n"
    )
    assert index.search_now("movers", question, k=2) is None  # the matrix is out of date
    hits = index.search("movers", question, k=2)
    assert hits[0].doc_id == "tuning.md"
    assert loaded.remove("movers", "tuning.md")
    assert all(h.doc_id != "tuning.md" for h in index.search("movers", question, k=10))
    assert index.rebuilds == 3


def test_another_process_changes_are_seen_within_the_refresh_interval(
    tmp_path: Path, embedder: HashingEmbedder, folder: Path
) -> None:
    path = tmp_path / "shared"
    with (
        KnowledgeStore(path=path, embedder=embedder, refresh_interval=0) as server,
        KnowledgeStore(path=path, embedder=embedder) as cli,
    ):
        assert cli.sync("movers", folder).ok
        index = MemoryIndex(server)
        try:
            question = "Do you tune pianos after the move?"
            assert all(h.doc_id != "tuning.md" for h in index.search("movers", question, k=10))
            cli.add_bytes("movers", "tuning.md", b"# Tuning\n\nWe tune pianos after the move.\n")
            assert index.search("movers", question, k=1)[0].doc_id == "tuning.md"
            cli.remove("movers", "tuning.md")
            assert all(h.doc_id != "tuning.md" for h in index.search("movers", question, k=10))
        finally:
            index.close()


async def test_the_watcher_brings_changes_made_elsewhere_to_the_fast_path(
    tmp_path: Path, embedder: HashingEmbedder, folder: Path
) -> None:
    path = tmp_path / "shared"
    with (
        KnowledgeStore(path=path, embedder=embedder, refresh_interval=0.05) as server,
        KnowledgeStore(path=path, embedder=embedder) as cli,
    ):
        assert cli.sync("movers", folder).ok
        index = MemoryIndex(server)
        try:
            question = "Do you tune pianos after the move?"
            index.search("movers", question, k=1)
            cli.add_bytes("movers", "tuning.md", b"# Tuning\n\nWe tune pianos after the move.\n")
            for _ in range(1000):  # the watcher looks every 0.05 s
                hits = index.search_now("movers", question, k=1)
                if hits and hits[0].doc_id == "tuning.md":
                    break
                await asyncio.sleep(0.01)
            assert hits and hits[0].doc_id == "tuning.md"
            cli.drop("movers")
            for _ in range(1000):  # a dropped collection: no answer from memory any more
                if index.search_now("movers", question, k=1) is None:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(UnknownCollection):
                index.search("movers", question)
        finally:
            index.close()


def test_a_collection_too_large_is_searched_through_the_store(loaded: KnowledgeStore) -> None:
    index = MemoryIndex(loaded, max_chunks=1)
    try:
        hits = index.search("movers", "Is my piano insured?", k=3)
        theirs = loaded.search("movers", query_key("Is my piano insured?"), k=3)
        assert [(h.chunk_id, h.score) for h in hits] == [(h.chunk_id, h.score) for h in theirs]
        assert index.rebuilds == 0
    finally:
        index.close()


def test_an_unknown_collection_raises_like_the_store(index: MemoryIndex) -> None:
    with pytest.raises(UnknownCollection):
        index.search("nothing-here", "piano")


def test_prefetch_embeds_once_for_the_search_that_follows(
    index: MemoryIndex, embedder: HashingEmbedder
) -> None:
    future = index.prefetch("Is my piano insured?")
    assert future is not None
    future.result(timeout=10)
    assert index.prefetch("is my piano insured") is None  # cached already
    before = embedder.texts_embedded
    index.search("movers", "Is my piano insured?")
    assert embedder.texts_embedded == before
    assert index.embeddings == 1 and index.prefetch_cpu_seconds > 0


async def test_asearch_answers_from_memory_or_a_worker_thread(index: MemoryIndex) -> None:
    first = await index.asearch("movers", "What if I cancel the move?", k=2, timeout=10)
    second = await index.asearch("movers", "what if i cancel the move", k=2, timeout=10)
    assert first == second and first[0].doc_id == "cancel.md"
    assert index.cache_hits == 1 and index.search_cpu_seconds > 0
    await asyncio.sleep(0)


def test_query_key() -> None:
    assert (
        query_key("  Can you move it?  It's a BABY grand.") == "can you move it it's a baby grand"
    )
    assert query_key("'quoted', O'Brien") == "quoted o'brien"
    assert query_key("?!") == ""


@pytest.mark.slow
def test_the_labelled_questions_keep_their_top1_and_top3(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """The real model: searching from memory (words only, exact cosine) ranks the labelled
    questions at least as well as the store's own search of the question as asked."""
    fixtures = Path(__file__).parent.parent / "fixtures" / "knowledge"
    store = KnowledgeStore(path=tmp_path / "db", embedder=local_embedder)
    assert store.sync("movers", fixtures / "movers").ok
    questions = json.loads((fixtures / "movers-questions.json").read_text())
    index = MemoryIndex(store)
    try:
        ours = theirs = ours3 = 0
        for item in questions:
            mine = [h.doc_id for h in index.search("movers", item["question"], k=3)]
            chroma = [h.doc_id for h in store.search("movers", item["question"], k=3)]
            ours += mine[0] == item["expected"]
            theirs += chroma[0] == item["expected"]
            ours3 += item["expected"] in mine
        assert ours >= theirs and ours3 == len(questions)
    finally:
        index.close()


def test_an_answer_is_kept_until_the_documents_change(
    index: MemoryIndex, loaded: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledge.memindex as memindex

    computed: list[int] = []
    top = memindex._top

    def counting(matrix: object, vector: object, k: int, min_score: float) -> list[object]:
        computed.append(k)
        return top(matrix, vector, k, min_score)  # type: ignore[arg-type]

    monkeypatch.setattr(memindex, "_top", counting)
    question = "Do you tune pianos after the move?"
    first = index.search("movers", question, k=2)
    assert index.search_now("movers", "do you tune pianos after the move", k=2) == first
    assert index.search("movers", question, k=2) == first
    assert computed == [2]  # asked three times, ranked once
    first.clear()  # a caller's list is its own: the kept answer is not touched
    assert len(index.search_now("movers", question, k=2) or []) == 2
    assert len(index.search_now("movers", question, k=3) or []) == 3  # another k: ranked again
    assert computed == [2, 3]
    loaded.add_bytes(
        "movers", "tuning.md", b"# Tuning\n\nWe tune pianos after the move, tune tune.\n"
    )
    assert index.search("movers", question, k=2)[0].doc_id == "tuning.md"  # not the old answer
    assert computed == [2, 3, 2]


# -- load shedding --------------------------------------------------------------------------


class GatedEmbedder(HashingEmbedder):
    """Embeds like :class:`HashingEmbedder`, but a text with the word "gate" waits until
    ``opened`` is set: a worker thread stays busy for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()
        self.seen: list[str] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.seen.extend(texts)
        if any("gate" in text.split() for text in texts):
            assert self.opened.wait(30), "the test never opened the gate"
        return super().embed(texts)


@pytest.fixture
def gated(tmp_path: Path, folder: Path) -> Iterator[tuple[MemoryIndex, GatedEmbedder]]:
    embedder = GatedEmbedder()
    with KnowledgeStore(path=tmp_path / "gated", embedder=embedder) as store:
        assert store.sync("movers", folder).ok
        index = MemoryIndex(store, threads=1)
        index.search("movers", "warm up")  # builds the matrix
        try:
            yield index, embedder
        finally:
            embedder.opened.set()
            index.close()


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the worker thread never got there")


async def test_a_search_that_cannot_finish_in_time_is_shed_at_once(
    gated: tuple[MemoryIndex, GatedEmbedder],
) -> None:
    index, embedder = gated
    assert index.expected_wait() is None  # nothing has run in a worker thread yet
    index._job_seconds = 0.1  # a search has lately taken 0.1 s in the worker thread
    # one thread, idle: a search would take 0.1 s, within half its 0.5 s deadline
    assert index.expected_wait() == pytest.approx(0.1)
    running = asyncio.ensure_future(index.asearch("movers", "gate one", timeout=30))
    await _until(lambda: index._running == 1)
    assert index.expected_wait() == pytest.approx(0.2)  # it waits for the running one
    queued = asyncio.ensure_future(index.asearch("movers", "gate two", timeout=30))
    await _until(lambda: index._queued == 1)
    assert index.expected_wait() == pytest.approx(0.3)  # over half of 0.5 s: shed
    with pytest.raises(KnowledgeBusy, match=r"the 2 searches ahead of it would take about 0\.30s"):
        await index.asearch("movers", "how much do stairs cost", timeout=0.5)
    assert index.shed == 1
    assert "how much do stairs cost" not in embedder.seen  # refused before any work
    # searches from memory never wait, even now
    index.search("movers", "claims for damage")
    assert await index.asearch("movers", "Claims for damage!", timeout=0.5)
    embedder.opened.set()
    assert (await running)[0].doc_id and (await queued)[0].doc_id
    assert index._queued == 0 and index._running == 0 and index.shed == 1
    # however slow searches have lately been, one that finds a thread free is not shed
    index._job_seconds = 10.0
    assert await index.asearch("movers", "do you hoist through a window", timeout=0.5)
    assert index.shed == 1


def test_one_slow_search_moves_the_mean_only_so_far(index: MemoryIndex) -> None:
    index._observe(0.01)
    assert index._job_seconds == 0.01
    index._observe(2.0)  # a matrix rebuilt: counted as four times the mean at most
    assert index._job_seconds == pytest.approx(0.01 + 0.2 * (0.04 - 0.01))
    index._observe(0.004)
    assert index._job_seconds == pytest.approx(0.016 + 0.2 * (0.004 - 0.016))


async def test_a_search_timed_out_in_the_queue_never_runs(
    gated: tuple[MemoryIndex, GatedEmbedder],
) -> None:
    index, embedder = gated
    running = asyncio.ensure_future(index.asearch("movers", "gate one", timeout=30))
    await _until(lambda: index._running == 1)
    with pytest.raises(KnowledgeTimeout):
        await index.asearch("movers", "what if i cancel", timeout=0.05)
    assert index._queued == 0  # cancelled before it started
    embedder.opened.set()
    await running
    index.close()  # the worker thread has finished every job it was given
    assert "what if i cancel" not in embedder.seen


async def test_under_load_a_turn_without_its_context_vector_searches_its_words_alone(
    gated: tuple[MemoryIndex, GatedEmbedder],
) -> None:
    index, embedder = gated
    # no queue: the context is embedded (two texts) and the answer kept with it
    alone = index.search("movers", "how much a week", k=2)
    full = index.search("movers", "how much a week", context="can you store my piano", k=2)
    assert "can you store my piano" in embedder.seen and index.contexts_skipped == 0
    running = asyncio.ensure_future(index.asearch("movers", "gate one", timeout=30))
    await _until(lambda: index._running == 1)
    waiting = asyncio.ensure_future(index.asearch("movers", "gate two", timeout=30))
    await _until(lambda: index._queued == 1)
    seen = len(embedder.seen)
    # searches are queued: an uncached context is not embedded; the own-words answer is given
    hits = await asyncio.to_thread(
        index.search, "movers", "how much a week", context="where is your depot", k=2
    )
    assert hits == alone and index.contexts_skipped == 1
    assert "where is your depot" not in embedder.seen[seen:]
    # a cached context is still used, and so is the answer kept for it
    again = await asyncio.to_thread(
        index.search, "movers", "how much a week", context="can you store my piano", k=2
    )
    assert again == full and index.contexts_skipped == 1
    # and a prefetch waits for a quiet moment
    assert index.prefetch("where is your depot") is None
    embedder.opened.set()
    await running
    await waiting
    assert index.prefetch("where is your depot") is not None


def test_the_worker_threads_yield_the_cores_to_the_event_loop(index: MemoryIndex) -> None:
    if sys.platform != "linux":
        pytest.skip("thread priorities are set on Linux only")
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = index._pool.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ).result(timeout=10)
    assert theirs == min(19, own + WORKER_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # not the process
    # the watcher that rebuilds after changes made elsewhere, too (started by the first build)
    index.search("movers", "heated storage", k=1)
    watcher = index._watcher
    assert watcher is not None and watcher.native_id is not None
    tid = watcher.native_id

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, tid)

    deadline = time.monotonic() + 10  # its first statement, once the thread has run
    while nice() != min(19, own + WORKER_NICENESS) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert nice() == min(19, own + WORKER_NICENESS)


async def test_a_prefetch_counts_as_work_ahead_of_the_searches(
    gated: tuple[MemoryIndex, GatedEmbedder],
) -> None:
    index, embedder = gated
    index._job_seconds = 0.1
    future = index.prefetch("gate three")
    assert future is not None
    await _until(lambda: index._running == 1)
    assert index.expected_wait() == pytest.approx(0.2)  # a search would wait for it
    embedder.opened.set()
    await asyncio.wrap_future(future)
    await _until(lambda: index._running == 0)
    assert index._queued == 0
