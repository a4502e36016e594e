"""relay.waits.event_set: an event or a deadline, and never a lost cancellation. Background
loops that wait for a wake-up between rounds (the recorder's writer, the webhook outbox) stop
when cancelled even as they are woken (Python 3.11's ``asyncio.wait_for`` swallowed such a
cancellation, and the app's shutdown waited for ever)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from relay.services.webhooks import WebhookOutbox
from relay.storage.db import Database
from relay.waits import event_set


async def test_the_event_or_the_deadline() -> None:
    event = asyncio.Event()
    assert await event_set(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await event_set(event, 10) is True
    assert await event_set(event, 0) is True  # already set


async def test_a_loop_woken_as_it_is_cancelled_stops() -> None:
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await event_set(event, 10)
            event.clear()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.001)
    event.set()
    task.cancel()  # in the same moment
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task} and task.cancelled()


async def test_the_webhook_outbox_stops_when_cancelled_as_a_webhook_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await db.migrate()
    try:
        async with httpx.AsyncClient() as http:
            outbox = WebhookOutbox(db, http, secret="s" * 32, poll=60)
            round_done = asyncio.Event()
            deliver = outbox.deliver_due

            async def one_round() -> int:
                delivered = await deliver()
                round_done.set()
                return delivered

            monkeypatch.setattr(outbox, "deliver_due", one_round)
            task = asyncio.create_task(outbox.run())
            await asyncio.wait_for(round_done.wait(), 10)  # now it waits for the next round
            outbox._wake.set()  # a call's webhook is queued ...
            task.cancel()  # ... as the app stops
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done == {task} and task.cancelled()
    finally:
        await db.close()
