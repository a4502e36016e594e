"""The caller's side of a recording: each frame waits for the point the agent had reached."""

from __future__ import annotations

from pathlib import Path

from relay.recordings.format import Recording
from relay.replay.script import caller_script

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def _load(name: str) -> Recording:
    return Recording.read(SESSIONS / f"{name}.jsonl")


def test_the_caller_script_waits_for_the_agent() -> None:
    [script] = caller_script(_load("interruption"))
    kinds = [step.kind for step in script.steps]
    assert kinds == ["setup", "prompt", "interrupt", "prompt", "prompt", "hangup"]
    setup, _first, interrupt, second, third, hangup = script.steps
    assert setup.pause == 0 and not setup.wait.talking
    assert (
        interrupt.wait.talking
        and interrupt.wait.cycles == 0
        and interrupt.wait.chars >= len("We cover all of Melbourne")
    )
    assert interrupt.pause == 0  # a barge-in goes as soon as the point is reached
    assert second.wait.cycles == 1 and not second.wait.talking  # the cut answer's cycle closed
    assert third.wait.cycles == 2 and hangup.wait.cycles == 3
    [handoff] = caller_script(_load("handoff"))
    assert handoff.steps[-1].kind == "hangup" and handoff.steps[-1].wait.ended
