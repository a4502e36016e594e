"""Background work below the event loop's CPU priority (Linux).

A busy ``relay serve`` process's event loop streams every caller's words; work that no caller
waits for (embedding a search in the memory index's threads, loading or removing documents)
should take the cores only when the loop does not need them. On Linux each thread has its own
nice value, and threads it starts inherit it, so lowering a pool thread's priority in its
initializer also lowers that of the threads it starts (the embedder's own pool, for one).

Work that may run in a process of its own (loading documents: :mod:`knowledge.loading`) goes
further, with :func:`run_on_idle_cpu`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

#: How much nicer than the process background threads run: at 10, a thread gets about a tenth
#: of a core's time when the event loop wants it all, and all of it when the loop is idle.
BACKGROUND_NICENESS = 10


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Lower the calling thread's scheduling priority by ``niceness`` (Linux only: elsewhere
    ``setpriority`` would apply to the whole process). Where that is not permitted (some
    sandboxes), the thread runs at the process's priority and an info line says so."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
    except OSError as exc:
        logger.info("thread_priority_unchanged error=%r", exc)


def run_on_idle_cpu() -> str:
    """Make the calling thread, and the threads it starts later, run only on otherwise idle
    cores: the ``SCHED_IDLE`` policy on Linux. The kernel then switches away from it as soon as
    any other thread wants the core, where a nice level only lowers its share. Where that is
    refused, the thread runs :data:`BACKGROUND_NICENESS` nicer; off Linux, where a nice level
    is the process's, the whole process does. Returns ``"idle"``, ``"nice"`` or
    ``"unchanged"``.

    Meant for a process of its own that shares no lock with an event loop serving calls (the
    interpreter lock above all): a thread the kernel keeps waiting while it holds a lock would
    stall every thread that waits for it. The loading process and the ``relay knowledge``
    commands call it first thing.
    """
    if sys.platform == "linux":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as exc:
            logger.info("idle_priority_refused error=%r", exc)
        lower_thread_priority(BACKGROUND_NICENESS)
        return "nice"
    nice = getattr(os, "nice", None)
    if nice is None:  # Windows
        return "unchanged"
    try:
        nice(BACKGROUND_NICENESS)
    except OSError as exc:
        logger.info("process_priority_unchanged error=%r", exc)
        return "unchanged"
    return "nice"
