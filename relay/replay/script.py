"""The caller's side of a recording: what the caller did, and how far the agent had got.

Each frame the caller sent waits for the agent to reach the point it had reached when the frame
was first received, measured in what the agent sent (finished talk cycles, plus the characters
of the answer being spoken), not in time.
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
class Step:
    """One thing the caller does: send ``raw`` (or hang up) once the agent reached ``wait``."""

    raw: str | None  # None: close the socket
    wait: Point
    pause: float  # the caller's recorded think time after the agent reached ``wait``
    kind: str
    close_code: int = 1000


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
    """What the caller did in each session, and the agent's progress before each action."""
    scripts = []
    for session, events in recording.session_events():
        if session is None:
            continue
        progress = Progress()
        steps: list[Step] = []
        last_in: float | None = None
        last_out: float | None = None
        for event in events:
            kind, data, t = event["kind"], event.get("data") or {}, float(event.get("t") or 0.0)
            if kind == "frame_out":
                progress.feed(parse_frame(data.get("raw")))
                last_out = t
            elif kind in ("frame_in", "frame_in_invalid", "session_end"):
                point = progress.point()
                anchor = max((x for x in (last_in, last_out) if x is not None), default=t)
                # Think time counts from whatever came last; a barge-in goes at once.
                pause = 0.0 if point.talking or last_in is None else max(0.0, t - anchor)
                if kind == "session_end":
                    code = data.get("close_code")
                    close = (
                        code
                        if isinstance(code, int)
                        and 1000 <= code < 5000
                        and code not in (1005, 1006)
                        else 1000
                    )
                    steps.append(Step(None, point, pause, "hangup", close))
                    break
                raw = data.get("raw")
                frame_type = str(parse_frame(raw).get("type") or "invalid")
                steps.append(Step(str(raw), point, pause, frame_type))
                last_in = t
        if not steps or steps[-1].raw is not None:
            steps.append(Step(None, progress.point(), 0.0, "hangup"))
        scripts.append(SessionScript(session["session_id"], tuple(steps)))
    return scripts
