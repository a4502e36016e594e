"""The order of what a session writes: the writer task and the turn writing its reply's words
itself (``CallSession.write_now``) never reorder frames, even over a socket whose sends make
the writer wait."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from relay.testing import ScriptedLLM, Stall, Text
from relay.web.socket import RelaySocket
from tests.conftest import agent_toml, strip, write_profile

FILLER = "One moment while I check that. "


def write_agent(prompts_dir: Path, **fields: Any) -> None:
    write_profile(prompts_dir, agent_toml(["transfer_to_person", "end_call"]), **fields)


@pytest.mark.parametrize("socket", ["immediate", "waits"])
async def test_frames_keep_their_order_whoever_writes_them(
    start_relay: Any, prompts_dir: Path, monkeypatch: pytest.MonkeyPatch, socket: str
) -> None:
    if socket == "waits":
        send = RelaySocket.send

        async def waiting_send(self: RelaySocket, text: str) -> None:
            # The writer suspends mid-write, as a slow socket makes it; the filler's write lasts
            # until the reply's first words have come in, so they find a write under way.
            await asyncio.sleep(0.2 if "One moment" in text else 0)
            await send(self, text)

        monkeypatch.setattr(RelaySocket, "send", waiting_send)
    # the filler goes out through the writer task, the reply's words from the turn itself
    write_agent(prompts_dir, llm_filler_after=0.05)
    reply = "Hello there, how can I help you with your piano today?"
    llm = ScriptedLLM([Stall(0.15, then=Text(reply)), Text("Bye now.")])
    async with start_relay(llm) as relay:
        call = relay.call()
        await call.connect()
        first = await call.say("Hello?")
        second = await call.say("Thanks.")
        await call.close()
        await relay.session_closed()
        sessions = list(relay.runtime.deps.live.values())

    frames = strip(first.frames)
    assert frames[0] == {"type": "text", "token": FILLER, "last": False, "preemptible": True}
    assert frames[-1] == {"type": "text", "token": "", "last": True}
    assert "".join(f["token"] for f in frames[1:-1]) == reply
    assert all(f["last"] is False for f in frames[:-1])
    assert second.text == "Bye now." and strip(second.frames)[-1]["last"] is True
    assert sessions == []  # every session closed its writer
