"""The home page's "Answered": calls the model answered beyond the greeting, as the outcomes
have it (a call none of whose replies came is ``abandoned``, not answered)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.storage.db import Database
from relay.storage.models import Call, Turn
from relay.storage.outcomes import CallAnalysis
from relay.web.console import queries

pytestmark = pytest.mark.asyncio

GREETING: dict[str, Any] = {"role": "assistant", "content": "Thanks for calling, how can I help?"}
ASKED: dict[str, Any] = {"role": "user", "content": "How much to move a piano?"}
APOLOGY: dict[str, Any] = {"role": "assistant", "content": "Sorry, I've hit a snag.",
                           "llm_request_at": 2.0, "error": "LLM answered HTTP 500"}  # fmt: skip
REPLY: dict[str, Any] = {
    "role": "assistant",
    "content": "About 400 dollars.",
    "llm_request_at": 2.0,
}
TOOL_CALL: dict[str, Any] = {"role": "assistant", "content": "", "llm_request_at": 2.0,
                             "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "transfer", "arguments": "{}"}}]}  # fmt: skip
AFTER_TOOL: dict[str, Any] = {"role": "assistant", "content": "Putting you through now."}
SILENT_REPLY: dict[str, Any] = {"role": "assistant", "content": "", "llm_request_at": 2.0}


async def add_call(
    db: Database, sid: str, turns: list[dict[str, Any]], *, turn_count: int | None = None,
    outcomes: list[str] | None = None, days_ago: int = 0,
) -> None:  # fmt: skip
    started = datetime.now(UTC) - timedelta(days=days_ago, minutes=5)
    async with db.session() as session, session.begin():
        session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412345678",
                         started_at=started, ended_at=started + timedelta(seconds=60),
                         outcome="hung-up", status="completed",
                         turns=len(turns) if turn_count is None else turn_count))  # fmt: skip
        for seq, turn in enumerate(turns):
            session.add(Turn(call_sid=sid, session_id="VX" + sid, seq=seq, created_at=started,
                             **turn))  # fmt: skip
        if outcomes is not None:
            session.add(CallAnalysis(call_sid=sid, agent="piano-removals", outcomes=outcomes,
                                     fields={}, usage={}, cost={}, cost_total=0.01,
                                     currency="USD", computed_at=started))  # fmt: skip


@pytest.mark.parametrize("days_ago", [0, 4], ids=["today", "a-stored-day"])
async def test_answered_means_the_model_answered(db: Database, days_ago: int) -> None:
    calls: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
        "CA-failed": ([GREETING, ASKED, APOLOGY], ["abandoned", "llm-failure"]),
        "CA-replied": ([GREETING, ASKED, REPLY], ["answered-only"]),
        "CA-transferred": ([GREETING, ASKED, TOOL_CALL, AFTER_TOOL], ["transferred"]),
        "CA-greeted-only": ([GREETING], ["abandoned"]),
        "CA-said-nothing": ([GREETING, ASKED, SILENT_REPLY], ["abandoned"]),
    }
    for sid, (turns, outcomes) in calls.items():
        await add_call(db, sid, turns, outcomes=outcomes, days_ago=days_ago)
    # Retention purged these two: their analyses say what the turns did.
    await add_call(db, "CA-purged-answered", [], turn_count=5, outcomes=["quoted"],
                   days_ago=days_ago)  # fmt: skip
    await add_call(db, "CA-purged-abandoned", [], turn_count=3, outcomes=["abandoned"],
                   days_ago=days_ago)  # fmt: skip
    await add_call(db, "CA-never-analysed", [GREETING, ASKED, REPLY], days_ago=days_ago)

    figures = await queries.analytics(db, agent="", days=7, agents=["piano-removals"])
    assert figures.calls == 8
    assert figures.outcomes["abandoned"] == 4
    # CA-replied, CA-transferred, CA-purged-answered, CA-never-analysed: every analysed call is
    # answered or abandoned.
    assert figures.answered == 4
    assert figures.answered - 1 + figures.outcomes["abandoned"] == figures.analysed
