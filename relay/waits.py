"""Waiting for an :class:`asyncio.Event` with a deadline, without ``asyncio.wait_for``.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives in the same moment as
the event it waits for is set: it returns as if nothing happened. A background loop that waits
for a wake-up between rounds (the recorder's writer in its backoff, the webhook outbox) then
goes on running after it was cancelled, and whatever awaits its end (the app's shutdown)
waits for ever. :func:`event_set` waits with :func:`asyncio.wait`, which lets every
cancellation through.
"""

from __future__ import annotations

import asyncio


async def event_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
