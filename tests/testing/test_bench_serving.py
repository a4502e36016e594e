"""The figures ``relay bench`` derives from the workers' ``/metrics.json`` (bench_serving)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.services.retrieval import INTRO
from relay.testing.bench_serving import (
    copy_documents,
    memory_per_call,
    reference_like,
    retrieval_share,
    summed,
    tree_cpu_seconds,
)


def worker(pid: int, **counters: float) -> dict[str, float]:
    return {"pid": pid, **counters}


BEFORE = {
    11: worker(11, retrievals=10, retrieval_skipped=1, query_embeddings=5, query_cache_hits=5,
               query_embed_cpu_ms=20.0, retrieval_cpu_ms=21.0, retrieval_ms_total=30.0,
               rss_kb=1000, active_sessions=0),
    12: worker(12, retrievals=4, query_embeddings=4, query_embed_cpu_ms=16.0,
               retrieval_cpu_ms=16.5, retrieval_ms_total=20.0, rss_kb=2000, active_sessions=0),
}  # fmt: skip
AFTER = {
    11: worker(11, retrievals=110, retrieval_skipped=11, query_embeddings=7, query_cache_hits=103,
               query_embed_cpu_ms=28.0, retrieval_cpu_ms=50.0, retrieval_ms_total=90.0,
               retrieval_prefetched=2, rss_kb=1600, active_sessions=30),
    12: worker(12, retrievals=94, retrieval_failures=3, retrieval_shed=2, query_embeddings=4,
               query_embed_cpu_ms=16.0, retrieval_cpu_ms=30.5, retrieval_ms_total=50.0,
               rss_kb=2600, active_sessions=30),
}  # fmt: skip


def test_the_retrieval_share_adds_up_over_workers() -> None:
    share = retrieval_share(BEFORE, AFTER, turns=200)
    # 190 searched + 10 skipped turns; CPU (29 + 14) ms; wall (60 + 30) ms
    assert share == {
        "workers_seen": 2,
        "turns": 200,
        "searched": 190,
        "skipped": 10,
        "failures": 3,
        "shed": 2,
        "query_embeddings": 2,
        "query_cache_hits": 98,
        "prefetched": 2,
        "cpu_ms_per_turn": 0.215,
        "wall_ms_per_turn": 0.45,
        "embed_cpu_ms_per_embedding": 4.0,
    }


def test_a_worker_seen_only_once_is_left_out() -> None:
    share = retrieval_share({11: BEFORE[11]}, AFTER, turns=100)
    assert share["workers_seen"] == 1 and share["turns"] == 110
    assert retrieval_share({}, AFTER, turns=10) == {}


def test_memory_per_idle_call_over_workers() -> None:
    assert memory_per_call(BEFORE, AFTER, calls=60) == (3000, 4200, 20.0)
    assert summed(AFTER)["active_sessions"] == 60


def test_tree_cpu_counts_children_that_ended(tmp_path: Path) -> None:
    busy = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\n"
    done = tmp_path / "child-ended"
    script = tmp_path / "busy.py"
    script.write_text(
        f"import pathlib, subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {busy!r}], check=True)\n"
        f"pathlib.Path({str(done)!r}).touch()\ntime.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        for _ in range(600):  # until the child has run and ended (bounded)
            if done.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        used = tree_cpu_seconds(parent.pid)
        assert done.exists() and used is not None and used >= 0.29
    finally:
        parent.kill()
        parent.wait()
    assert tree_cpu_seconds(os.getpid()) is not None


def test_the_shipped_documents_and_a_reference_of_their_size(tmp_path: Path) -> None:
    target = copy_documents("piano-removals", tmp_path)
    assert target == tmp_path / "knowledge" / "piano-removals"
    assert (target / "insurance.md").is_file()
    reference = reference_like("piano-removals")
    assert reference is not None and INTRO in reference and "[4]" in reference
    with pytest.raises(RuntimeError):
        copy_documents("no-such-collection", tmp_path)


async def test_settling_a_server_that_is_not_relay_does_not_wait() -> None:
    """``relay bench --url`` at another server (Twilio's SDK, say): no ``/metrics.json``, so
    there is nothing to wait for, and the run goes on at once rather than after 30 s."""
    import httpx

    from relay.testing.bench_serving import settle_all

    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(404, json={"detail": "Not Found"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        assert await settle_all(http, "http://tac.test", 1, 0, timeout=30.0) == {}
    # one round of asking (worker_metrics' 40 attempts), not one every 0.1 s for 30 s
    assert asked == ["/metrics.json"] * 40


def test_loop_lag_quantiles_from_two_scrapes_of_the_histogram() -> None:
    from relay.testing.bench_serving import lag_quantiles

    inf = float("inf")
    before = {0.001: 10.0, 0.01: 10.0, 0.1: 10.0, inf: 10.0}
    # during the phase: 90 samples under 1 ms, 8 under 10 ms, 1 under 100 ms, 1 beyond
    after = {0.001: 100.0, 0.01: 108.0, 0.1: 109.0, inf: 110.0}
    assert lag_quantiles(before, after, (0.5, 0.9, 0.99, 1.0)) == {
        "samples": 100, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 100.0, "p100_ms": "> 100",
    }  # fmt: skip
    assert lag_quantiles(after, after, (0.5,)) == {"samples": 0}
    assert lag_quantiles({}, {}, (0.5,)) == {"samples": 0}


def test_garbage_collections_add_up_over_the_workers_seen_twice() -> None:
    from relay.testing.bench_serving import gc_passes

    before = {1: {"gc_collections": [100, 10, 1]}, 2: {"gc_collections": [50, 5, 0]}, 3: {}}
    after = {1: {"gc_collections": [130, 12, 2]}, 2: {"gc_collections": [70, 5, 0]}}

    assert gc_passes(before, after) == [50, 2, 1]  # worker 3 was not seen after
    assert gc_passes(before, {}) == []
    assert gc_passes({1: {"gc_collections": "x"}}, {1: {"gc_collections": [1, 2, 3]}}) == []
