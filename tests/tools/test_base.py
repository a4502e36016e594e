"""The tool framework: schema from the signature and docstring, validation, failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.agents import AgentProfile
from relay.errors import ToolError
from relay.tools import ToolContext, invoke, tool


@tool(timeout=0.05)
async def weigh(ctx: ToolContext, piano: str, floors: int = 0) -> str:
    """Weigh a piano.

    Args:
        piano: The kind of piano.
        floors: Floors without a lift.
    """
    if piano == "crash":
        raise RuntimeError("scale broke")
    if piano == "slow":
        await asyncio.sleep(1)
    return f"{piano} on {floors} floors"


def context() -> ToolContext:
    agent = AgentProfile(
        name="t", business_name="T", system_prompt="p", welcome_greeting="hi",
        relay={"report_input_during_agent_speech": "none"},
    )  # fmt: skip
    return ToolContext(call_sid="CA1", agent=agent, caller="+61400000000", db=None, http=None,  # type: ignore[arg-type]
                       now=lambda: datetime.now(UTC), services={})  # fmt: skip


def test_the_schema_comes_from_the_signature_and_docstring() -> None:
    schema: dict[str, Any] = weigh.openai_schema()
    assert schema["function"]["description"] == "Weigh a piano."
    params = schema["function"]["parameters"]
    assert params["required"] == ["piano"]
    assert params["properties"]["piano"] == {"type": "string", "description": "The kind of piano."}
    assert params["properties"]["floors"]["type"] == "integer"


def test_bad_arguments_become_a_message_for_the_model() -> None:
    with pytest.raises(ToolError, match="floors"):
        weigh.parse('{"piano": "upright", "floors": "lots"}')
    with pytest.raises(ToolError, match="not valid JSON"):
        weigh.parse('{"piano": ')
    with pytest.raises(ToolError, match="Extra inputs"):
        weigh.parse('{"piano": "upright", "colour": "black"}')


async def test_a_crashing_or_slow_tool_returns_an_error_result() -> None:
    crashed = await invoke(weigh, context(), weigh.parse('{"piano": "crash"}'))
    slow = await invoke(weigh, context(), weigh.parse('{"piano": "slow"}'))
    fine = await invoke(weigh, context(), weigh.parse('{"piano": "upright", "floors": 2}'))

    assert crashed.content.startswith("Error: weigh failed unexpectedly")
    assert crashed.data == {"error": "crashed: RuntimeError('scale broke')"}
    assert slow.data == {"error": "timeout"}
    assert fine.content == "upright on 2 floors"
