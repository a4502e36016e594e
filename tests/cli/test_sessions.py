"""``relay sessions show``: what a person reads about a recorded call."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson

from relay.cli.sessions import render_transcript
from relay.recordings.format import Recording, export_call
from relay.testing import ScriptedLLM, Text

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def test_show_lists_every_keypad_press_with_what_the_agent_said_next() -> None:
    shown = render_transcript(Recording.read(SESSIONS / "keypad.jsonl"))
    presses = [line for line in shown.splitlines() if line.startswith("Keypad:")]
    assert presses == [
        'Keypad: the caller pressed 9 at +0.0 s → "To speak with our office, press zero. '
        'For a quote, press one, or just tell me about your piano."',
        "Keypad: the caller pressed 0 at +0.0 s → \"No worries, I'll put you through to "
        'someone from our office now."',
    ]


def test_a_key_pressed_as_the_caller_hangs_up_is_listed_without_an_answer() -> None:
    recording = Recording.read(SESSIONS / "keypad.jsonl")
    events = recording.events
    last_in = max(i for i, e in enumerate(events) if e["kind"] == "frame_in")
    press = {**events[last_in], "seq": events[last_in]["seq"], "t": events[last_in]["t"] + 2.5}
    press["data"] = {"raw": orjson.dumps({"type": "dtmf", "digit": "#"}).decode()}
    recording.events = [*events[: last_in + 1], press, *events[last_in + 1 :]]
    shown = render_transcript(recording)
    assert any(line.startswith("Keypad: the caller pressed # at +") for line in shown.splitlines())
    assert "Keypad: the caller pressed # at" in shown and "pressed # at +2.5 s\n" in shown


async def test_the_calls_row_counts_its_sessions(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]],
) -> None:
    """A call whose socket dropped and came back has two sessions, and its row says so."""
    llm = ScriptedLLM([Text("Hello there."), Text("Welcome back.")])
    async with start_relay(llm) as relay:
        first = relay.call()
        await first.connect()
        await first.say("Hello?")
        await first.drop()
        await relay.session_closed()
        again = relay.call(call_sid=first.call_sid)  # the same call, a new session
        await again.connect()
        await again.say("Are you still there?")
        await again.close()
        await relay.session_closed(2)
        recording = await export_call(relay.runtime.deps.db, first.call_sid)
    assert len(recording.sessions) == 2
    assert recording.call["sessions"] == 2
    assert " · 2 session(s)" in render_transcript(recording)
