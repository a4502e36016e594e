"""Keeping the garbage collector's full passes short in long-running processes.

A full collection walks every container object the process holds. What start-up builds
(modules, the agents, clients, the database engine, a test double's script) lives as long as
the process, so :func:`settle_heap` collects what start-up left behind and moves the survivors
out of the collector's sight (``gc.freeze``): a full pass then walks only what the work since
allocated. Used by ``relay serve`` (each worker, once started) and by the bench's own
processes (the load generator, the scripted model, the echo server), whose pauses would
otherwise be timed as relay's latency.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap(oldest: int = 50) -> None:
    """Collect, freeze the survivors, and let full collections wait for ``oldest`` collections
    of the middle generation rather than 10 (with a thousand calls they found almost no
    garbage, yet each held the event loop for 100-300 ms every few seconds)."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, oldest))
