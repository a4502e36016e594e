"""The caller's side of a recording: what the caller did, and how far the agent had got.

Each frame the caller sent waits for the agent to reach the point it had reached when the frame
was first received, measured in what the agent sent (finished talk cycles, plus the characters
of the answer being spoken), not in time. The console's supervisor commands (``supervisor``
events: a whisper, a take-over, an end) are steps too, given at the point they were applied.
A step the agent reached by its own caller-silence timer (``caller_silent`` events since the
previous step) carries those silences and how long the agent took then, so that the caller
waits them out (:func:`relay.replay.runner.step_wait`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relay.recordings.format import Recording


@dataclass(frozen=True)
class Point:
    """How far the agent had got: finished talk cycles and the open cycle's size."""

    cycles: int = 0  # talk cycles with words, closed by a last:true frame
    chars: int = 0  # characters sent in the cycle still open
    frames: int = 0  # text frames sent in the cycle still open
    ended: bool = False  # an end frame was sent

    @property
    def talking(self) -> bool:
        return self.frames > 0


class Progress:
    """Follows the agent's outbound frames, in the order they were sent."""

    def __init__(self) -> None:
        self.cycles = 0
        self.chars = 0
        self.frames = 0
        self.ended = False
        self.text: list[str] = []  # the open cycle's words
        self.said = ""  # the last closed cycle's words

    def feed(self, frame: Mapping[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "text":
            token = str(frame.get("token") or "")
            self.chars += len(token)
            self.frames += 1
            self.text.append(token)
            if frame.get("last"):
                if self.chars:
                    self.cycles += 1
                    self.said = "".join(self.text)
                self.chars = self.frames = 0
                self.text = []
        elif kind == "end":
            self.ended = True

    def point(self) -> Point:
        return Point(self.cycles, self.chars, self.frames, self.ended)

    def heard(self, chars: int) -> str:
        """The first ``chars`` characters of what the agent is saying (or said last)."""
        return ("".join(self.text) if self.frames else self.said)[:chars]

    def reached(self, point: Point) -> bool:
        if self.ended:
            return True  # nothing more is coming
        if point.ended:
            return False
        if self.cycles > point.cycles:
            return True
        if self.cycles < point.cycles:
            return False
        return not point.talking or (self.chars >= point.chars and self.frames >= point.frames)


@dataclass(frozen=True)
class Command:
    """A supervisor's command as it was applied to the call (a ``supervisor`` event)."""

    kind: str  # whisper | takeover | end (relay.storage.console.COMMANDS)
    argument: str
    by: str


@dataclass(frozen=True)
class Step:
    """One thing the caller does: send ``raw`` (or hang up) once the agent reached ``wait``; or
    one thing the supervisor did then (``command``)."""

    raw: str | None  # None: close the socket (or give ``command``)
    wait: Point
    pause: float  # the caller's recorded think time after the agent reached ``wait``
    kind: str  # the frame's type, "hangup" or "supervisor"
    close_code: int = 1000
    command: Command | None = None
    #: The model requests the call had made before this step (every session so far).
    requests: int = 0
    #: The ``silence_timeout`` (as recorded) of each caller-silence timer of the agent that ran
    #: out between the previous step and this one (its ``caller_silent`` events).
    silences: tuple[float, ...] = ()
    #: With ``silences``: how long the agent took in the recording to reach ``wait`` after the
    #: previous step (those timers, the lines it said, their speaking time); 0 without.
    held: float = 0.0


@dataclass(frozen=True)
class SessionScript:
    session_id: str
    steps: tuple[Step, ...]


def parse_frame(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def caller_script(recording: Recording) -> list[SessionScript]:
    """What the caller (and the supervisor) did in each session, and the agent's progress
    before each action."""
    scripts = []
    requests = 0  # the call's model requests so far, over its sessions
    for session, events in recording.session_events():
        if session is None:
            continue
        progress = Progress()
        steps: list[Step] = []
        last_in: float | None = None  # the caller's (or the supervisor's) last action
        last_out: float | None = None
        silences: list[float] = []
        for event in events:
            kind, data, t = event["kind"], event.get("data") or {}, float(event.get("t") or 0.0)
            if kind == "llm_request":
                requests += 1
            if steps and steps[-1].kind == "hangup":
                continue  # the session is over (a later request: counted above)
            if kind == "frame_out":
                progress.feed(parse_frame(data.get("raw")))
                last_out = t
            elif kind == "caller_silent":
                after = data.get("after_s")
                silences.append(float(after) if isinstance(after, int | float) else 0.0)
            elif kind in ("frame_in", "frame_in_invalid", "session_end", "supervisor"):
                point = progress.point()
                anchor = max((x for x in (last_in, last_out) if x is not None), default=t)
                # Think time counts from whatever came last; a barge-in goes at once.
                pause = 0.0 if point.talking or last_in is None else max(0.0, t - anchor)
                held = 0.0
                if silences and last_in is not None and last_out is not None:
                    held = max(0.0, last_out - last_in)
                raw: str | None = None
                close = 1000
                command: Command | None = None
                if kind == "supervisor":
                    step_kind = "supervisor"
                    command = Command(
                        str(data.get("kind") or ""),
                        str(data.get("argument") or ""),
                        str(data.get("by") or "replay"),
                    )
                elif kind == "session_end":
                    step_kind = "hangup"
                    code = data.get("close_code")
                    if isinstance(code, int) and 1000 <= code < 5000 and code not in (1005, 1006):
                        close = code
                else:
                    raw = str(data.get("raw"))
                    step_kind = str(parse_frame(raw).get("type") or "invalid")
                steps.append(
                    Step(raw, point, pause, step_kind, close, command=command, requests=requests,
                         silences=tuple(silences), held=held)
                )  # fmt: skip
                silences = []
                last_in = t
        if not steps or steps[-1].kind != "hangup":
            steps.append(Step(None, progress.point(), 0.0, "hangup", requests=requests))
        scripts.append(SessionScript(session["session_id"], tuple(steps)))
    return scripts
