"""Graceful drain: SIGTERM lets live calls finish before the server stops.

uvicorn, left alone, answers SIGTERM by closing every WebSocket at once (code 1012), which cuts
every live reply mid-sentence. So the app puts its own SIGTERM handler in front of uvicorn's
(:func:`install`), and on the first SIGTERM :meth:`Drain.run`:

1. turns ``/readyz`` to 503 (the balancer stops sending calls) and ``/twiml`` to the polite
   busy answer;
2. lets live calls go on until they end, for at most ``RELAY_DRAIN_SECONDS``; a call whose
   agent has ``application_reconnect = true`` is instead handed over as soon as it is between
   turns: its socket is closed with 1012 (Service Restart) and Twilio reconnects it to another
   replica, which resumes it from the shared database (:mod:`relay.call.reconnect`);
3. then tells each remaining caller a short line and hands them to the agent's person (the
   ``<Connect action>`` dials them) or ends the call cleanly, with the outcome
   ``server-shutdown``;
4. flushes the recorder, and only then hands the signal to uvicorn, which stops as usual.

A second SIGTERM (more than two seconds after the first: a worker under systemd gets the unit's
SIGTERM and its supervisor's copy at once), or SIGINT (Ctrl+C), goes straight to uvicorn.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from relay.web.admission import CallGate

if TYPE_CHECKING:
    from relay.call.session import CallSession

log = structlog.get_logger("relay.web.drain")

OUTCOME = "server-shutdown"
TO_PERSON_LINE = "I'm sorry, I have to pass you to a colleague now. Please hold."
GOODBYE_LINE = "I'm sorry, I have to end the call now. Please call us back in a minute. Goodbye."
#: A second SIGTERM this soon after the first is the same request, delivered twice.
REPEAT_WINDOW = 2.0
#: After the last lines are sent, how long callers get to hear them before the server stops.
AFTER_LAST_LINES = 15.0

SignalHandler = Callable[[int, FrameType | None], Any]


class Drain:
    """The drain of one process: its state, and the procedure."""

    def __init__(self, gate: CallGate, recorder: Any, seconds: float) -> None:
        self.gate = gate
        self.recorder = recorder
        self.seconds = seconds
        self.draining = False
        self.task: asyncio.Task[None] | None = None
        self.ended_by_drain = 0
        self.handed_over = 0  # calls closed with 1012 for Twilio to reconnect elsewhere (h11)

    def start(self, then: Callable[[], None] | None = None) -> asyncio.Task[None]:
        """Begin draining (idempotent); ``then`` runs once the drain has finished."""
        if self.task is None:
            self.draining = True
            self.task = asyncio.get_running_loop().create_task(self.run(), name="relay-drain")
            if then is not None:
                self.task.add_done_callback(lambda _: then())
        return self.task

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:  # the server must stop even if the drain went wrong
            log.exception("drain_failed")

    async def _run(self) -> None:
        started = time.monotonic()
        self.draining = True
        log.info("drain_started", live_calls=len(self.gate.live), drain_seconds=self.seconds)
        # Calls whose agent has application reconnect move to another replica: their socket is
        # closed (1012) between turns, and Twilio reconnects it (relay.call.reconnect). (h11)
        deadline = time.monotonic() + self.seconds
        handing = [
            asyncio.ensure_future(s.reconnect.hand_over(s, deadline)) for s in list(self.gate.live)
        ]
        idle = await self.gate.wait_idle(self.seconds)
        if handing:
            self.handed_over = sum(await asyncio.gather(*handing))
        if not idle:
            remaining = [s for s in self.gate.live if not s.reconnect.handed_over]
            log.warning("drain_deadline_passed", live_calls=len(remaining))
            for session in remaining:
                end_for_shutdown(session)
            self.ended_by_drain = len(remaining)
            await self.gate.wait_idle(AFTER_LAST_LINES)
        flushed = await self.recorder.flush(timeout=10.0)
        log.info(
            "drain_finished",
            seconds=round(time.monotonic() - started, 1),
            ended_by_drain=self.ended_by_drain,
            handed_over=self.handed_over,
            still_live=len(self.gate.live),
            recorder_flushed=flushed,
        )


def end_for_shutdown(session: CallSession) -> None:
    """Tell the caller, then hand them to the agent's person or end the call cleanly."""
    agent = session.agent
    if agent.person_number:
        line = TO_PERSON_LINE
        data = {
            "reasonCode": "live-agent-handoff",
            "reason": OUTCOME,
            "summary": "The service is restarting; the call is handed to a person.",
            "callSid": session.call_sid,
            "agent": agent.name,
        }
    else:
        line, data = GOODBYE_LINE, {"reasonCode": OUTCOME, "reason": OUTCOME}
    # CallSession._end speaks the line, lets it play, sends `end` and records the outcome; a
    # reply in progress is cut (the deadline has passed) and the talk cycle closed first.
    session._spawn(session._end(session._turn, line, data, outcome=OUTCOME))


def install(drain: Drain) -> Callable[[], None]:
    """Put the drain in front of the current SIGTERM handler (uvicorn's); returns an undo.

    Only in the main thread (where signal handlers live) and only when a Python handler is
    already installed, i.e. when a server that stops on SIGTERM is running this app.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return lambda: None
    loop = asyncio.get_running_loop()
    forward: SignalHandler = previous

    first: list[float] = []

    def handler(sig: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            loop.call_soon_threadsafe(drain.start, lambda: forward(sig, None))
        elif now - first[0] >= REPEAT_WINDOW:  # asked again, later: stop now
            forward(sig, frame)
        # Within the window it is the same request delivered twice (systemd signals every
        # process of the unit, and uvicorn's supervisor forwards the parent's too): ignored.

    signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return undo
