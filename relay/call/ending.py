"""How a call comes to an end on its own: a caller who goes quiet, and the counts kept for the
call's summary (interrupts, and those whose utterance was only a backchannel).

:class:`SilenceWatch` is a timer the session arms when the agent has finished speaking: from
Twilio's ``agentSpeaking`` "off" when speaker events arrive, otherwise from the end of the reply
plus an estimate of how long it takes to say. Anything the caller does disarms it. When it fires
the first time the agent asks whether the caller is still there; the second time it says goodbye
and ends the call. The session decides when firing is not allowed (a tool running, keypad entry,
a transfer under way).
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable
from typing import Final

#: Words that on their own only acknowledge the speaker ("uh-huh", "yeah") rather than take the
#: turn; an interrupt whose utterance holds nothing else is a false barge-in.
BACKCHANNEL: Final = frozenset(
    [
        "uh-huh",
        "uh",
        "huh",
        "mhm",
        "mm",
        "mmm",
        "mm-hmm",
        "hmm",
        "hm",
        "yeah",
        "yep",
        "yes",
        "yup",
        "okay",
        "ok",
        "right",
        "sure",
        "alright",
        "aha",
        "ah",
        "oh",
        "cool",
        "gotcha",
        "yeah-yeah",
    ]
)
BACKCHANNEL_PHRASES: Final = frozenset({"i see", "got it", "all right", "oh okay", "that's right"})
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def is_backchannel(text: str) -> bool:
    """Whether ``text`` is only an acknowledgement ("uh-huh", "yeah, okay", "mm")."""
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    if not words:
        return False
    joined = " ".join(words)
    if joined in BACKCHANNEL_PHRASES:
        return True
    return all(w in BACKCHANNEL for w in words)


class Silence(enum.Enum):
    """Where the call is in the silence sequence."""

    LISTENING = "listening"  # nothing asked yet
    ASKED = "asked"  # "Are you still there?" said once


class SilenceWatch:
    """One call's caller-silence timer.

    ``fire`` is called (on the event loop) when the caller has said nothing for ``timeout``
    seconds after the agent finished speaking; it gets the current stage.
    """

    def __init__(self, timeout: float, fire: Callable[[Silence], None]) -> None:
        self.timeout = timeout
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self.stage = Silence.LISTENING
        self.speaker_events = False  # seen an agentSpeaking frame: wait for its "off"

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def agent_finished(self, speaking_seconds: float) -> None:
        """The agent sent the end of a talk cycle: arm after it has been said (estimated),
        unless speaker events will tell when it has been."""
        if not self.speaker_events:
            self._arm(speaking_seconds + self.timeout)

    def agent_speaking(self, on: bool) -> None:
        """A speaker event: ``agentSpeaking`` on or off."""
        self.speaker_events = True
        if on:
            self.disarm()
        else:
            self._arm(self.timeout)

    def agent_started(self) -> None:
        """The agent started a new talk cycle."""
        self.disarm()

    def caller_active(self) -> None:
        """The caller spoke, interrupted or pressed a key: start over."""
        self.stage = Silence.LISTENING
        self.disarm()

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, delay: float) -> None:
        if not self.enabled:
            return
        self.disarm()
        self._handle = asyncio.get_running_loop().call_later(delay, self._fired)

    def _fired(self) -> None:
        self._handle = None
        self._fire(self.stage)
