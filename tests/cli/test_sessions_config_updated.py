"""``relay sessions show`` lists the ``configUpdated`` events Twilio sent (provider failover),
whichever of the two possible shapes they came in (notes, sections 0.1 and 0.5)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.cli.sessions import render_transcript
from relay.recordings.format import load_call
from relay.testing import Text

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module


async def test_config_updated_events_are_shown(relay: Any) -> None:
    relay.llm.push(Text("Sure."))
    call = relay.call()
    await call.connect()
    await call.send({"type": "configUpdated", "ttsProvider": "Google", "voice": "en-AU-Neural2-A"})
    await call.send(
        {"type": "info", "name": "configUpdated", "value": {"transcriptionProvider": "Google"}}
    )
    reply = await call.say("Hello?")
    await call.close()
    await relay.session_closed()

    assert reply.text == "Sure."  # the call went on
    recording = await load_call(relay.runtime.deps.db, call.call_sid)
    text = render_transcript(recording)
    assert (
        "Configuration updated by Twilio (frame): ttsProvider=Google, voice=en-AU-Neural2-A" in text
    )
    assert "Configuration updated by Twilio (info): transcriptionProvider=Google" in text
