"""relay.heap: full garbage collections kept rare, and made while no call is live."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from relay.heap import OLDEST, IdleCollector, settle_heap


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
