"""Application reconnect (issue 10 item 1): a dropped socket that Twilio opens again.

With ``application_reconnect = true`` in an agent's ``[relay]`` table, the TwiML carries
``applicationReconnect="true"`` and Twilio, after an unexpected drop, opens a new WebSocket for
the same call and replays up to 500 events it buffered. What that socket looks like is not
confirmed (notes §0.2), so both readings are served:

* **a fresh ``setup``** with the call's CallSid (the same or a new sessionId): the call is found
  in storage and resumed;
* **no ``setup``**, straight to the replayed frames: the socket's URL names the call
  (``/ws/<CallSid>``, the affinity path relay puts in the TwiML of these agents), or, failing
  that, the one call whose socket dropped in the last :data:`ADOPT_WITHIN` seconds; the call's
  recorded ``setup`` stands in for the missing one.

Either way the session resumes from storage (history with its tool calls and answers, the reply
in progress), skips the replayed frames it has already handled (:class:`Replay`: by content and
order against the inbound frames recorded for the call), gives a reply the drop cut off again,
once, and records the reconnect (a ``reconnected`` event, ``calls.reconnects`` + 1). Side
effects cannot repeat: tools with one go through the idempotency ledger, keyed by the CallSid.

On the dropping side, the session lets a running turn finish (its words go nowhere, but its
reply and tool results are stored for the new socket), marks it ``reply_cut_off`` and leaves the
call ``reconnecting``. The 64105 ``<Connect action>`` path stays the fallback: an agent without
the attribute, or a reconnect Twilio gives up on, gets a new ``<ConversationRelay>`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Final, Protocol

import structlog

from relay.agents import AgentProfile
from relay.call.ports import CallDependencies
from relay.call.transcript import Transcript
from relay.errors import ProtocolError
from relay.protocol import frames as protocol
from relay.storage import reconnects as stored

log = structlog.get_logger("relay.call.reconnect")

#: Call statuses of a call that can still take a socket.
LIVE: Final = frozenset({"in-progress", "reconnecting"})
#: Twilio buffers up to this many events during a drop (notes §0.2).
REPLAY_LIMIT: Final = 500
#: Seconds without a frame that acts on the call after which the replay is over.
REPLAY_QUIET: Final = 2.0
#: How long a dropped socket's running turn may go on so its reply is stored whole.
FINISH_TURN_SECONDS: Final = 8.0
#: How long a new socket waits for an older one of the same call (this process) to close.
WAIT_PREVIOUS_SECONDS: Final = 10.0
#: A socket that names no call and sends no setup adopts the one call dropped this recently.
ADOPT_WITHIN: Final = 120.0
#: The close code relay uses to hand a call to another replica (drain): RFC 6455's 1012
#: "Service Restart". Which codes Twilio treats as reconnectable is unconfirmed (notes §0.2).
CLOSE_SERVICE_RESTART: Final = 1012
#: A clean close: the caller hung up, or the session ended (never reconnected).
CLOSE_NORMAL: Final = 1000

Key = tuple[str, ...]


class _Turn(Protocol):
    @property
    def running(self) -> bool: ...


class _Keypad(Protocol):
    @property
    def collecting(self) -> bool: ...


class CallSession(Protocol):
    """What a reconnect needs of its call (:class:`relay.call.session.CallSession`)."""

    deps: CallDependencies
    setup: protocol.Setup | None
    transcript: Transcript
    close_code: int | None
    _event_seq: int
    _end_sent: bool

    @property
    def agent(self) -> AgentProfile: ...
    @property
    def call_sid(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def parameters(self) -> dict[str, str]: ...
    @property
    def phase(self) -> enum.Enum: ...
    @property
    def _turn(self) -> _Turn | None: ...
    @property
    def keypad(self) -> _Keypad: ...

    def event(self, kind: str, data: dict[str, Any], t: float | None = None) -> None: ...
    def send(
        self, frame: protocol.OutboundFrame, *, on_sent: Callable[[float], None] | None = None
    ) -> None: ...
    def answer_again(self, seq: int) -> None: ...


def enabled(agent: AgentProfile) -> bool:
    """Whether the agent's TwiML asks Twilio to reconnect dropped sockets."""
    value = agent.relay.get("application_reconnect", False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def frame_key(frame: protocol.InboundFrame) -> Key | None:
    """What identifies a frame that acts on the call (a final prompt, a key, a barge-in);
    ``None`` for the others (partial prompts, info), which a replay may carry harmlessly."""
    if isinstance(frame, protocol.Prompt):
        return ("prompt", frame.voice_prompt.strip(), frame.lang) if frame.last else None
    if isinstance(frame, protocol.Dtmf):
        return ("dtmf", frame.digit)
    if isinstance(frame, protocol.Interrupt):
        return ("interrupt", frame.utterance_until_interrupt)
    return None


def raw_key(raw: Any) -> Key | None:
    if not isinstance(raw, str):
        return None
    try:
        return frame_key(protocol.parse_inbound(raw))
    except ProtocolError:
        return None


class Replay:
    """Recognises frames a reconnected socket replays that the call has already handled.

    The frames that act on the call arriving on the new socket are matched, in order, against
    the ones recorded for the call: while they form a run of consecutive recorded frames (any
    run: Twilio may replay from the drop or from further back), they are replays and skipped.
    The first frame that breaks the run is new, and so is everything after it. A replay comes
    as a burst when the socket opens, so a frame after :data:`REPLAY_QUIET` seconds without any
    (since the resume, or the last frame that acts) is new as well: a caller who says "yes"
    again a while after the reconnect is answered.
    """

    def __init__(self, recorded: Sequence[Key], now: float | None = None) -> None:
        self.recorded = list(recorded)[-REPLAY_LIMIT:]
        self._starts = list(range(len(self.recorded)))  # where the run may have started
        self._matched = 0
        self._last = time.monotonic() if now is None else now
        self.active = bool(self.recorded)
        self.skipped = 0

    def handled(self, key: Key | None, now: float | None = None) -> bool:
        """True if this frame was already handled (skip it); ends the replay at a new one."""
        if not self.active or key is None:
            return False
        now = time.monotonic() if now is None else now
        quiet, self._last = now - self._last, now
        if quiet > REPLAY_QUIET:
            self.active = False
            return False
        n, recorded = self._matched, self.recorded
        starts = [j for j in self._starts if j + n < len(recorded) and recorded[j + n] == key]
        if not starts:
            self.active = False
            return False
        self._starts, self._matched = starts, n + 1
        self.skipped += 1
        return True


class Reconnect:
    """The application-reconnect side of one :class:`~relay.call.session.CallSession`."""

    def __init__(self) -> None:
        self.call_sid_hint = ""  # the CallSid the socket's URL names (``/ws/<CallSid>``)
        self.active = False  # this session continues a call whose socket dropped
        self.adopted = False  # ... and had no setup frame (the stored one stands in)
        self.replay = Replay(())
        self.closed = asyncio.Event()  # set when the session has closed and flushed
        self.handed_over = False  # closed by relay to move the call (drain)
        self.finishing = False  # a dropped socket's turn is finishing (its sends go nowhere)
        self.cut_off_seq: int | None = None
        self.close_socket: Callable[[int, str], Awaitable[None]] | None = None  # set by /ws
        self._found = stored.StoredCall(None)

    # -- a socket that starts without setup ------------------------------------------------

    async def adopt(self, session: CallSession, raw: str | bytes) -> bool:
        """The socket's first frame is not ``setup``: if it belongs to a live call with
        application reconnect, rebuild that call's setup from storage. True if adopted."""
        try:
            frame = protocol.parse_inbound(raw)
        except ProtocolError:
            frame = None
        if isinstance(frame, protocol.Setup):
            return False
        deps = session.deps
        call_sid = self.call_sid_hint
        if not call_sid and (frame is None or frame_key(frame) is None):
            return False  # a stray frame before setup, not a replay: wait for setup as before
        try:
            if not call_sid:
                since = deps.now() - timedelta(seconds=ADOPT_WITHIN)
                candidates = await stored.awaiting_reconnect(deps.db, since)
                if len(candidates) != 1:
                    return False  # none, or not sure which: wait for a setup as before
                call_sid = candidates[0]
            await _wait_previous(session, call_sid)
            found = await stored.stored_call(deps.db, call_sid)
        except Exception as exc:
            log.error("reconnect_lookup_failed", error=repr(exc)[:300])
            return False
        setup = _last_setup(found.events)
        if found.call is None or found.call.status not in LIVE or setup is None:
            log.warning("reconnect_refused", call_sid=call_sid, known=found.call is not None)
            return False
        if not enabled(deps.agents.resolve(setup.custom_parameters, setup.to)):
            return False
        session.setup = setup
        self.adopted = True
        log.info("reconnect_without_setup", call_sid=call_sid, session_id=setup.session_id)
        return True

    # -- the new socket -----------------------------------------------------------------------

    async def before_history(self, session: CallSession, previous: object | None) -> None:
        """In ``_start``, before the history is read: decide whether this is a reconnect and,
        if so, let an older socket of the call in this process finish and flush first."""
        if not enabled(session.agent) or "resumed" in session.parameters:
            return  # the 64105 path marks its sessions ``resumed``
        deps = session.deps
        try:
            if previous is not None and previous is not session:
                # The old socket of this call, in this process: its turn finishes, its records
                # are written, before the history is read.
                await wait_closed(previous)
                await deps.recorder.flush(timeout=5.0)
            found = await stored.stored_call(deps.db, session.call_sid)
        except Exception as exc:
            log.error("reconnect_lookup_failed", error=repr(exc)[:300])
            return
        if found.call is None or (found.call.status not in LIVE and not self.adopted):
            return
        self.active = True
        self._found = found

    def resumed(self, session: CallSession) -> None:
        """In ``_start``, after the history is loaded: replay filter, marks, the cut-off reply."""
        if not self.active:
            return
        found = self._found
        call = found.call
        assert call is not None
        events = found.events
        self.replay = Replay(
            [k for _, kind, data in events if kind == "frame_in" for k in [raw_key(data.get("raw"))]
             if k is not None]
        )  # fmt: skip
        # The event numbers of a session id that comes back go on from where they stopped.
        session._event_seq = max(session._event_seq, found.last_seq.get(session.session_id, 0))
        reconnects = (getattr(call, "reconnects", 0) or 0) + 1
        repeated = {d.get("seq") for _, kind, d in events if kind == "reply_repeated"}
        cut = [d for _, kind, d in events if kind == "reply_cut_off"]
        pending = cut[-1] if cut and cut[-1].get("seq") not in repeated else None
        session.deps.recorder.update_call(session.call_sid, reconnects=reconnects)
        data = {
            "previous_status": call.status, "setup": not self.adopted, "reconnects": reconnects,
            "recorded_frames": len(self.replay.recorded),
            "cut_off_seq": pending.get("seq") if pending else None,
        }  # fmt: skip
        session.event("reconnected", data)
        log.info("call_reconnected", **data)
        if pending is not None:
            self._repeat(session, pending)

    def _repeat(self, session: CallSession, mark: dict[str, Any]) -> None:
        """Give the reply the drop cut off again, once: the stored words if the turn finished,
        else the turn is answered again (the model is asked once more)."""
        seq = mark.get("seq")
        if not isinstance(seq, int):
            return
        messages = list(session.transcript)
        at = next((i for i, m in enumerate(messages) if m.role == "user" and m.seq == seq), None)
        if at is None:
            return
        after = messages[at + 1 :]
        if any(m.role == "user" for m in after):
            return  # the caller spoke since: nothing to repeat
        self.cut_off_seq = seq
        session.event("reply_repeated", {"seq": seq, "complete": bool(mark.get("complete"))})
        # The words of the reply's last round: a filler said while tools ran is not repeated.
        tools = [i for i, m in enumerate(after) if m.role == "tool"]
        last_round = after[tools[-1] + 1 :] if tools else after
        words = " ".join(
            m.content.strip() for m in last_round if m.role == "assistant" and m.content
        )
        if mark.get("complete") and words:
            session.send(protocol.Text(token=words, last=True))
            log.info("reply_repeated", seq=seq, chars=len(words))
            return
        for m in after:  # what the caller may have heard of it is not known: left out
            if m.role == "assistant" and not m.tool_calls and m.content:
                m.set_content("")
                session.transcript.record(m.row)
        log.info("reply_asked_again", seq=seq)
        session.answer_again(seq)

    def skip(self, session: CallSession, frame: protocol.InboundFrame) -> bool:
        """In ``_receive``: True (and recorded) if ``frame`` is a replay already handled."""
        if not self.replay.active:
            return False
        key = frame_key(frame)
        if not self.replay.handled(key):
            return False
        assert key is not None
        session.event("replay_skipped", {"frame": list(key)})
        log.info("replayed_frame_skipped", type=key[0], skipped=self.replay.skipped)
        return True

    # -- the dropping socket --------------------------------------------------------------------

    def dropped(self, session: CallSession, was_active: bool) -> bool:
        """At close: the socket went away without an ``end`` or a hang-up, on a call Twilio
        may reconnect (or relay handed the call over)."""
        if not was_active or session._end_sent or not enabled(session.agent):
            return False
        return self.handed_over or session.close_code != CLOSE_NORMAL

    async def finish_turn(self, session: CallSession, task: asyncio.Task[Any]) -> bool:
        """Let the dropped socket's turn finish (bounded) so its reply is stored whole."""
        self.finishing = True  # its words go nowhere: not worth a warning each
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait({task}, timeout=FINISH_TURN_SECONDS)
        finally:
            self.finishing = False
        return task.done()

    def mark_cut_off(self, session: CallSession, seq: int, complete: bool) -> None:
        session.event("reply_cut_off", {"seq": seq, "complete": complete})
        log.info("reply_cut_off", seq=seq, complete=complete)

    async def hand_over(self, session: CallSession, deadline: float) -> bool:
        """Drain: once the call is between turns (or at ``deadline``, monotonic), close its
        socket with 1012 so Twilio reconnects it to another replica. False if not possible."""
        if self.close_socket is None or session.phase.value != "active":
            return False
        if not enabled(session.agent):
            return False
        while time.monotonic() < deadline:
            turn = session._turn
            if not (turn is not None and turn.running) and not session.keypad.collecting:
                break
            await asyncio.sleep(0.05)
        self.handed_over = True
        log.info("call_handed_over", close_code=CLOSE_SERVICE_RESTART)
        await self.close_socket(CLOSE_SERVICE_RESTART, "drain-reconnect")
        return True


def _last_setup(events: Sequence[tuple[str, str, dict[str, Any]]]) -> protocol.Setup | None:
    for _, kind, data in reversed(events):
        raw = data.get("raw")
        if kind != "frame_in" or not isinstance(raw, str) or '"setup"' not in raw:
            continue
        try:
            frame = protocol.parse_inbound(raw)
        except ProtocolError:
            continue
        if isinstance(frame, protocol.Setup):
            return frame
    return None


async def wait_closed(previous: object) -> None:
    """Wait (at most :data:`WAIT_PREVIOUS_SECONDS`) for an older session of the call to have
    closed and flushed its records."""
    reconnect = getattr(previous, "reconnect", None)
    if isinstance(reconnect, Reconnect):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reconnect.closed.wait(), WAIT_PREVIOUS_SECONDS)


async def _wait_previous(session: CallSession, call_sid: str) -> None:
    previous = session.deps.live.get(call_sid)
    if previous is not None and previous is not session:
        await wait_closed(previous)


def socket_url(ws_url: str, agent: AgentProfile, call_sid: str) -> str:
    """The TwiML ``url``: ``…/ws``, or for an agent with application reconnect ``…/ws/<CallSid>``
    (a path, signed like the rest of the URL; query strings are avoided, notes §6.2), so that a
    reconnected socket that sends no ``setup`` still says which call it is."""
    if enabled(agent) and call_sid.isascii() and call_sid.isalnum() and len(call_sid) <= 64:
        return f"{ws_url.rstrip('/')}/{call_sid}"
    return ws_url
