"""relay.heap: full garbage collections kept rare, and made while no call is live."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from relay.heap import MALLOC_ARENAS, OLDEST, IdleCollector, settle_heap


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_heap_freezes_start_up_and_makes_full_passes_rare(thresholds: None) -> None:
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[2] == OLDEST >= 100


async def test_the_idle_collection_runs_once_when_no_call_is_left() -> None:
    ran = asyncio.Event()

    def collect() -> int:
        ran.set()
        return 7

    collector = IdleCollector(after=0.0, collect=collect)
    collector.idle()
    collector.idle()  # the last call of two ending together: still one pass
    assert collector.armed
    await ran.wait()
    assert (collector.collections, collector.collected, collector.armed) == (1, 7, False)


async def test_a_call_that_starts_cancels_the_idle_collection() -> None:
    collector = IdleCollector(after=3600.0, collect=lambda: pytest.fail("collected"))  # type: ignore[arg-type,return-value]
    collector.idle()
    collector.busy()
    assert not collector.armed and collector.collections == 0
    collector.idle()  # idle again later: armed again
    assert collector.armed
    collector.busy()


def test_a_part_of_a_call_holds_its_session_weakly() -> None:
    """What the call's parts hold (relay.call.session._weakly): the session's method while it
    lives, nothing once it is gone, and never the session itself."""
    from relay.call.session import _weakly

    heard: list[str] = []

    class Session:
        def record(self, row: str) -> None:
            heard.append(row)

    session = Session()
    record = _weakly(session.record)
    record("first")
    del session  # the part's callback alone does not keep it: freed without a collection
    record("after")
    assert heard == ["first"]


#: Eight threads each allocate from the C heap at once, then glibc prints its arenas.
ARENA_PROBE = """
import ctypes, sys, threading
from relay.heap import limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "limit" else None, flush=True)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
start = threading.Barrier(8)
def allocate():
    start.wait()
    for _ in range(100):
        libc.free(ctypes.c_void_p(libc.malloc(4096)))
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


def arenas_after_eight_threads(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, text=True, env=environ,
        check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip(), done.stderr.count("Arena ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_c_heap_keeps_two_arenas_however_many_threads_allocate() -> None:
    assert arenas_after_eight_threads("none") == ("None", 9)  # one a thread, and the main one
    assert arenas_after_eight_threads("limit") == ("True", MALLOC_ARENAS)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_arena_max_in_the_environment_wins() -> None:
    assert arenas_after_eight_threads("limit", MALLOC_ARENA_MAX="4") == ("False", 4)


def test_a_worker_caps_its_arenas_before_it_reads_settings_or_builds_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay import config, logging
    from relay.web import app

    order: list[str] = []

    def load_settings() -> Any:
        order.append("settings")
        return SimpleNamespace(log_level="warning", log_format="console")

    def create_app(settings: Any) -> str:
        order.append("app")
        return "the app"

    monkeypatch.setattr(app, "limit_malloc_arenas", lambda: order.append("arenas"))
    monkeypatch.setattr(app, "create_app", create_app)
    monkeypatch.setattr(config, "load_settings", load_settings)
    monkeypatch.setattr(logging, "configure", lambda *args: None)
    assert app.app_from_env() == "the app"
    assert order == ["arenas", "settings", "app"]
