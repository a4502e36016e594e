"""One :class:`CallSession` per ConversationRelay WebSocket.

The receive loop parses and records every frame and never waits on the model: each final
prompt starts a turn task, which streams the model's tokens to the caller as ``text`` frames.
A newer final prompt, an ``interrupt`` or a closed socket cancels the running turn. After an
interrupt the assistant message in the history is cut down to what the caller actually heard,
so the next request to the model carries only that. One writer task sends every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import orjson
import structlog

from relay.agents import AgentProfile, AgentRegistry
from relay.errors import LLMError, ProtocolError, ToolError
from relay.llm.client import ChatModel, ChatRequest, Done, TextDelta, ToolCall
from relay.protocol import frames as protocol
from relay.storage import repository
from relay.storage.db import Database
from relay.storage.recorder import Recorder
from relay.storage.requests import RequestLog
from relay.tools import (
    CollectDigits,
    Hangup,
    SendDigits,
    SwitchLanguage,
    Tool,
    ToolContext,
    ToolRegistry,
    ToolResult,
    Transfer,
    invoke,
)
from relay.tools.base import SessionAction

log = structlog.get_logger("relay.call.session")

#: After this long, a running tool earns a filler line (sent preemptible, so the answer replaces it).
FILLER_AFTER = 0.7
#: A pause this long ends keypad digit collection.
DIGIT_PAUSE = 3.0


class Phase(enum.Enum):
    WAITING_FOR_SETUP = "waiting-for-setup"
    ACTIVE = "active"
    ENDING = "ending"
    CLOSED = "closed"


class Retriever(Protocol):
    """Knowledge retrieval for a turn (see relay.services.retrieval)."""

    async def retrieve(self, agent: AgentProfile, query: str) -> Retrieved | None: ...


@dataclass(frozen=True)
class Retrieved:
    """Reference material for one turn, and its provenance."""

    message: str  # the system message handed to the model
    provenance: list[dict[str, Any]]
    elapsed_ms: float
    error: str | None = None


class CallerDirectory(Protocol):
    """Finds who is calling, at setup (see relay.services.customers)."""

    async def lookup(self, agent: AgentProfile, phone: str) -> Mapping[str, Any] | None: ...


@dataclass
class CallDependencies:
    """The shared objects every session uses, built once by the app."""

    agents: AgentRegistry
    llm: ChatModel
    recorder: Recorder
    db: Database
    http: httpx.AsyncClient
    tools: ToolRegistry
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per agent name
    retriever: Retriever | None = None
    directory: CallerDirectory | None = None
    model_override: str | None = None
    max_tool_rounds: int = 5
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    speech_seconds: Callable[[str], float] = lambda text: min(8.0, 0.5 + len(text) / 15.0)
    filler_after: float = FILLER_AFTER
    digit_pause: float = DIGIT_PAUSE


class _Cancelled(enum.Enum):
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"
    CLOSED = "closed"


_CANCEL_FLAGS = {_Cancelled.INTERRUPTED: "interrupted", _Cancelled.SUPERSEDED: "superseded"}


@dataclass
class _Turn:
    """The turn task and what it has said so far."""

    seq: int  # the user message's seq
    task: asyncio.Task[None] | None = None
    talking: bool = False  # a talk cycle is open (text sent without last:true)
    summarised: bool = False  # the turn's rows and summary line have been written
    cancelled: _Cancelled | None = None


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
        self.history: list[dict[str, Any]] = []  # OpenAI messages, without the system prompt
        self._rows: list[dict[str, Any]] = []  # the stored turn row of each history message
        self._next_seq = 0
        self._event_seq = 0
        self._requests = RequestLog()  # llm_request bodies: the first in full, then deltas
        self._pre_setup: list[tuple[float, str, dict[str, Any]]] = []
        self._turn: _Turn | None = None
        self._out: asyncio.Queue[tuple[str, Callable[[float], None] | None] | None] = (
            asyncio.Queue()
        )
        self._writer: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._customer_task: asyncio.Task[Mapping[str, Any] | None] | None = None
        self._agent_speaking = False
        self._speech_done = asyncio.Event()
        self._digits: list[str] | None = None
        self._digit_purpose = ""
        self._digit_max = 12
        self._digit_timer: asyncio.TimerHandle | None = None
        self._language: str | None = None
        self._tools: dict[str, Tool] = {}
        self._schemas: list[dict[str, Any]] = []
        self._end_sent = False
        self.frames_in = 0
        self.frames_out = 0
        self.invalid_frames = 0
        self.outcome: str | None = None
        self.handoff_data: str | None = None
        self.close_code: int | None = None
        self._started = time.perf_counter()
        self._call_started: datetime | None = None  # when a resumed call first started

    # == receive loop ======================================================================

    async def run(self, frames: AsyncIterator[str | bytes]) -> None:
        """Serve the session until the socket closes. Never raises for bad input."""
        self._writer = asyncio.create_task(self._write_loop(), name="relay-writer")
        try:
            async for raw in frames:
                self._receive(raw)
                if self.phase is Phase.WAITING_FOR_SETUP and self.setup is not None:
                    await self._start()
        finally:
            await self._close()

    def _receive(self, raw: str | bytes) -> None:
        now = time.perf_counter()
        self.frames_in += 1
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            frame = protocol.parse_inbound(text)
        except ProtocolError as exc:
            self.invalid_frames += 1
            self._event("frame_in_invalid", {"raw": text[:8192], "error": str(exc)}, now)
            log.warning("frame_invalid", error=str(exc)[:300])
            return
        self._event("frame_in", {"raw": text}, now)
        if isinstance(frame, protocol.Info):
            self._on_info(frame)
        elif isinstance(frame, protocol.Setup):
            if self.setup is not None:
                log.warning("setup_repeated")
                return
            self.setup = frame
        elif self.phase is not Phase.ACTIVE:
            # Twilio sends setup first; anything else before it (or after the end) is noted only.
            if self.phase is Phase.WAITING_FOR_SETUP:
                log.warning("frame_before_setup", type=frame.type)
        elif isinstance(frame, protocol.Prompt):
            self._on_prompt(frame, now)
        elif isinstance(frame, protocol.Interrupt):
            self._on_interrupt(frame)
        elif isinstance(frame, protocol.Dtmf):
            self._on_dtmf(frame.digit, now)
        elif isinstance(frame, protocol.Error):
            log.warning("twilio_error", description=frame.description[:300])
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

    async def _start(self) -> None:
        setup = self.setup
        assert setup is not None
        self.call_sid, self.session_id = setup.call_sid, setup.session_id
        self.agent = self.deps.agents.resolve(setup.custom_parameters, setup.to)
        structlog.contextvars.bind_contextvars(call_sid=self.call_sid)
        self.phase = Phase.ACTIVE
        for t, kind, data in self._pre_setup:
            self._event(kind, data, t)
        self._pre_setup.clear()
        if self.deps.directory is not None and self.caller:
            self._customer_task = asyncio.create_task(
                self.deps.directory.lookup(self.agent, self.caller), name="relay-caller-lookup"
            )
        self._tools = self.deps.tools.select(self.agent.tools, agent=self.agent.name)
        self._schemas = self.deps.tools.schemas(self._tools)
        resumed = await self._load_history()
        now = self.deps.now()
        self.deps.recorder.call(
            call_sid=self.call_sid, agent=self.agent.name, from_number=setup.from_,
            to_number=setup.to, direction=setup.direction, caller_name=setup.caller_name,
            status="in-progress", outcome=None, ended_at=None,
            started_at=self._call_started or now,
        )  # fmt: skip
        self.deps.recorder.session(
            session_id=self.session_id, call_sid=self.call_sid, agent=self.agent.name,
            started_at=now, resumed=resumed,
        )  # fmt: skip
        greeting = setup.custom_parameters.get("greeting", self.agent.welcome_greeting)
        if greeting:
            self._append("assistant", greeting, spoken_text=greeting)
        log.info(
            "session_started", agent=self.agent.name, resumed=resumed, direction=setup.direction
        )

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
        for row in turns:
            message: dict[str, Any] = {"role": row.role, "content": row.content}
            if row.tool_calls:
                message["tool_calls"] = row.tool_calls
            if row.tool_call_id:
                message["tool_call_id"] = row.tool_call_id
            self.history.append(message)
            self._rows.append(
                {"call_sid": row.call_sid, "seq": row.seq, "session_id": row.session_id,
                 "role": row.role, "content": row.content, "created_at": row.created_at,
                 "spoken_text": row.content if row.role == "assistant" else None}
            )  # fmt: skip
        self._next_seq = (turns[-1].seq + 1) if turns else 0
        return True

    # == prompts and turns =================================================================

    def _on_prompt(self, frame: protocol.Prompt, now: float) -> None:
        if not frame.last:
            return  # partial transcripts are recorded, not answered
        text = frame.voice_prompt.strip()
        if not text:
            log.info("prompt_empty")
            return
        if self._digits is not None:
            self._finish_digits(reason="speech")
        self._start_turn(frame.voice_prompt, lang=frame.lang or None, received=now)

    def _start_turn(self, text: str, *, lang: str | None, received: float) -> None:
        previous = self._turn
        if previous is not None and previous.task is not None and not previous.task.done():
            self._cancel_turn(previous, _Cancelled.SUPERSEDED)
        row = self._append("user", text, lang=lang, prompt_received_at=received)
        turn = _Turn(seq=row["seq"])
        turn.task = asyncio.create_task(
            self._run_turn(turn, received, previous), name=f"relay-turn-{turn.seq}"
        )
        self._turn = turn

    def _cancel_turn(self, turn: _Turn, why: _Cancelled) -> None:
        turn.cancelled = why
        if turn.task is not None:
            turn.task.cancel()
        if turn.talking:
            # Close the talk cycle the cancelled turn left open.
            self._send(protocol.Text(token="", last=True))
            turn.talking = False

    async def _run_turn(self, turn: _Turn, received: float, previous: _Turn | None) -> None:
        if previous is not None and previous.task is not None and not previous.task.done():
            # Let the superseded turn finish its bookkeeping first (it is already cancelled).
            # asyncio.wait, not await: this turn's own cancellation must not be swallowed (nor
            # forwarded to the previous task), and the previous turn's outcome is not ours.
            await asyncio.wait({previous.task})
        rows: list[dict[str, Any]] = []
        timings: dict[str, float] = {"prompt_received_at": received}
        retrieved: Retrieved | None = None
        try:
            customer = await self._customer()
            if self.deps.retriever is not None and self.agent.knowledge_collection:
                retrieved = await self.deps.retriever.retrieve(self.agent, self._retrieval_query())
                timings["retrieval_done_at"] = time.perf_counter()
                if retrieved is not None:
                    self._event(
                        "retrieval",
                        {
                            "provenance": retrieved.provenance,
                            "elapsed_ms": retrieved.elapsed_ms,
                            "error": retrieved.error,
                        },
                    )
            tools = self._tools
            for round_ in range(1, self.deps.max_tool_rounds + 1):
                final = round_ == self.deps.max_tool_rounds
                done, row = await self._llm_round(
                    turn, rows, timings, retrieved, customer, {} if final else tools
                )
                if not done.tool_calls:
                    break
                action = await self._run_tools(turn, row, done.tool_calls, tools, customer)
                if action is not None:
                    await self._act(turn, action)
                    if isinstance(action, (Transfer, Hangup, CollectDigits)):
                        return
            if not any(row.get("spoken_text") for row in rows) and not turn.talking:
                # The model answered with nothing to say: never leave the caller in silence.
                self._apologise(turn, rows, "the model's reply was empty")
                return
            self._close_talk(turn)
        except asyncio.CancelledError:
            flag = _CANCEL_FLAGS.get(turn.cancelled) if turn.cancelled else None
            for row in rows:
                if flag:
                    row[flag] = True
                self.deps.recorder.turn(**row)
            raise
        except LLMError as exc:
            self._apologise(turn, rows, str(exc))
        except Exception as exc:  # a bug must not leave the caller in silence
            log.exception("turn_failed")
            self._apologise(turn, rows, f"internal error: {exc!r}")
        finally:
            self._summarise_turn(turn, rows, timings, retrieved)

    def _retrieval_query(self) -> str:
        """The caller's latest words, with a little recent context."""
        parts: list[str] = []
        for message in reversed(self.history):
            if message["role"] == "user" and message.get("content"):
                parts.append(message["content"])
                if len(parts) == 2 or sum(len(p) for p in parts) > 300:
                    break
        return " ".join(reversed(parts))

    async def _customer(self) -> Mapping[str, Any] | None:
        if self._customer_task is None:
            return None
        try:
            # Shielded: the lookup is shared by every turn, and cancelling this turn (an
            # interrupt, a newer prompt) must not cancel it for the turns that follow.
            return await asyncio.shield(self._customer_task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("caller_lookup_failed", error=repr(exc))
            return None

    def _messages(
        self, retrieved: Retrieved | None, customer: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        system = self.agent.system_prompt
        now = self.deps.now()
        context = [f"Current date and time: {_local_time(now, self.agent.timezone)}."]
        if self.caller:
            who = "Number called (an outbound call)" if self.outbound else "Caller ID"
            context.append(f"{who}: {self.caller}.")
        if customer:
            context.append("Known caller: " + orjson.dumps(customer, default=str).decode())
        if self._language:
            context.append(f"The call is now in {self._language}; reply in that language.")
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system + "\n\n" + " ".join(context)}
        ]
        if retrieved is not None and retrieved.message:
            messages.append({"role": "system", "content": retrieved.message})
        for message in self.history:
            if (
                message["role"] == "assistant"
                and not message.get("content")
                and not message.get("tool_calls")
            ):
                continue  # nothing was heard and nothing was done
            messages.append(message)
        return messages

    async def _llm_round(
        self,
        turn: _Turn,
        rows: list[dict[str, Any]],
        timings: dict[str, float],
        retrieved: Retrieved | None,
        customer: Mapping[str, Any] | None,
        tools: Mapping[str, Tool],
    ) -> tuple[Done, dict[str, Any] | None]:
        request = ChatRequest(
            model=self.deps.model_override or self.agent.model or "gpt-4o-mini",
            messages=self._messages(retrieved, customer),
            tools=self._schemas
            if tools is self._tools
            else [t.openai_schema() for t in tools.values()],
            temperature=self.agent.temperature,
            max_tokens=self.agent.max_tokens,
        )
        sent_at = time.perf_counter()
        timings.setdefault("llm_request_at", sent_at)
        # A snapshot (history messages are edited later: streaming, interruptions), stored
        # after the session's first request as the change from the previous one.
        self._event("llm_request", self._requests.record(request.body()), sent_at)
        self._requests.stored(self._event_seq)
        pieces: list[str] = []
        row: dict[str, Any] | None = None
        message: dict[str, Any] | None = None
        done: Done | None = None
        try:
            async for event in self.deps.llm.stream(request):
                if isinstance(event, TextDelta):
                    if message is None:
                        first = time.perf_counter()
                        timings.setdefault("first_token_at", first)
                        row = self._append("assistant", "", spoken_text="")
                        message = self.history[-1]
                        rows.append(row)
                        self._send(
                            protocol.Text(token=event.text),
                            on_sent=self._first_frame(turn, rows, timings),
                        )
                    else:
                        self._send(protocol.Text(token=event.text))
                    turn.talking = True
                    pieces.append(event.text)
                    message["content"] += event.text
                    assert row is not None
                    row["spoken_text"] = message["content"]
                    row["content"] = message["content"]
                else:
                    done = event
        finally:
            timings["last_token_at"] = time.perf_counter()
            self._event(
                "llm_response",
                {"pieces": pieces, "tool_calls": [dataclasses.asdict(tc) for tc in done.tool_calls] if done else [],
                 "finish_reason": done.finish_reason if done else None, "attempts": done.attempts if done else None,
                 "complete": done is not None},
            )  # fmt: skip
        assert done is not None
        if done.tool_calls:
            calls = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments},
                }
                for tc in done.tool_calls
            ]
            if message is None:
                row = self._append("assistant", "", spoken_text="")
                message = self.history[-1]
                rows.append(row)
            message["tool_calls"] = calls
            assert row is not None
            row["tool_calls"] = calls
        if row is not None:
            self.deps.recorder.turn(**row)
        return done, row

    def _first_frame(
        self, turn: _Turn, rows: list[dict[str, Any]], timings: dict[str, float]
    ) -> Callable[[float], None]:
        def sent(at: float) -> None:
            if "first_frame_at" in timings:
                return
            timings["first_frame_at"] = at
            if turn.summarised:
                # The writer sent the frame after the turn had finished (a reply that arrived
                # in one read): complete the stored timings now.
                first_frame_ms = round((at - timings["prompt_received_at"]) * 1000, 3)
                for row in rows:
                    row.update(first_frame_at=at, first_frame_ms=first_frame_ms)
                    self.deps.recorder.turn(**row)

        return sent

    async def _run_tools(
        self,
        turn: _Turn,
        row: dict[str, Any] | None,
        calls: Sequence[ToolCall],
        tools: Mapping[str, Tool],
        customer: Mapping[str, Any] | None,
    ) -> SessionAction | None:
        action: SessionAction | None = None
        filler_sent = False
        answered: set[str] = set()
        try:
            for call in calls:
                started = time.perf_counter()
                self._event(
                    "tool_call", {"id": call.id, "name": call.name, "arguments": call.arguments}
                )
                task = asyncio.create_task(
                    self._call_tool(call, tools, customer), name=f"relay-tool-{call.name}"
                )
                try:
                    if not filler_sent:
                        done, _ = await asyncio.wait({task}, timeout=self.deps.filler_after)
                        if not done:
                            filler_sent = True
                            filler = _filler(self.agent, turn.seq) + " "
                            self._send(protocol.Text(token=filler, preemptible=True))
                            turn.talking = True
                            self._said(row, filler)
                    result = await task
                except asyncio.CancelledError:
                    task.cancel()
                    raise
                elapsed = (time.perf_counter() - started) * 1000
                self._event(
                    "tool_result",
                    {
                        "id": call.id,
                        "name": call.name,
                        "content": result.content,
                        "data": result.data,
                        "elapsed_ms": round(elapsed, 2),
                    },
                )
                log.info(
                    "tool_completed",
                    tool=call.name,
                    elapsed_ms=round(elapsed, 1),
                    error=bool(result.data and "error" in result.data),
                )
                self._append("tool", result.content, tool_call_id=call.id, tool_name=call.name)
                answered.add(call.id)
                if result.action is not None and action is None:
                    action = result.action
        finally:
            # Every tool call needs an answer in the history, or the next request is invalid.
            for call in calls:
                if call.id not in answered:
                    self._append(
                        "tool",
                        "Not done: the caller spoke before this finished.",
                        tool_call_id=call.id,
                        tool_name=call.name,
                    )
        return action

    def _said(self, row: dict[str, Any] | None, text: str) -> None:
        """Add words spoken outside the model's stream (a filler) to the message they belong to."""
        if row is None:
            return
        for index in range(len(self._rows) - 1, -1, -1):
            if self._rows[index] is row:
                message = self.history[index]
                message["content"] = (message.get("content") or "") + text
                row["content"] = message["content"]
                row["spoken_text"] = (row.get("spoken_text") or "") + text
                self.deps.recorder.turn(**row)
                return

    async def _call_tool(
        self, call: ToolCall, tools: Mapping[str, Tool], customer: Mapping[str, Any] | None
    ) -> ToolResult:
        t = tools.get(call.name)
        if t is None:
            return ToolResult(
                f"Error: there is no tool named {call.name}. Available: {', '.join(tools) or 'none'}.",
                data={"error": "unknown tool"},
            )
        try:
            arguments = t.parse(call.arguments)
        except ToolError as exc:
            return ToolResult(str(exc), data={"error": "invalid arguments"})
        ctx = ToolContext(
            call_sid=self.call_sid, agent=self.agent, caller=self.caller,
            db=self.deps.db, http=self.deps.http, now=self.deps.now,
            services=self.deps.services.get(self.agent.name, {}), tool_call_id=call.id,
            customer=customer,
            extras={"parameters": dict(self.setup.custom_parameters) if self.setup else {}},
        )  # fmt: skip
        if t.side_effect:
            return await repository.once(
                self.deps.db,
                t.idempotency_key(self.call_sid, arguments),
                t.name,
                self.call_sid,
                lambda: invoke(t, ctx, arguments),
            )
        return await invoke(t, ctx, arguments)

    async def _act(self, turn: _Turn, action: SessionAction) -> None:
        if isinstance(action, SwitchLanguage):
            self._language = action.code
            self._send(
                protocol.Language(tts_language=action.code, transcription_language=action.code)
            )
        elif isinstance(action, SendDigits):
            self._send(protocol.SendDigits(digits=action.digits))
        elif isinstance(action, CollectDigits):
            self._close_talk(turn)
            self._digits, self._digit_purpose, self._digit_max = (
                [],
                action.purpose,
                action.max_digits,
            )
        elif isinstance(action, Transfer):
            # The end sequence runs on its own: a barge-in must not stop the handoff.
            data = {"reasonCode": "live-agent-handoff", "reason": action.reason, "summary": action.summary,
                    "callSid": self.call_sid, "agent": self.agent.name}  # fmt: skip
            self._spawn(self._end(turn, action.line, data, outcome="transferred"))
        elif isinstance(action, Hangup):
            self._spawn(
                self._end(
                    turn,
                    action.line,
                    {"reasonCode": "end-call", "reason": action.reason},
                    outcome="completed-by-agent",
                )
            )

    async def _end(
        self, turn: _Turn | None, line: str, data: dict[str, Any], *, outcome: str
    ) -> None:
        """Speak a last line, let it play, then send ``end`` with the handoff data."""
        if self.phase is not Phase.ACTIVE:
            return
        self.phase = Phase.ENDING
        self.outcome = outcome
        if turn is not None and turn.task is not None and not turn.task.done():
            self._cancel_turn(turn, _Cancelled.SUPERSEDED)  # e.g. a keypad transfer mid-answer
        continuing = turn is not None and turn.talking
        if line:
            self._append("assistant", line, spoken_text=line)
            self._speech_done.clear()
            self._send(protocol.Text(token=(" " if continuing else "") + line, last=True))
            if turn is not None:
                turn.talking = False
            # Wait for Twilio's agentSpeaking "off" (speaker events), or as long as it takes to say.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._speech_done.wait(), self.deps.speech_seconds(line))
        self.handoff_data = orjson.dumps(data).decode()
        self._send(protocol.End(handoff_data=self.handoff_data))
        self._end_sent = True
        self.deps.recorder.update_call(
            self.call_sid, outcome=outcome, handoff_data=self.handoff_data
        )
        log.info("session_ending", outcome=outcome, reason=data.get("reason"))

    def _close_talk(self, turn: _Turn) -> None:
        self._send(protocol.Text(token="", last=True))
        turn.talking = False

    def _apologise(self, turn: _Turn, rows: list[dict[str, Any]], error: str) -> None:
        log.warning("turn_failed_apologised", error=error[:300])
        line = self.agent.apology_line
        spoken = (" " if turn.talking else "") + line
        self._send(protocol.Text(token=spoken, last=True))
        turn.talking = False
        if (
            rows
            and self.history
            and self.history[-1] is not None
            and self.history[-1].get("role") == "assistant"
            and not self.history[-1].get("tool_calls")
        ):
            message, row = self.history[-1], rows[-1]
            message["content"] += spoken
            row.update(content=message["content"], spoken_text=message["content"], error=error)
        else:
            row = self._append("assistant", line, spoken_text=line, error=error)
            rows.append(row)
        self.deps.recorder.turn(**row)
        self._event("llm_error", {"error": error})

    def _summarise_turn(
        self,
        turn: _Turn,
        rows: list[dict[str, Any]],
        timings: dict[str, float],
        retrieved: Retrieved | None,
    ) -> None:
        received = timings["prompt_received_at"]
        turn.summarised = True

        def ms(key: str) -> float | None:
            return round((timings[key] - received) * 1000, 3) if key in timings else None

        for row in rows:
            row.update({k: v for k, v in timings.items() if k != "prompt_received_at"})
            row["first_token_ms"], row["first_frame_ms"] = (
                ms("first_token_at"),
                ms("first_frame_at"),
            )
            if retrieved is not None:
                row["retrieval"] = retrieved.provenance
            self.deps.recorder.turn(**row)
        log.info(
            "turn_completed", seq=turn.seq, outcome=turn.cancelled.value if turn.cancelled else "answered",
            retrieval_ms=ms("retrieval_done_at"), llm_request_ms=ms("llm_request_at"),
            first_token_ms=ms("first_token_at"), first_frame_ms=ms("first_frame_at"), last_token_ms=ms("last_token_at"),
        )  # fmt: skip

    # == interruptions =====================================================================

    def _on_interrupt(self, frame: protocol.Interrupt) -> None:
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            self._cancel_turn(turn, _Cancelled.INTERRUPTED)
        elif turn is not None and turn.talking:
            self._close_talk(turn)
        heard = frame.utterance_until_interrupt
        self._apply_heard(heard)
        log.info(
            "caller_interrupted", heard_chars=len(heard), after_ms=frame.duration_until_interrupt_ms
        )

    def _apply_heard(self, heard: str) -> None:
        """Cut the assistant's last talk cycle down to what the caller heard."""
        spoken: list[int] = []
        for index in range(len(self.history) - 1, -1, -1):
            role = self.history[index]["role"]
            if role == "user":
                break
            if role == "assistant" and self._rows[index].get("spoken_text"):
                spoken.append(index)
        spoken.reverse()
        remaining = heard
        for position, index in enumerate(spoken):
            message, row = self.history[index], self._rows[index]
            said = row["spoken_text"]
            if position == len(spoken) - 1:
                kept, remaining = remaining, ""
            else:
                take = min(len(said), len(remaining))
                kept, remaining = remaining[:take], remaining[take:]
            message["content"] = kept
            row.update(content=kept, heard_text=kept, interrupted=True)
            self.deps.recorder.turn(**row)

    # == keypad ============================================================================

    def _on_dtmf(self, digit: str, now: float) -> None:
        if self._digits is not None:
            if digit == "#":
                self._finish_digits(reason="#")
                return
            self._digits.append(digit)
            if len(self._digits) >= self._digit_max:
                self._finish_digits(reason="max")
                return
            if self._digit_timer is not None:
                self._digit_timer.cancel()
            self._digit_timer = asyncio.get_running_loop().call_later(
                self.deps.digit_pause, self._finish_digits, "pause"
            )
            return
        option = self.agent.keypad.get(digit)
        if option is None:
            log.info("dtmf_unmapped", digit=digit)
            return
        if option.action == "transfer":
            if self.agent.person_number:
                self._spawn(
                    self._end(
                        self._turn,
                        self.agent.transfer_line,
                        {
                            "reasonCode": "live-agent-handoff",
                            "reason": f"caller pressed {digit}",
                            "summary": "The caller pressed the keypad to reach a person.",
                            "callSid": self.call_sid,
                            "agent": self.agent.name,
                        },
                        outcome="transferred",
                    )
                )
            else:
                self._start_turn(
                    f"(The caller pressed {digit} to reach a person, but nobody is available.)",
                    lang=None,
                    received=now,
                )
        elif option.action == "say":
            self._say(option.text)
        elif option.action == "prompt":
            self._start_turn(option.text, lang=None, received=now)
        elif option.action == "end":
            self._spawn(
                self._end(
                    self._turn,
                    self.agent.goodbye_line,
                    {"reasonCode": "end-call", "reason": f"caller pressed {digit}"},
                    outcome="completed-by-caller",
                )
            )

    def _finish_digits(self, reason: str) -> None:
        if self._digit_timer is not None:
            self._digit_timer.cancel()
            self._digit_timer = None
        digits, self._digits = "".join(self._digits or []), None
        if reason == "speech":
            return
        log.info("digits_collected", count=len(digits), ended_by=reason)
        self._start_turn(
            f"(Typed on the keypad for {self._digit_purpose}: {digits or 'nothing'})",
            lang=None,
            received=time.perf_counter(),
        )

    def _say(self, text: str) -> None:
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            self._cancel_turn(turn, _Cancelled.SUPERSEDED)
        row = self._append("assistant", text, spoken_text=text)
        self.deps.recorder.turn(**row)
        self._send(protocol.Text(token=text, last=True))

    # == info ==============================================================================

    def _on_info(self, frame: protocol.Info) -> None:
        if frame.name == "agentSpeaking":
            self._agent_speaking = frame.value == "on"
            if not self._agent_speaking:
                self._speech_done.set()

    # == history, recording, sending ========================================================

    def _append(self, role: str, content: str, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": role, "content": content}
        if "tool_call_id" in fields:
            message["tool_call_id"] = fields["tool_call_id"]
        row = {
            "call_sid": self.call_sid, "session_id": self.session_id, "seq": self._next_seq,
            "role": role, "content": content, "created_at": self.deps.now(), **fields,
        }  # fmt: skip
        self._next_seq += 1
        self.history.append(message)
        self._rows.append(row)
        self.deps.recorder.turn(**row)
        return row

    def _event(self, kind: str, data: dict[str, Any], t: float | None = None) -> None:
        t = time.perf_counter() if t is None else t
        if self.phase is Phase.WAITING_FOR_SETUP:
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

    def _send(
        self, frame: protocol.OutboundFrame, *, on_sent: Callable[[float], None] | None = None
    ) -> None:
        if self._end_sent or self.phase is Phase.CLOSED:
            log.warning("send_after_end_dropped", type=frame.type)
            return
        self._out.put_nowait((frame.to_json(), on_sent))

    async def _write_loop(self) -> None:
        """The one writer: frames go out in the order they were queued."""
        while True:
            item = await self._out.get()
            if item is None:
                return
            text, on_sent = item
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

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # == close ============================================================================

    async def _close(self) -> None:
        """The socket closed: cancel everything, record the end, flush the recording."""
        was = self.phase
        self.phase = Phase.CLOSED
        if self._digit_timer is not None:
            self._digit_timer.cancel()
        turn = self._turn
        pending: list[asyncio.Task[Any]] = [*self._side_tasks]
        if turn is not None and turn.task is not None and not turn.task.done():
            turn.cancelled = _Cancelled.CLOSED
            turn.task.cancel()
            pending.append(turn.task)
        if self._customer_task is not None and not self._customer_task.done():
            self._customer_task.cancel()
            pending.append(self._customer_task)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._out.put_nowait(None)
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
            log.warning("session_closed_without_setup", frames=self.frames_in)
            await self.deps.recorder.flush()
            return
        now = self.deps.now()
        self._event("session_end", {"close_code": self.close_code, "outcome": self.outcome})
        self.deps.recorder.update_session(
            self.session_id,
            ended_at=now,
            close_code=self.close_code,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
        )
        status = "ended" if self._end_sent else "completed"
        self.deps.recorder.update_call(
            self.call_sid,
            status=status,
            ended_at=now,
            outcome=self.outcome or "hung-up",
            turns=self._next_seq,
        )
        await self.deps.recorder.flush()
        log.info(
            "call_session_closed", agent=self.agent.name, outcome=self.outcome or "hung-up",
            frames_in=self.frames_in, frames_out=self.frames_out, invalid_frames=self.invalid_frames,
            turns=self._next_seq, seconds=round(time.perf_counter() - self._started, 1),
        )  # fmt: skip
        structlog.contextvars.unbind_contextvars("call_sid")


def _filler(agent: AgentProfile, seq: int) -> str:
    lines = agent.filler_lines or ["One moment."]
    return lines[seq % len(lines)]


def _local_time(now: datetime, zone: str) -> str:
    # The profile's zone was checked when it was loaded; ZoneInfo caches instances.
    return now.astimezone(ZoneInfo(zone)).strftime("%A %d %B %Y, %I:%M %p %Z")
