"""The LLM client as `relay serve` wires it: settings, an agent's [llm] table, the recorded usage."""

from __future__ import annotations

from typing import Any

import pytest

from relay.storage import repository
from relay.testing import ScriptedLLM, Stall, Text

pytestmark = pytest.mark.asyncio


def said(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("token", "") for f in frames if f.get("type") == "text")


async def test_a_slow_local_model_is_served_when_its_first_token_timeout_allows(
    start_relay: Any,
) -> None:
    # 4.8 s to the first token: longer than the default turn budget (4.5 s) and the agent's
    # apology budget (4.0 s); RELAY_LLM_FIRST_TOKEN_TIMEOUT=8 must carry it.
    llm = ScriptedLLM([Stall(4.8, then=Text("Here is your answer."))])
    async with start_relay(
        llm, RELAY_LLM_FIRST_TOKEN_TIMEOUT="8", RELAY_LLM_MAX_RETRIES="0"
    ) as relay:
        call = relay.call()
        await call.connect()
        turn = await call.say("How much to move an upright?")

    assert said(turn.frames).endswith("Here is your answer.")
    assert len(llm.requests) == 1  # served on the first attempt, never cut short


async def test_the_usage_of_each_request_is_recorded_with_its_cached_tokens(
    start_relay: Any,
) -> None:
    llm = ScriptedLLM([Text("Hello there."), Text("Sure thing.")])
    async with start_relay(llm) as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hi")
        await call.say("Can you help?")
        await call.close()
        await relay.session_closed()
        events = await repository.call_events(relay.runtime.deps.db, call.call_sid)

    usages = [e.data["usage"] for e in events if e.kind == "llm_response"]
    assert len(usages) == 2
    first, second = usages
    assert set(first) == {
        "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "estimated",
    }  # fmt: skip
    assert first["completion_tokens"] == 3 and second["completion_tokens"] == 3
    assert first["estimated"] is False
    # The second request starts with the first one's prompt, so a prompt cache reuses it...
    assert 0 < second["prompt_tokens_details"]["cached_tokens"] < second["prompt_tokens"]
    assert second["prompt_tokens"] > first["prompt_tokens"]
    assert [r["stream_options"] for r in llm.requests] == [{"include_usage": True}] * 2
