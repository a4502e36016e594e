"""AsyncKnowledge: store calls run in worker threads; timeouts raise KnowledgeTimeout."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from knowledge import AsyncKnowledge, KnowledgeStore, KnowledgeTimeout
from knowledge.priority import BACKGROUND_NICENESS
from knowledge.testing import HashingEmbedder

KB = "movers"


class SlowEmbedder(HashingEmbedder):
    """Blocks in :meth:`embed` until released (or for ``delay`` seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.threads: set[str] = set()

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return super().embed(texts)


@pytest.fixture
async def knowledge(tmp_path: Path) -> AsyncIterator[AsyncKnowledge]:
    store = KnowledgeStore(path=tmp_path / "db", embedder=SlowEmbedder())
    async with AsyncKnowledge(store) as facade:
        yield facade


def slow(knowledge: AsyncKnowledge) -> SlowEmbedder:
    embedder = knowledge.store.embedder
    assert isinstance(embedder, SlowEmbedder)
    return embedder


async def test_every_call_runs_in_a_worker_thread(
    knowledge: AsyncKnowledge, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "storage.md").write_text("# Storage\nHeated warehouse, 40 pounds a month.")
    report = await knowledge.sync(KB, docs)
    assert report.added == 1
    upload = await knowledge.add_bytes(KB, "faq.csv", b"q,a\nSundays?,Closed on Sundays.\n")
    assert upload.status == "added"
    assert (await knowledge.add(KB, [docs])).unchanged == 1

    hits = await knowledge.search(KB, "heated warehouse", k=1, timeout=5)
    assert hits[0].doc_id == "storage.md"
    assert await knowledge.count(KB) == 2
    assert await knowledge.collections() == [KB]
    assert [d.doc_id for d in await knowledge.list_documents(KB)] == ["faq.csv", "storage.md"]
    assert (await knowledge.show(KB, "storage.md")).info.version == 1
    assert await knowledge.remove(KB, "faq.csv") is True
    assert await knowledge.drop(KB) is True
    main = threading.current_thread().name
    assert slow(knowledge).threads and main not in slow(knowledge).threads
    assert all(name.startswith("knowledge-") for name in slow(knowledge).threads)


async def test_search_timeout_raises_and_the_loop_keeps_running(
    knowledge: AsyncKnowledge,
) -> None:
    await knowledge.add_bytes(KB, "storage.md", b"# Storage\nHeated warehouse.")
    slow(knowledge).delay = 0.5
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    with pytest.raises(KnowledgeTimeout, match="search"):
        await knowledge.search(KB, "warehouse", timeout=0.1)
    elapsed = time.perf_counter() - started
    task.cancel()
    assert elapsed < 0.45
    assert ticks >= 3  # the event loop kept running while the embedding blocked its thread


async def test_search_without_timeout_waits(knowledge: AsyncKnowledge) -> None:
    await knowledge.add_bytes(KB, "storage.md", b"# Storage\nHeated warehouse.")
    slow(knowledge).delay = 0.05
    hits = await knowledge.search(KB, "warehouse")
    assert hits and hits[0].doc_id == "storage.md"


async def test_a_long_write_does_not_hold_up_searches(knowledge: AsyncKnowledge) -> None:
    await knowledge.add_bytes(KB, "storage.md", b"# Storage\nHeated warehouse.")
    slow(knowledge).delay = 1.0
    write = asyncio.create_task(knowledge.add_bytes(KB, "areas.md", b"# Areas\nKent."))
    await asyncio.sleep(0.05)  # the write is now embedding in the write thread
    slow(knowledge).delay = 0.0
    hits = await knowledge.search(KB, "warehouse")
    assert hits[0].doc_id == "storage.md"
    assert not write.done()  # the search did not queue behind the write
    assert (await write).status == "added"


class PriorityEmbedder(HashingEmbedder):
    """Records the priority of the thread that embeds, and of a thread that one starts (as
    the local model's embedder starts its own pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        started: list[int] = []
        child = threading.Thread(target=lambda: started.append(_priority()))
        child.start()
        child.join()
        self.seen.append((_priority(), started[0]))
        return super().embed(texts)


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_documents_load_below_the_event_loops_priority(tmp_path: Path) -> None:
    """An upload while calls run takes the cores the event loop leaves: the write threads,
    and the threads they start, run BACKGROUND_NICENESS below the process; searches do not."""
    if sys.platform != "linux":
        pytest.skip("thread priorities are set on Linux only")
    embedder = PriorityEmbedder()
    own = _priority()
    async with AsyncKnowledge(KnowledgeStore(path=tmp_path / "db", embedder=embedder)) as store:
        assert (await store.add_bytes(KB, "storage.md", b"# Storage\nHeated.")).status == "added"
        lowered = min(19, own + BACKGROUND_NICENESS)
        assert embedder.seen == [(lowered, lowered)]
        await store.search(KB, "heated storage", k=1, timeout=5)  # a search embeds at par
        assert embedder.seen[1:] == [(own, own)]
    assert _priority() == own  # the process, and this thread, are untouched
