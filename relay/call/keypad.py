"""The keypad: digits collected for a tool (``collect_digits``), and the agent's key menu.

While digits are being collected, each key is added until ``#``, the maximum or a pause; the
digits then become the caller's next message. Outside collection a key does what the agent's
``[keypad]`` table says: transfer, say a line, stand for a prompt, or end the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from relay.agents import AgentProfile

log = structlog.get_logger("relay.call.keypad")


class KeypadHost(Protocol):
    """What the keypad needs from its call."""

    @property
    def agent(self) -> AgentProfile: ...

    def start_turn(self, text: str, *, lang: str | None, received: float) -> None: ...
    def say(self, text: str) -> None: ...
    def transfer_by_key(self, digit: str) -> None: ...
    def end_by_key(self, digit: str) -> None: ...


class Keypad:
    """One call's keypad state."""

    def __init__(self, host: KeypadHost, pause: float) -> None:
        self._host = host
        self._pause = pause
        self._digits: list[str] | None = None
        self._purpose = ""
        self._max = 12
        self._timer: asyncio.TimerHandle | None = None
        #: Told when collection starts (True) and stops (False): mid-call config (h4).
        self.on_change: Callable[[bool], None] | None = None

    @property
    def collecting(self) -> bool:
        return self._digits is not None

    def collect(self, purpose: str, max_digits: int) -> None:
        self._digits, self._purpose, self._max = [], purpose, max_digits
        if self.on_change is not None:
            self.on_change(True)

    def pressed(self, digit: str, now: float) -> None:
        if self._digits is not None:
            if digit == "#":
                self.finish("#")
                return
            self._digits.append(digit)
            if len(self._digits) >= self._max:
                self.finish("max")
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._pause, self.finish, "pause")
            return
        host = self._host
        option = host.agent.keypad.get(digit)
        if option is None:
            log.info("dtmf_unmapped", digit=digit)
        elif option.action == "transfer":
            host.transfer_by_key(digit)
        elif option.action == "say":
            host.say(option.text)
        elif option.action == "prompt":
            host.start_turn(option.text, lang=None, received=now)
        elif option.action == "end":
            host.end_by_key(digit)

    def finish(self, reason: str) -> None:
        """Stop collecting; unless the caller spoke instead, the digits become a message."""
        self.cancel_timer()
        digits, self._digits = "".join(self._digits or []), None
        if self.on_change is not None:
            self.on_change(False)
        if reason == "speech":
            return
        log.info("digits_collected", count=len(digits), ended_by=reason)
        self._host.start_turn(
            f"(Typed on the keypad for {self._purpose}: {digits or 'nothing'})",
            lang=None,
            received=time.perf_counter(),
        )

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
