"""One :class:`CallSession` per ConversationRelay WebSocket.

The receive loop parses and records every frame and never waits on the model: each final
prompt starts a :class:`~relay.call.turn.Turn` task, which streams the model's tokens to the
caller as ``text`` frames. A newer final prompt, an ``interrupt`` or a closed socket cancels the
running turn. After an interrupt the assistant message in the history (the
:class:`~relay.call.transcript.Transcript`) is cut down to what the caller actually heard, so
the next request to the model carries only that. One writer task sends every frame.

The session also keeps the call going when the model fails (:mod:`relay.call.trouble`), when
the caller goes quiet (:mod:`relay.call.ending`), and runs the keypad (:mod:`relay.call.keypad`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final, ParamSpec
from zoneinfo import ZoneInfo

import orjson
import structlog

from relay import metrics
from relay.agents import AgentProfile
from relay.call.ending import Silence, SilenceWatch, is_backchannel
from relay.call.escalation import Escalation
from relay.call.guards import BOOKING_TOOLS, NOTES_TAIL, Promises
from relay.call.keypad import Keypad
from relay.call.midcall import MidCall
from relay.call.ports import (
    DIGIT_PAUSE,
    FILLER_AFTER,
    CallDependencies,
    CallerDirectory,
    Retrieved,
    Retriever,
)
from relay.call.reconnect import Reconnect, wait_closed
from relay.call.transcript import Message, Transcript
from relay.call.turn import Cancelled, Turn
from relay.errors import ProtocolError
from relay.llm.types import ChatRequest, Timeouts
from relay.protocol import frames as protocol
from relay.storage import repository
from relay.storage.requests import RequestLog
from relay.tools import (
    CollectDigits,
    Hangup,
    SendDigits,
    SwitchLanguage,
    Tool,
    Transfer,
)
from relay.tools.base import SessionAction

__all__ = [
    "DIGIT_PAUSE",
    "FILLER_AFTER",
    "CallDependencies",
    "CallSession",
    "CallerDirectory",
    "Phase",
    "Retrieved",
    "Retriever",
]

log = structlog.get_logger("relay.call.session")

#: Frames that arrive before ``setup`` are kept (to be recorded under the call) up to these
#: limits; beyond them they are counted and dropped.
PRE_SETUP_FRAMES: Final = 64
PRE_SETUP_BYTES: Final = 256 * 1024
#: A socket a newer one of the same call replaced is closed normally (nothing to resume).
CLOSE_SUPERSEDED: Final = 1000


class Phase(enum.Enum):
    WAITING_FOR_SETUP = "waiting-for-setup"
    ACTIVE = "active"
    ENDING = "ending"
    CLOSED = "closed"


class CallSession:
    """One ConversationRelay session: one WebSocket, one call leg."""

    def __init__(self, deps: CallDependencies, send: Callable[[str], Awaitable[None]]) -> None:
        self.deps = deps
        self._send_raw = send
        self.phase = Phase.WAITING_FOR_SETUP
        self.call_sid = ""
        self.session_id = ""
        self.agent: AgentProfile = deps.agents.default
        self.setup: protocol.Setup | None = None
        # The call's parts hold the session weakly (a proxy, or a callback that does nothing once
        # the session is gone): with strong references back, a finished call would be a cycle
        # that only a full garbage collection frees (relay.heap). Nothing of the call outlives
        # its socket handler, so these never find it gone while the call runs.
        self.transcript = Transcript(record=_weakly(self._record_turn), now=deps.now)
        self.promises = Promises()  # amounts and bookings this call's tools produced (issue 15)
        self._event_seq = 0
        self._requests = RequestLog()  # llm_request bodies: the first in full, then deltas
        self._pre_setup: list[tuple[float, str, dict[str, Any]]] = []
        self._pre_setup_bytes = 0
        self.pre_setup_dropped = 0
        self._turn: Turn | None = None
        # Frames to write, in order. Whoever holds ``_writing`` writes them: the writer task
        # (woken by ``_wake``) or, for the reply's words, the turn itself (:meth:`write_now`).
        self._pending: deque[tuple[str, Callable[[float], None] | None]] = deque()
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._customer_task: asyncio.Task[Mapping[str, Any] | None] | None = None
        self._agent_speaking = False
        self._speech_done = asyncio.Event()
        # An interrupt stopped the agent's speech: the "off" Twilio then sends is for that
        # speech, not for a line said after it (unless an "on" comes first).
        self._stale_off = False
        self.keypad = Keypad(weakref.proxy(self), deps.digit_pause)
        self.midcall = MidCall(deps.agents.default, _weakly(self.send))  # mid-call config (h4)
        self.keypad.on_change = self.midcall.digits  # mid-call config (h4)
        self.reconnect = Reconnect()  # application reconnect (h11)
        self.language: str | None = None
        self._tools: dict[str, Tool] = {}
        self._schemas: list[dict[str, Any]] = []
        self._end_sent = False
        self._cycle: list[str] = []  # the text of the talk cycle being sent
        # the offer of a person when the model fails
        self.escalation = Escalation(weakref.proxy(self))
        self.silence = SilenceWatch(0.0, _weakly(self._silence_fired))
        self.interrupts = 0
        self.backchannel_interrupts = 0
        self._after_interrupt = False
        self.frames_in = 0
        self.frames_out = 0
        self.invalid_frames = 0
        self.outcome: str | None = None
        self.handoff_data: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None  # set by the socket layer (e.g. "idle")
        self._started = time.perf_counter()
        self._call_started: datetime | None = None  # when a resumed call first started
        self._sessions_before = 0  # sessions the call had before this one (a reconnect)

    # == receive loop ======================================================================

    async def run(self, frames: AsyncIterator[str | bytes]) -> None:
        """Serve the session until the socket closes. Never raises for bad input."""
        self._writer = asyncio.create_task(self._write_loop(), name="relay-writer")
        try:
            async for raw in frames:
                # application reconnect (h11): replayed frames with no setup first
                if self.frames_in == 0 and await self.reconnect.adopt(self, raw):
                    await self._start()
                self._receive(raw)
                if self.phase is Phase.WAITING_FOR_SETUP and self.setup is not None:
                    await self._start()
        finally:
            await self._close()
            self._turn = None  # it points back at the session (its host); it is over

    def _receive(self, raw: str | bytes) -> None:
        now = time.perf_counter()
        self.frames_in += 1
        try:
            frame = protocol.parse_inbound(raw)
        except ProtocolError as exc:
            self.invalid_frames += 1
            error = str(exc)[:300]
            self._event("frame_in_invalid", {**protocol.record_of(raw), "error": error}, now)
            log.warning("frame_invalid", error=error, size=protocol.frame_size(raw))
            return
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        # The setup frame is always kept, even when the pre-setup buffer is full.
        self._event("frame_in", {"raw": text}, now, keep=isinstance(frame, protocol.Setup))
        if isinstance(frame, protocol.Info):
            self._on_info(frame)
        elif isinstance(frame, protocol.ConfigUpdated):
            log.info("config_updated", via=frame.via, **frame.details)
            self._event("config_updated", {"via": frame.via, **frame.details}, now)
        elif isinstance(frame, protocol.Setup):
            if self.setup is not None:
                log.warning("setup_repeated")
                return
            self.setup = frame
        elif self.phase is not Phase.ACTIVE:
            # Twilio sends setup first; anything else before it (or after the end) is noted only.
            if self.phase is Phase.WAITING_FOR_SETUP:
                log.warning("frame_before_setup", type=frame.type)
        elif self.reconnect.skip(self, frame):  # application reconnect (h11): a replay
            return
        elif isinstance(frame, protocol.Prompt):
            self._on_prompt(frame, now)
        elif isinstance(frame, protocol.Interrupt):
            self._on_interrupt(frame)
        elif isinstance(frame, protocol.Dtmf):
            self.silence.caller_active()
            self.keypad.pressed(frame.digit, now)
        elif isinstance(frame, protocol.Error):
            log.warning("twilio_error", description=frame.description[:300])
            self.midcall.error(frame)  # mid-call config (h4)
        else:
            log.info("frame_unknown", type=frame.type)

    # == setup ============================================================================

    @property
    def outbound(self) -> bool:
        return self.setup is not None and self.setup.direction.startswith("outbound")

    @property
    def caller(self) -> str:
        """The person on the other end: ``from`` on inbound calls, ``to`` on outbound ones."""
        if self.setup is None:
            return ""
        return self.setup.to if self.outbound else self.setup.from_

    @property
    def caller_name(self) -> str:
        return self.setup.caller_name if self.setup else ""

    @property
    def tools(self) -> Mapping[str, Tool]:
        return self._tools

    @property
    def parameters(self) -> dict[str, str]:
        return dict(self.setup.custom_parameters) if self.setup else {}

    async def _start(self) -> None:
        setup = self.setup
        assert setup is not None
        self.call_sid, self.session_id = setup.call_sid, setup.session_id
        self.transcript.call_sid, self.transcript.session_id = self.call_sid, self.session_id
        self.agent = self.deps.agents.resolve(setup.custom_parameters, setup.to)
        # mid-call config (h4)
        self.midcall.use(self.agent, self.deps.services.get(self.agent.name))
        structlog.contextvars.bind_contextvars(call_sid=self.call_sid)
        self.phase = Phase.ACTIVE
        previous = self.deps.live.get(self.call_sid)  # application reconnect (h11)
        self.deps.live[self.call_sid] = self
        for t, kind, data in self._pre_setup:
            self._event(kind, data, t)
        self._pre_setup.clear()
        if self.pre_setup_dropped:
            self._event("pre_setup_dropped", {"frames": self.pre_setup_dropped})
        if self.deps.directory is not None and self.caller:
            self._customer_task = asyncio.create_task(
                self.deps.directory.lookup(self.agent, self.caller), name="relay-caller-lookup"
            )
        self._tools = self.deps.tools.select(self.agent.tools, agent=self.agent.name)
        self._schemas = self.deps.tools.schemas(self._tools)
        self.silence = SilenceWatch(self.agent.silence_timeout, _weakly(self._silence_fired))
        await self.reconnect.before_history(self, previous)  # application reconnect (h11)
        if isinstance(previous, CallSession) and previous is not self:
            await self._supersede(previous)
        resumed = await self._load_history()
        now = self.deps.now()
        self.deps.recorder.call(
            call_sid=self.call_sid, agent=self.agent.name, from_number=setup.from_,
            to_number=setup.to, direction=setup.direction, caller_name=setup.caller_name,
            status="in-progress", outcome=None, ended_at=None,
            started_at=self._call_started or now, sessions=self._sessions_before + 1,
        )  # fmt: skip
        self.deps.recorder.session(
            session_id=self.session_id, call_sid=self.call_sid, agent=self.agent.name,
            started_at=now, resumed=resumed,
        )  # fmt: skip
        greeting = setup.custom_parameters.get("greeting", self.agent.welcome_greeting)
        if self.reconnect.active:  # application reconnect (h11): the same session goes on
            greeting = ""
        if greeting:
            self.transcript.assistant(greeting, opens_cycle=True)
            # Twilio says the greeting itself (the TwiML's welcomeGreeting).
            self.silence.agent_finished(self.deps.speech_seconds(greeting))
        if resumed and self.language and not self.reconnect.active:
            # /handoff's TwiML names it too; a resume it did not build (an older relay's, a
            # fresh <Connect>) starts in the agent's language: say it again.
            self.send(
                protocol.Language(tts_language=self.language, transcription_language=self.language)
            )
        metrics.call_started(self.agent.name)
        self.reconnect.resumed(self)  # application reconnect (h11)
        log.info(
            "session_started", agent=self.agent.name, resumed=resumed, direction=setup.direction
        )

    async def _supersede(self, previous: CallSession) -> None:
        """A newer socket for a call whose older socket is still open in this process (a
        socket Twilio gave up on, not yet closed here): the call is served by one socket at a
        time, so close the older one, let its turn stop and its records be written, then read
        the history. Two sockets answering at once would number their turns alike and
        overwrite each other's rows."""
        if previous.reconnect.closed.is_set():
            return
        log.warning("session_superseded", previous_session=previous.session_id)
        self._event("session_superseded", {"previous_session": previous.session_id})
        close = previous.reconnect.close_socket
        try:
            if close is not None:
                await close(CLOSE_SUPERSEDED, "superseded")
            await wait_closed(previous)
            await self.deps.recorder.flush(timeout=5.0)
        except Exception as exc:  # the call goes on: its history may then miss the last turn
            log.error("supersede_failed", error=repr(exc)[:300])

    async def _load_history(self) -> bool:
        """Load the call's earlier turns (a reconnect after a dropped socket). True if any."""
        try:
            call, turns = await repository.call_history(self.deps.db, self.call_sid)
        except Exception as exc:  # the call goes on without its past rather than not at all
            log.error("history_load_failed", error=repr(exc))
            return False
        if call is None:
            return False
        self._call_started = call.started_at
        self._sessions_before = call.sessions or 0
        self.transcript.load(turns)
        self.promises.saw_history(m.content for m in self.transcript if m.role == "tool")
        try:  # the language the call had switched to: Twilio's new session starts in the TwiML's
            self.language = await repository.call_language(self.deps.db, self.call_sid)
        except Exception as exc:
            log.error("language_load_failed", error=repr(exc))
        with contextlib.suppress(Exception):  # the guard then errs on the side of caution
            done = await repository.tools_done(self.deps.db, self.call_sid)
            self.promises.booked = self.promises.booked or bool(done & set(BOOKING_TOOLS))
        return True

    # == prompts and turns =================================================================

    def _on_prompt(self, frame: protocol.Prompt, now: float) -> None:
        self.silence.caller_active()
        if not frame.last:
            # Partial transcripts are recorded, not answered; a retriever may start on them.
            prefetch = getattr(self.deps.retriever, "prefetch", None)
            if prefetch is not None and frame.voice_prompt.strip():
                previous = self.transcript.recent_user_text(messages=1)
                prefetch(self.agent, frame.voice_prompt, previous=previous, key=self.session_id)
            return
        text = frame.voice_prompt.strip()
        if not text:
            log.info("prompt_empty")
            return
        if self._after_interrupt:
            self._after_interrupt = False
            if is_backchannel(text):
                self.backchannel_interrupts += 1
                self._event("backchannel_interrupt", {"utterance": text[:100]})
        self.midcall.prompt()  # mid-call config (h4)
        if self.keypad.collecting:
            self.keypad.finish("speech")
        lang = frame.lang or None
        if self.escalation.offered:
            self.escalation.answer(frame.voice_prompt, lang=lang, received=now)
            return
        if self.escalation.asked_for_person(frame.voice_prompt, lang=lang, received=now):
            return
        self.start_turn(frame.voice_prompt, lang=frame.lang or None, received=now)

    def start_turn(self, text: str, *, lang: str | None, received: float) -> None:
        previous = self._turn
        if previous is not None and previous.running:
            previous.cancel(Cancelled.SUPERSEDED)
        message = self.transcript.user(text, lang=lang, prompt_received_at=received)
        turn = Turn(self, message.seq, received)
        turn.start(previous)
        self._turn = turn

    def answer_again(self, seq: int) -> None:
        """Answer the stored user message ``seq`` again (a reply a dropped socket cut off)."""
        self.stop_turn()
        turn = Turn(self, seq, time.perf_counter())
        turn.start(self._turn)
        self._turn = turn

    def stop_turn(self) -> None:
        turn = self._turn
        if turn is not None and turn.running:
            turn.cancel(Cancelled.SUPERSEDED)

    def say(self, text: str) -> None:
        """Say a line outside any turn (a keypad option, a question of the session's own)."""
        self.stop_turn()
        self.transcript.assistant(text, opens_cycle=True)
        self.send(protocol.Text(token=text, last=True))

    # -- what a turn asks of its call (relay.call.turn.TurnHost) ---------------------------

    def request(
        self,
        tools: Mapping[str, Tool],
        retrieved: Retrieved | None,
        customer: Mapping[str, Any] | None,
        deadline: float,
        leave_out: Message | None = None,
    ) -> ChatRequest:
        return ChatRequest(
            model=self.deps.model_override or self.agent.model or "gpt-4o-mini",
            messages=self._messages(retrieved, customer, leave_out),
            tools=self._schemas
            if tools is self._tools
            else [t.openai_schema() for t in tools.values()],
            temperature=self.agent.temperature,
            max_tokens=self.agent.max_tokens,
            timeouts=Timeouts.of(self.agent.llm),
            deadline=deadline,
        )

    def record_request(self, request: ChatRequest, sent_at: float) -> None:
        # Stored after the session's first request as the change from the previous one.
        self._event("llm_request", self._requests.record(request.body()), sent_at)
        self._requests.stored(self._event_seq)

    @property
    def customer_ready(self) -> bool:
        """No caller lookup, or it has finished (:meth:`customer_now` then has its result)."""
        return self._customer_task is None or self._customer_task.done()

    def customer_now(self) -> Mapping[str, Any] | None:
        """The finished caller lookup's result (None when it failed, was cancelled or none ran)."""
        task = self._customer_task
        if task is None or task.cancelled():
            return None
        error = task.exception()
        if error is not None:
            log.warning("caller_lookup_failed", error=repr(error))
            return None
        return task.result()

    async def customer(self) -> Mapping[str, Any] | None:
        """The caller lookup's result, once it has finished (:meth:`customer_now`)."""
        task = self._customer_task
        if task is not None and not task.done():
            # Shielded: the lookup is shared by every turn, and cancelling this turn (an
            # interrupt, a newer prompt) must not cancel it for the turns that follow.
            with contextlib.suppress(Exception):  # customer_now logs it
                await asyncio.shield(task)
        return self.customer_now()

    def _messages(
        self,
        retrieved: Retrieved | None,
        customer: Mapping[str, Any] | None,
        leave_out: Message | None = None,
    ) -> list[dict[str, Any]]:
        # Cache-friendly (issue 15): what never changes within the call comes first, byte for
        # byte the same every turn, then the history, and last one system message with what
        # changes every turn (the time at a coarse resolution, the language, the passages
        # retrieved for the latest words). A server's prompt cache (OpenAI, vLLM, llama.cpp)
        # reuses all but that last message. The agent's system prompt stands alone first: a
        # chat template renders the tool schemas right after it (Qwen's, Hermes', Llama's), so
        # the prompt and the schemas are one prefix for every caller of the agent. The call's
        # own facts (the caller ID, a known caller) follow in a system message of their own;
        # at the end of the first one they put the schemas behind them, and a new caller's
        # first turn re-read ~2,100 tokens of schemas (79 % of the prompt with llama.cpp).
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.agent.system_prompt}]
        facts: list[str] = []
        if self.caller:
            who = "Number called (an outbound call)" if self.outbound else "Caller ID"
            facts.append(f"{who}: {self.caller}.")
        if customer:
            facts.append("Known caller: " + orjson.dumps(customer, default=str).decode())
        if facts:
            messages.append({"role": "system", "content": " ".join(facts)})
        messages.extend(self.transcript.openai(leave_out))
        now = _local_time(self.deps.now(), self.agent.timezone)
        latest = [f"Current date and time: {now}."]
        if self.language:
            latest.append(f"The call is now in {self.language}; reply in that language.")
        if retrieved is not None and retrieved.message:
            latest.append(retrieved.message)
        # A small model reads a system message after the caller's words as something to say
        # (Qwen2.5-Coder-1.5B did, word for word): say so.
        latest.append(NOTES_TAIL)
        messages.append({"role": "system", "content": "\n\n".join(latest)})
        return messages

    async def act(self, turn: Turn, action: SessionAction) -> None:
        if isinstance(action, SwitchLanguage):
            self.language = action.code
            self._event("language_switched", {"code": action.code})  # a resumed session's
            self.send(
                protocol.Language(tts_language=action.code, transcription_language=action.code)
            )
        elif isinstance(action, SendDigits):
            self.send(protocol.SendDigits(digits=action.digits))
        elif isinstance(action, CollectDigits):
            turn.close_talk()
            self.keypad.collect(action.purpose, action.max_digits)
        elif isinstance(action, Transfer):
            # The end sequence runs on its own: a barge-in must not stop the handoff.
            data = {"reasonCode": "live-agent-handoff", "reason": action.reason, "summary": action.summary,
                    "callSid": self.call_sid, "agent": self.agent.name}  # fmt: skip
            self._spawn(self._end(turn, action.line, data, outcome="transferred"))
        elif isinstance(action, Hangup):
            data = {"reasonCode": "end-call", "reason": action.reason}
            self._spawn(self._end(turn, action.line, data, outcome="completed-by-agent"))

    def turn_failed(self, turn: Turn, kind: str, error: str) -> str:
        """A failed turn: the apology, or after failures in a row the offer of a person."""
        return self.escalation.failed(kind, error)

    def turn_succeeded(self, turn: Turn) -> None:
        self.escalation.succeeded()

    # == ending ============================================================================

    def transfer_by_key(self, digit: str) -> None:
        if self.agent.person_number:
            data = {
                "reasonCode": "live-agent-handoff", "reason": f"caller pressed {digit}",
                "summary": "The caller pressed the keypad to reach a person.",
                "callSid": self.call_sid, "agent": self.agent.name,
            }  # fmt: skip
            self._spawn(
                self._end(self._turn, self.agent.transfer_line, data, outcome="transferred")
            )
        else:
            self.start_turn(
                f"(The caller pressed {digit} to reach a person, but nobody is available.)",
                lang=None,
                received=time.perf_counter(),
            )

    def end_by_key(self, digit: str) -> None:
        data = {"reasonCode": "end-call", "reason": f"caller pressed {digit}"}
        self._spawn(
            self._end(self._turn, self.agent.goodbye_line, data, outcome="completed-by-caller")
        )

    def end_call(self, line: str, data: dict[str, Any], *, outcome: str) -> None:
        """Say ``line``, let it play, then send ``end`` with ``data`` as the handoff data, and
        record ``outcome``; whatever the call was doing is stopped. Once per call."""
        self.spawn(self._end(self._turn, line, data, outcome=outcome))

    async def _end(
        self, turn: Turn | None, line: str, data: dict[str, Any], *, outcome: str
    ) -> None:
        """Speak a last line, let it play, then send ``end`` with the handoff data."""
        if self.phase is not Phase.ACTIVE:
            return
        self.phase = Phase.ENDING
        self.outcome = outcome
        self.silence.disarm()
        if turn is not None and turn.running:
            turn.cancel(Cancelled.SUPERSEDED)  # e.g. a keypad transfer mid-answer
        continuing = turn is not None and turn.talking
        if line:
            self.transcript.assistant(line, opens_cycle=not continuing)
            self._speech_done.clear()
            self.send(protocol.Text(token=(" " if continuing else "") + line, last=True))
            if turn is not None:
                turn.talking = False
            # Wait for Twilio's agentSpeaking "off" (speaker events), or as long as it takes to say.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._speech_done.wait(), self.deps.speech_seconds(line))
        self.handoff_data = orjson.dumps(data).decode()
        self.send(protocol.End(handoff_data=self.handoff_data))
        self._end_sent = True
        self.deps.recorder.update_call(
            self.call_sid, outcome=outcome, handoff_data=self.handoff_data
        )
        log.info("session_ending", outcome=outcome, reason=data.get("reason"))

    # -- a caller who goes quiet ---------------------------------------------------------------

    def _silence_fired(self, stage: Silence) -> None:
        if self.phase is not Phase.ACTIVE:
            return  # ending (a transfer, a goodbye) or closed
        if (self._turn is not None and self._turn.running) or self.keypad.collecting:
            return  # a tool or an answer is under way, or the caller is typing digits
        if self.escalation.silence():
            return  # nothing useful said after the offer of a person: it is carried out
        if stage is Silence.LISTENING:
            self._event("caller_silent", {"action": "re-prompt", "after_s": self.silence.timeout})
            log.info("caller_silent", action="re-prompt")
            self.silence.stage = Silence.ASKED
            self.say(self.agent.still_there_line)
            return
        self._event("caller_silent", {"action": "end", "after_s": self.silence.timeout})
        log.info("caller_silent", action="end")
        data = {"reasonCode": "end-call", "reason": "caller-silent"}
        self._spawn(self._end(None, self.agent.silence_goodbye_line, data, outcome="caller-silent"))

    # == interruptions =====================================================================

    def _on_interrupt(self, frame: protocol.Interrupt) -> None:
        self.silence.caller_active()
        self._stale_off = self._agent_speaking
        turn = self._turn
        if turn is not None and turn.running:
            turn.cancel(Cancelled.INTERRUPTED)
        elif turn is not None and turn.talking:
            turn.close_talk()
        heard = frame.utterance_until_interrupt
        self.transcript.cut_to_heard(heard)
        self.interrupts += 1
        metrics.interrupted(self.agent.name)
        self._after_interrupt = True
        log.info(
            "caller_interrupted", heard_chars=len(heard), after_ms=frame.duration_until_interrupt_ms
        )

    # == info ==============================================================================

    def _on_info(self, frame: protocol.Info) -> None:
        if frame.name == "agentSpeaking":
            self._agent_speaking = frame.value == "on"
            if self._agent_speaking:
                self._stale_off = False
            elif self._stale_off:
                self._stale_off = False  # the interrupted speech's: a last line has yet to play
            else:
                self._speech_done.set()
            if self.phase is Phase.ACTIVE:
                self.silence.agent_speaking(self._agent_speaking)
            self.midcall.agent_speaking(self._agent_speaking)  # mid-call config (h4)
        elif frame.name == "clientSpeaking" and frame.value == "on":
            self.silence.caller_active()

    # == recording and sending ==============================================================

    def _append(self, role: str, content: str, **fields: Any) -> Message:
        """Add a message to the history (kept for relay.call.supervisor's whispers)."""
        if role == "system":
            return self.transcript.system(content, **fields)
        if role == "assistant":
            return self.transcript.assistant(content, **fields)
        return self.transcript.user(content, **fields)

    def _record_turn(self, row: dict[str, Any]) -> None:
        self.deps.recorder.turn(**row)

    def event(self, kind: str, data: dict[str, Any], t: float | None = None) -> None:
        self._event(kind, data, t)
        self.midcall.observe(kind, data)  # mid-call config (h4)

    def _event(
        self, kind: str, data: dict[str, Any], t: float | None = None, *, keep: bool = False
    ) -> None:
        t = time.perf_counter() if t is None else t
        if self.phase is Phase.WAITING_FOR_SETUP:
            size = len(data.get("raw", "")) if isinstance(data.get("raw"), str) else 0
            if not keep and (
                len(self._pre_setup) >= PRE_SETUP_FRAMES
                or self._pre_setup_bytes + size > PRE_SETUP_BYTES
            ):
                self.pre_setup_dropped += 1
                if self.pre_setup_dropped == 1:
                    log.warning("pre_setup_buffer_full", frames=len(self._pre_setup))
                return
            self._pre_setup_bytes += size
            self._pre_setup.append((t, kind, data))
        else:
            self._store_event(t, kind, data)

    def _store_event(self, t: float, kind: str, data: dict[str, Any]) -> None:
        self._event_seq += 1
        self.deps.recorder.event(
            call_sid=self.call_sid,
            session_id=self.session_id,
            seq=self._event_seq,
            t=t,
            kind=kind,
            data=data,
        )

    def send(
        self,
        frame: protocol.OutboundFrame,
        *,
        on_sent: Callable[[float], None] | None = None,
        now: bool = False,
    ) -> None:
        """Queue ``frame`` for the socket. ``now``: the caller awaits :meth:`write_now` next
        (before anything else can run), so the writer task is not woken for it."""
        if self._end_sent or self.phase is Phase.CLOSED:
            if not self.reconnect.finishing:  # application reconnect (h11)
                log.warning("send_after_end_dropped", type=frame.type)
            return
        frame = self.midcall.outbound(frame)  # mid-call config (h4)
        if isinstance(frame, protocol.Text):
            # The caller-silence timer runs from the end of each talk cycle.
            self._cycle.append(frame.token)
            if frame.last:
                said, self._cycle = "".join(self._cycle), []
                self.silence.agent_finished(self.deps.speech_seconds(said))
            else:
                self.silence.agent_started()
        self._pending.append((frame.to_json(), on_sent))
        if not now:
            self._wake.set()

    _send = send  # the name used before the split

    async def write_now(self) -> None:
        """Write the queued frames from the calling task (the turn streaming a reply), unless
        a write is under way: its writer then writes them too, in order. A token's frame thus
        leaves in the event loop pass that brought the token, rather than one pass later when
        the writer task's turn comes (under load a pass takes milliseconds). uvicorn's send
        never suspends, so a turn cancelled (a barge-in) is never cancelled mid-write; under a
        server whose send waits, such a frame could go out without its ``frame_out`` record."""
        if self._pending and not self._writing.locked():
            await self._drain()

    async def _write_loop(self) -> None:
        """The writer task: writes what :meth:`send` queued, until the session closes."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()
            if self._closing and not self._pending:
                return

    async def _drain(self) -> None:
        """Write the queued frames in order; one writer at a time."""
        async with self._writing:
            try:
                while self._pending:
                    text, on_sent = self._pending.popleft()
                    try:
                        await self._send_raw(text)
                    except Exception as exc:  # the socket is gone: stop sending, keep recording
                        log.info("send_failed", error=repr(exc))
                        self._event("frame_out_failed", {"raw": text, "error": repr(exc)})
                        self.phase = Phase.CLOSED
                        continue
                    sent = time.perf_counter()
                    self.frames_out += 1
                    self._event("frame_out", {"raw": text}, sent)
                    if on_sent is not None:
                        on_sent(sent)
            finally:
                if self._pending:  # cancelled while writing (a turn's task): the writer goes on
                    self._wake.set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on its own (cancelled when the socket closes)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    _spawn = spawn  # the name relay.web.drain and relay.call.supervisor use

    # == close ============================================================================

    async def _close(self) -> None:
        """The socket closed: cancel everything, record the end, flush the recording."""
        was = self.phase
        self.phase = Phase.CLOSED
        self.keypad.cancel_timer()
        self.silence.disarm()
        turn = self._turn
        # application reconnect (h11): a dropped socket's turn finishes, stored for the next one
        dropped = self.reconnect.dropped(self, was is Phase.ACTIVE)
        if dropped and turn is not None and (turn.running or turn.talking):
            complete = turn.task is not None and await self.reconnect.finish_turn(self, turn.task)
            self.reconnect.mark_cut_off(self, turn.seq, complete)
        pending: list[asyncio.Task[Any]] = [*self._side_tasks]
        if turn is not None and turn.running:
            assert turn.task is not None
            turn.cancelled = Cancelled.CLOSED
            turn.task.cancel()
            pending.append(turn.task)
        if self._customer_task is not None and not self._customer_task.done():
            self._customer_task.cancel()
            pending.append(self._customer_task)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer, 1.0)
        if was is Phase.WAITING_FOR_SETUP:
            # Never set up: keep what arrived anyway, under a made-up id.
            self.call_sid = self.call_sid or f"unknown-{uuid.uuid4().hex[:12]}"
            self.session_id = self.session_id or self.call_sid
            self.phase = Phase.CLOSED
            for t, kind, data in self._pre_setup:
                self._store_event(t, kind, data)
            if self.pre_setup_dropped:
                self._store_event(
                    time.perf_counter(), "pre_setup_dropped", {"frames": self.pre_setup_dropped}
                )
            log.warning("session_closed_without_setup", frames=self.frames_in)
            await self.deps.recorder.flush()
            return
        now = self.deps.now()
        outcome = self.outcome or ("llm-failure" if self.escalation.failing else "hung-up")
        self.outcome = outcome  # what the web layer counts (relay.web.operations)
        self._event(
            "session_end",
            {"close_code": self.close_code, "outcome": outcome, "interrupts": self.interrupts,
             "backchannel_interrupts": self.backchannel_interrupts,
             "llm_failures": dict(self.escalation.state.failures), "close_reason": self.close_reason,
             "guards": self.promises.summary()},
        )  # fmt: skip
        self.deps.recorder.update_session(
            self.session_id,
            ended_at=now,
            close_code=self.close_code,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
        )
        live = self.deps.live.get(self.call_sid)
        if live is self or live is None:
            self.deps.live.pop(self.call_sid, None)
            status = "ended" if self._end_sent else "completed"
            if dropped:  # application reconnect (h11): Twilio may open a new socket
                status = "reconnecting"
            self.deps.recorder.update_call(
                self.call_sid,
                status=status,
                ended_at=now,
                outcome=outcome,
                turns=self.transcript.next_seq,
            )
        else:
            # A newer socket serves this call now (a reconnect): its record is not ours to end.
            log.info("late_close_left_live_call_alone", outcome=outcome)
        await self.deps.recorder.flush()
        self.reconnect.closed.set()  # application reconnect (h11)
        log.info(
            "call_session_closed", agent=self.agent.name, outcome=outcome,
            frames_in=self.frames_in, frames_out=self.frames_out, invalid_frames=self.invalid_frames,
            turns=self.transcript.next_seq, interrupts=self.interrupts,
            backchannel_interrupts=self.backchannel_interrupts,
            seconds=round(time.perf_counter() - self._started, 1),
        )  # fmt: skip
        structlog.contextvars.unbind_contextvars("call_sid")


_P = ParamSpec("_P")


def _weakly(method: Callable[_P, None]) -> Callable[_P, None]:
    """``method`` (a bound method) without keeping its object alive: once the object is gone,
    calling it does nothing."""
    ref = weakref.WeakMethod(method)

    def call(*args: _P.args, **kwargs: _P.kwargs) -> None:
        bound = ref()
        if bound is not None:
            bound(*args, **kwargs)

    return call


def _local_time(now: datetime, zone: str) -> str:
    """The day and the hour ("Wednesday 11 March 2026, after 2 PM AEDT"): coarse, so the
    request's last message changes no more than it must."""
    # The profile's zone was checked when it was loaded; ZoneInfo caches instances.
    local = now.astimezone(ZoneInfo(zone))
    hour = local.hour % 12 or 12
    return f"{local:%A} {local.day} {local:%B %Y}, after {hour} {local:%p %Z}"
