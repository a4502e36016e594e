"""At most once: a side effect runs once per idempotency key (relay.tools.ledger over the
plain-data ledger in relay.storage.repository)."""

from __future__ import annotations

import asyncio

from relay.storage import repository
from relay.storage.db import Database
from relay.tools import ToolResult, ledger


async def test_a_side_effect_runs_once_and_its_result_is_replayed(db: Database) -> None:
    runs: list[str] = []

    async def send() -> ToolResult:
        runs.append("sent")
        return ToolResult("Sent the SMS.", data={"sid": "SM1"})

    first = await ledger.once(db, "sms:1", "send_sms", "CA1", send)
    again = await ledger.once(db, "sms:1", "send_sms", "CA1", send)
    assert runs == ["sent"] and first.content == "Sent the SMS."
    assert again.content == "Sent the SMS. (Already done earlier in this call; not repeated.)"
    assert again.data == {"idempotent_replay": True}


async def test_a_failed_side_effect_may_run_again(db: Database) -> None:
    results = [ToolResult("Twilio said no.", data={"error": "503"}), ToolResult("Sent.")]

    async def send() -> ToolResult:
        return results.pop(0)

    assert (await ledger.once(db, "sms:2", "send_sms", "CA1", send)).data == {"error": "503"}
    assert (await ledger.once(db, "sms:2", "send_sms", "CA1", send)).content == "Sent."
    claim = await repository.claim_side_effect(db, "sms:2", "send_sms", "CA1")
    assert claim == repository.SideEffectClaim("done", "Sent.")


async def test_a_side_effect_under_way_is_not_started_twice(db: Database) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> ToolResult:
        started.set()
        await release.wait()
        return ToolResult("Booked.")

    first = asyncio.create_task(ledger.once(db, "book:3", "book_move", "CA1", slow))
    await started.wait()

    async def never() -> ToolResult:
        raise AssertionError("ran twice")

    busy = await ledger.once(db, "book:3", "book_move", "CA1", never)
    assert busy.content == ledger.IN_PROGRESS and busy.data == {"error": "in progress"}
    release.set()
    assert (await first).content == "Booked."
