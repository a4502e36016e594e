"""At most once: a tool with a side effect (a booking, an SMS) runs once per idempotency key.

The ledger itself is plain data in :mod:`relay.storage.repository`; this module turns what it
answers into what the model reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from relay.storage import repository
from relay.storage.db import Database
from relay.tools.base import ToolResult

IN_PROGRESS = "That is already being done; wait for it rather than asking again."
MAYBE_DONE = (
    "That was already tried earlier in this call and may have gone through (no answer came in "
    "time), so it was not repeated. Tell the caller so rather than trying again."
)


def settled_status(result: ToolResult) -> str:
    """``done``; ``failed`` (may be tried again); or ``unknown`` when the side effect may have
    happened without an answer (the tool timed out, or flagged its result ``unknown``)."""
    data = result.data or {}
    if data.get("unknown") is True or data.get("error") == "timeout":
        return "unknown"
    return "failed" if "error" in data else "done"


async def once(
    db: Database,
    key: str,
    tool: str,
    call_sid: str | None,
    run: Callable[[], Awaitable[ToolResult]],
) -> ToolResult:
    """Run a side effect at most once per idempotency key.

    The key is claimed in its own transaction before the side effect runs, so two concurrent
    attempts cannot both run it; a finished one returns the stored result instead.
    """
    claim = await repository.claim_side_effect(db, key, tool, call_sid)
    if claim.state == "done":
        return ToolResult(
            f"{claim.result} (Already done earlier in this call; not repeated.)",
            data={"idempotent_replay": True},
        )
    if claim.state == "running":
        return ToolResult(IN_PROGRESS, data={"error": "in progress"})
    if claim.state == "unknown":
        return ToolResult(MAYBE_DONE, data={"error": "outcome unknown", "unknown": True})
    status = "failed"
    result: ToolResult | None = None
    try:
        result = await run()
        status = settled_status(result)
        return result
    finally:
        await repository.settle_side_effect(
            db, key, status=status, result=result.content if result is not None else None
        )


__all__ = ["IN_PROGRESS", "once"]
