"""The caller's side of a recording: each frame waits for the point the agent had reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.recordings.format import Recording
from relay.replay.runner import step_wait
from relay.replay.script import Point, Step, caller_script

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


def test_a_step_held_up_by_the_agents_silence_timer_waits_it_out() -> None:
    # The agent asked "Are you still there?" 10 s after the caller's last frame (its
    # silence_timeout then), and the caller's next frame waited for that line.
    quiet = Step('{"type":"info"}', Point(cycles=2), 0.0, "info", silences=(10.0,), held=10.4)
    assert step_wait(quiet, 10.0, 10.0) == pytest.approx(20.4)  # --timeout, and the timer
    assert step_wait(quiet, 10.0, 15.0) == pytest.approx(25.4)  # the profile's timeout now
    assert step_wait(quiet, 10.0, None) == pytest.approx(20.4)  # unknown: the recorded one
    assert step_wait(quiet, 2.0, 10.0) == pytest.approx(12.4)  # --timeout stays the minimum
    prompt = Step('{"type":"prompt"}', Point(cycles=1), 0.5, "prompt")
    assert step_wait(prompt, 10.0, 15.0) == 10.0  # no timer of the agent's: --timeout alone
