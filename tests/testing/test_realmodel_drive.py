"""The real-model run's caller (``python -m relay.testing.realmodel``), against a relay of its own
with the scripted model: what it prints is the call as Twilio would carry it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from relay.storage import repository
from relay.testing import ScriptedLLM, Text
from relay.testing.realmodel import drive

GREETING = "Thanks for calling Keystone Piano Movers, this is Kerry. Are you after a quote for a piano move, or can I help with something else?"


async def test_the_greeting_is_read_from_the_twiml_not_waited_for(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Twilio says the welcome greeting itself, so no frame carries it: waiting for one ran into
    the agent's silence re-prompt, which the run then printed (and the model read) as the
    greeting."""
    async with start_relay(
        ScriptedLLM([Text("Sure, which piano?")]), TWILIO_AUTH_TOKEN=""
    ) as relay:
        call_sid, figures = await drive(relay.ws_url, "+61390001234", ["A quote please"], 10.0)
        await relay.session_closed()
        events = await repository.call_events(relay.runtime.deps.db, call_sid)

    said = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("agent", "caller"))
    ]
    assert said == [
        f"agent (Twilio's voice): {GREETING}",
        "caller: A quote please",
        "agent: Sure, which piano?",
    ]
    assert [(f.said, f.heard) for f in figures] == [("A quote please", "Sure, which piano?")]
    assert "caller_silent" not in {e.kind for e in events}
