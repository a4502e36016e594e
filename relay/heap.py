"""Keeping the garbage collector's full passes out of the calls' way in long-running processes.

A full collection walks every container object the process holds: with 500 calls in a worker,
100-230 ms during which its event loop answers no one. Three things keep them rare and put them
where no caller waits:

- What start-up builds (modules, the agents, clients, the database engine, a test double's
  script) lives as long as the process, so :func:`settle_heap` collects what start-up left
  behind and moves the survivors out of the collector's sight (``gc.freeze``): a full pass then
  walks only what the work since allocated.
- Full passes wait for :data:`OLDEST` passes of the middle generation rather than CPython's
  10. At 50, a worker with 500 calls of the 1,000-call bench had passed the middle generation
  39-50 times by the run's end, so a full pass came about once a run, and when it fell among
  the measured turns their p99 went from 13-52 ms to 73-267 ms. At 100, a fresh worker gets
  through the whole 1,000-call bench (a run of about a minute) without one; a worker kept that
  busy makes one every two minutes or so. Waiting costs little memory: a finished call is
  freed by reference counting as its socket handler returns (its parts hold the session
  weakly, see relay.call.session), so what a full pass finds is about one object a call.
- :class:`IdleCollector` makes the full pass a worker owes when it has had no call for a
  moment, so on a line with quiet spells the threshold is seldom reached during a call.

Used by ``relay serve`` (each worker, once started) and by the bench's own processes (the load
generator, the scripted model, the echo server), whose pauses would otherwise be timed as
relay's latency.

:func:`limit_malloc_arenas` is about the C heap: glibc gives every thread that allocates an
arena of its own (up to eight per core), and a freed block goes back to its arena, not to the
system. A worker's threads (aiosqlite's, one per SQLite connection; the embedding threads; the
thread pool) can each keep one: at 1,000 idle calls a two-worker server held about 17 MB more
on SQLite than on PostgreSQL, whose driver runs no threads, and the same with two arenas.
``relay serve`` caps them at two.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable

__all__ = ["MALLOC_ARENAS", "OLDEST", "IdleCollector", "limit_malloc_arenas", "settle_heap"]

#: Passes of the middle generation before a full one (CPython's default is 10).
OLDEST = 100
#: glibc malloc arenas a ``relay serve`` process uses, unless ``MALLOC_ARENA_MAX`` says.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap the arenas glibc's malloc creates from now on (``mallopt(M_ARENA_MAX)``); call it
    before the process starts its threads. Nothing where ``MALLOC_ARENA_MAX`` is set (glibc
    read it at start) or off Linux; False where the C library has no such option."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def settle_heap(oldest: int = OLDEST) -> None:
    """Collect, freeze the survivors, and let full collections wait for ``oldest`` collections
    of the middle generation."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, oldest))


class IdleCollector:
    """A full collection once the process has had no call for ``after`` seconds.

    The session count's owner calls :meth:`busy` when a call starts and :meth:`idle` when the
    last one ends; a call that starts within ``after`` cancels the pass. ``collections``,
    ``collected`` and ``seconds`` count what the passes did (``/metrics.json`` shows the
    first and the last).
    """

    def __init__(self, after: float = 2.0, collect: Callable[[], int] = gc.collect) -> None:
        self.after = after
        self._collect = collect
        self._handle: asyncio.TimerHandle | None = None
        self.collections = 0
        self.collected = 0
        self.seconds = 0.0

    @property
    def armed(self) -> bool:
        """Whether a pass is waiting for its moment."""
        return self._handle is not None

    def idle(self) -> None:
        """No call is left: collect in ``after`` seconds unless one starts."""
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.after, self._run)

    def busy(self) -> None:
        """A call started: no pass now."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = None
        started = time.perf_counter()
        self.collected += self._collect()
        self.seconds += time.perf_counter() - started
        self.collections += 1
