"""One turn: from the caller's final prompt to the end of the agent's answer.

A turn runs as its own task: retrieval, then rounds of model streaming and tool calls, each
token sent to the caller as it arrives. An interrupt, a newer prompt or a closed socket cancels
it. The caller is never left in silence: a filler line when no token has come for a while (and
another every :data:`FILLER_AGAIN_SECONDS` while none comes), a budget after which a stalled model gets the apology (or, after two failures in a row, the offer
of a person, see :mod:`relay.call.escalation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import structlog

from relay import metrics
from relay.agents import AgentProfile
from relay.call.guards import Opening, Promises, booking_tool, price_tool
from relay.call.ports import CallDependencies, NotReady, Retrieved, Retriever
from relay.call.speech import Speech
from relay.call.transcript import Message, ToolCallItem, Transcript, call_id
from relay.call.trouble import failure_kind
from relay.errors import LLMError, ToolError
from relay.llm.types import ChatRequest, Done, TextDelta, Timeouts, ToolCall
from relay.protocol import frames as protocol
from relay.tools import (
    CollectDigits,
    Hangup,
    Tool,
    ToolContext,
    ToolResult,
    Transfer,
    invoke,
    ledger,
)
from relay.tools.base import SessionAction

log = structlog.get_logger("relay.call.turn")

_T = TypeVar("_T")


class Cancelled(enum.Enum):
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"
    CLOSED = "closed"


_CANCEL_FLAGS = {Cancelled.INTERRUPTED: "interrupted", Cancelled.SUPERSEDED: "superseded"}


class TurnBudgetExceeded(LLMError):
    """The model sent nothing (or stopped sending) within the turn's budget."""

    def __init__(self, seconds: float, *, started: bool) -> None:
        what = "stalled for" if started else "sent no token within"
        super().__init__(f"the model {what} {seconds:.1f}s (turn budget)", kind="turn-budget")


#: While the model sends no token, a filler line is said again this long after the previous one
#: (or after a guard's bridge line): a slow model's caller never waits in silence for long.
FILLER_AGAIN_SECONDS = 8.0

#: Finish reasons that say the server cut the reply off: the failure kind, and the error.
_CUT_OFF: Final = {
    "length": ("truncated", "the model's reply was cut off at its token limit (length)"),
    "content_filter": (
        "filtered",
        "the model's reply was stopped by a content filter (content_filter)",
    ),
}


class TurnHost(Protocol):
    """What a turn needs from its call (:class:`relay.call.session.CallSession`)."""

    deps: CallDependencies
    transcript: Transcript
    promises: Promises

    @property
    def agent(self) -> AgentProfile: ...
    @property
    def call_sid(self) -> str: ...
    @property
    def caller(self) -> str: ...
    @property
    def tools(self) -> Mapping[str, Tool]: ...
    @property
    def parameters(self) -> dict[str, str]: ...

    def send(
        self,
        frame: protocol.OutboundFrame,
        *,
        on_sent: Callable[[float], None] | None = None,
        now: bool = False,
    ) -> None: ...
    async def write_now(self) -> None: ...
    def event(self, kind: str, data: dict[str, Any], t: float | None = None) -> None: ...
    def request(self, tools: Mapping[str, Tool], retrieved: Retrieved | None,
                customer: Mapping[str, Any] | None, deadline: float,
                leave_out: Message | None) -> ChatRequest: ...  # fmt: skip
    def record_request(self, request: ChatRequest, sent_at: float) -> None: ...
    async def customer(self) -> Mapping[str, Any] | None: ...
    @property
    def customer_ready(self) -> bool: ...
    def customer_now(self) -> Mapping[str, Any] | None: ...
    async def act(self, turn: Turn, action: SessionAction) -> None: ...
    def turn_failed(self, turn: Turn, kind: str, error: str) -> str: ...
    def turn_succeeded(self, turn: Turn) -> None: ...


class Turn:
    """The turn task and what it has said so far."""

    def __init__(self, host: TurnHost, seq: int, received: float) -> None:
        self.host = host
        self.seq = seq  # the user message's seq
        self.task: asyncio.Task[None] | None = None
        self.talking = False  # a talk cycle is open (text sent without last:true)
        self.summarised = False  # the turn's rows and summary line have been written
        self.cancelled: Cancelled | None = None
        self.messages: list[Message] = []  # the assistant messages of this turn
        self.timings: dict[str, float] = {"prompt_received_at": received}
        self.retrieved: Retrieved | None = None
        self._reply: Message | None = None  # the assistant message of the current round
        self._heard = False  # the model's words or a tool filler went out (not just a wait filler)
        self._waited = False  # a filler line was said while waiting for the model
        self._fillers = 0  # filler lines said in this turn (each repeat picks the next line)
        self._answers: list[Message] = []  # the tool messages of the current round's calls
        self._filler: asyncio.TimerHandle | None = None  # the wait filler, while armed
        self._speech: Speech | None = None  # the speech filter of the current round
        self._said_tail = ""  # the end of the last words sent (a new round may need a space)
        self._round_fresh = False  # nothing of the current round has been sent yet
        self._reasked = False  # a guard has asked the model again in this turn (once at most)
        self._guard_note: str | None = None  # for the re-ask: why, added to the request's end

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, previous: Turn | None) -> None:
        self.task = asyncio.create_task(self._run(previous), name=f"relay-turn-{self.seq}")
        self.task.add_done_callback(self._ended)

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        # A cancelled task keeps its CancelledError, whose traceback holds the turn's frames,
        # which hold the turn (and so the call) and through it the task again (`self.task`;
        # the LLM client's read limit keeps it too): a cycle only a full garbage collection
        # would free. Reading the result hands the error over (asyncio gives it to one
        # reader), and it is dropped here.
        if task.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                task.result()

    def cancel(self, why: Cancelled) -> None:
        self.cancelled = why
        if self.task is not None:
            self.task.cancel()
        if self.talking:
            self.close_talk()  # close the talk cycle the cancelled turn left open

    def close_talk(self) -> None:
        self.host.send(protocol.Text(token="", last=True))
        self.talking = False

    # -- the turn ----------------------------------------------------------------------------

    async def _run(self, previous: Turn | None) -> None:
        host = self.host
        if previous is not None and previous.running:
            # Let the superseded turn finish its bookkeeping first (it is already cancelled).
            # asyncio.wait, not await: this turn's own cancellation must not be swallowed (nor
            # forwarded to the previous task), and the previous turn's outcome is not ours.
            assert previous.task is not None
            await asyncio.wait({previous.task})
        received = self.timings["prompt_received_at"]
        # From the prompt on: the caller hears a filler line if nothing else comes in time.
        self._arm_filler(received)
        try:
            # A caller lookup or retrieval still running when the turn's budget is spent is
            # given up: the turn goes on without it (ungrounded) rather than in silence.
            ready_by = received + _limits(host)[0]
            # The caller lookup is usually long done: its result is then taken as it is.
            customer = (
                host.customer_now()
                if host.customer_ready
                else await _by(ready_by, host.customer(), None, "caller_lookup")
            )
            retriever = host.deps.retriever
            if retriever is not None and host.agent.knowledge_collection:
                self.retrieved = await self._retrieve(retriever, previous, ready_by)
                self.timings["retrieval_done_at"] = time.perf_counter()
                if self.retrieved is not None:
                    host.event(
                        "retrieval",
                        {
                            "provenance": self.retrieved.provenance,
                            "elapsed_ms": self.retrieved.elapsed_ms,
                            "error": self.retrieved.error,
                        }
                        | ({"reused": True} if self.retrieved.reused else {}),
                    )
            tools = host.tools
            rounds = host.deps.max_tool_rounds
            choice: str | dict[str, Any] | None = None
            round_ = 0
            while round_ < rounds:
                round_ += 1
                # The last round may not call tools; the schemas are still sent, unchanged, so
                # the request's prefix stays what a prompt cache has seen.
                if round_ == rounds and choice is None:
                    choice = "none"
                started = self.timings["prompt_received_at"] if round_ == 1 else None
                done, stop = await self._llm_round(customer, tools, started, choice)
                choice = None
                if stop in ("price", "booking", "message", "echo"):
                    again, choice = self._guard_tripped(stop)
                    if not again:
                        break
                    rounds += 1  # the re-ask is a round of its own
                    continue
                if not done.tool_calls:
                    break
                action = await self._run_tools(done.tool_calls, tools, customer)
                if action is not None:
                    await host.act(self, action)
                    if isinstance(action, (Transfer, Hangup, CollectDigits)):
                        host.turn_succeeded(self)
                        return
            if not self._heard:
                # The model answered with nothing to say: never leave the caller in silence.
                self._fail("empty-reply", "the model's reply was empty")
                return
            host.turn_succeeded(self)
            self.close_talk()
        except asyncio.CancelledError:
            flag = _CANCEL_FLAGS.get(self.cancelled) if self.cancelled else None
            for message in self.messages:
                if flag:
                    message.row[flag] = True
                host.deps.recorder.turn(**message.row)
            raise
        except LLMError as exc:
            metrics.model_failed(exc)
            self._fail(failure_kind(exc), str(exc))
        except Exception as exc:  # a bug must not leave the caller in silence
            log.exception("turn_failed")
            self._fail("internal-error", f"internal error: {exc!r}")
        finally:
            self._disarm_filler()
            self._summarise()

    async def _retrieve(
        self, retriever: Retriever, previous: Turn | None, ready_by: float
    ) -> Retrieved | None:
        """The turn's reference material. A KnowledgeRetriever may keep the previous turn's
        material for a turn that asks nothing new ("yes please"), and answers at once when the
        words' vector is cached (``retrieve_now``); what must wait (an embedding), and other
        retrievers (the replay's cassette), are awaited within the turn's budget."""
        transcript, agent = self.host.transcript, self.host.agent
        query = transcript.recent_user_text()
        latest = transcript.recent_user_text(messages=1)
        earlier = previous.retrieved if previous is not None else None
        retrieve_now: Callable[..., Retrieved | NotReady | None] | None = getattr(
            retriever, "retrieve_now", None
        )
        if retrieve_now is not None:
            found = retrieve_now(agent, query, latest=latest, previous=earlier)
            if not isinstance(found, NotReady):
                return found
        retrieve_turn = getattr(retriever, "retrieve_turn", None)
        work = (
            retriever.retrieve(agent, query)
            if retrieve_turn is None
            else retrieve_turn(agent, query, latest=latest, previous=earlier)
        )
        timed_out = Retrieved("", [], 0.0, error="retrieval timed out")
        return await _by(ready_by, work, timed_out, "retrieval")

    # -- one model round -----------------------------------------------------------------------

    async def _llm_round(
        self,
        customer: Mapping[str, Any] | None,
        tools: Mapping[str, Tool],
        started: float | None,
        choice: str | dict[str, Any] | None = None,
    ) -> tuple[Done, str | None]:
        """One request and its streamed reply, every word through the speech filter; returns
        the end of the stream and why it was stopped early (None, "limit", "price",
        "booking", "echo", or "call": a tool call written as text, made as soon as its JSON
        closed). A reply the server cut off (``finish_reason`` ``length`` or
        ``content_filter``) raises :class:`LLMError` (``truncated``, ``filtered``) once its words
        are out. The filter's own word limit ends a reply at a sentence end and closes the
        stream first, so a reply it ended is never cut off; nor is a complete call written as
        text that the model padded up to its token limit."""
        host, agent = self.host, self.host.agent
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        budget, stall = _limits(host)
        # The first round's budget runs from the prompt (but the model gets at least half of
        # it, however long the caller lookup and retrieval took); a later round's from its
        # request.
        budget_ends = max((started if started is not None else now) + budget, now + budget / 2)
        if started is None:
            self._reply = None  # a later round: its words start a new message
        # A filler said while the turn was getting ready is the caller's, not the model's: the
        # reply continues it, but the request does not show it to the model.
        request = host.request(tools, self.retrieved, customer, budget_ends, self._reply)
        request = _adjusted(request, choice, self._guard_note)
        self._guard_note = None
        self.timings.setdefault("llm_request_at", now)
        # Recorded in the loop's next pass, once the request is on its way: diffing it against
        # the previous request is not the caller's wait (the event keeps its own time).
        loop.call_soon(host.record_request, request, now)
        pieces: list[str] = []
        done: Done | None = None
        stop: str | None = None
        # What the caller hears (and the history keeps) is the model's words made speech, with
        # the length, price and booking guards (relay.call.speech).
        self._round_fresh = True
        speech = self._speech = host.promises.speech(
            agent, self.retrieved.message if self.retrieved is not None else ""
        )
        if started is None:
            self._arm_filler(now)  # a later round: its own wait (armed only if nothing was said)
        opening = Opening()  # the reply's first characters: speech, notes read back, or a call
        stream = host.deps.llm.stream(request)
        watch: _StallWatch | None = None
        cut_off: tuple[str, str] | None = None
        written: tuple[str, str] | None = None  # a tool call the model wrote as text
        made: ToolCall | None = None  # ... and the call made of it
        try:
            async with asyncio.timeout_at(loop.time() + budget_ends - now) as scope:
                watch = _StallWatch(loop, scope, stall)
                async for event in stream:
                    if isinstance(event, TextDelta):
                        self._disarm_filler()
                        if not pieces:
                            self.timings.setdefault("first_token_at", time.perf_counter())
                        pieces.append(event.text)
                        watch.token(loop.time())
                        text = event.text
                        if opening.kind is None:
                            kind = opening.feed(text)
                            if kind == "echo":
                                stop = "echo"
                                break
                            if kind is None:
                                continue
                            if kind == "say":
                                text = opening.raw  # what was held while it was unclear
                        elif opening.kind == "call":
                            opening.raw += text
                        if opening.kind == "call":
                            # A call written as text is made as soon as its JSON closes: a small
                            # model pads it with newlines up to its token limit, for minutes.
                            if "}" in text:
                                written = opening.tool_call(tools)
                                if written is not None:
                                    stop = "call"
                                    break  # stop consuming: the stream is closed below
                            continue
                        emit = speech.feed(text)
                        if self._stream_text(emit.text, now=True):
                            await host.write_now()  # the words out in this pass of the loop
                        if emit.stop:
                            stop = emit.stop
                            break  # stop consuming: the stream is closed below
                    else:
                        done = event
                if stop is None and opening.kind == "call" and done and not done.tool_calls:
                    written = opening.tool_call(tools)  # the stream ended on a call as text
                if written is not None:
                    # A tool call the server left as text: made the call it was meant as (a
                    # token limit reached after it, padding, cut nothing of it).
                    name, arguments = written
                    made = ToolCall(f"call_text_{self.seq}_{len(self.messages)}", name, arguments)
                    if done is not None:
                        done = dataclasses.replace(done, tool_calls=(made,))
                elif done is not None and stop is None:
                    cut_off = _CUT_OFF.get(done.finish_reason)
                # After a cut-off reply the word held back is not said either: it may be cut.
                if stop is None and cut_off is None and written is None and opening.kind != "call":
                    if opening.kind is None and opening.raw:
                        self._stream_text(speech.feed(opening.raw).text)  # a short reply
                    emit = speech.close()  # the stream ended: the word held back, if it may be
                    self._stream_text(emit.text)
                    stop = emit.stop
        except TimeoutError as exc:
            seconds = stall if pieces else budget_ends - now
            raise TurnBudgetExceeded(seconds, started=bool(pieces)) from exc
        finally:
            if watch is not None:
                watch.close()
            aclose = getattr(stream, "aclose", None)
            if stop is not None and aclose is not None:
                await aclose()  # the filter stopped the reply: close the stream now
            # The wait filler stays armed through the tools and the next round: the caller
            # hears something within llm_filler_after of the prompt, whatever is slow, and
            # again every FILLER_AGAIN_SECONDS until a token comes.
            self.timings["last_token_at"] = time.perf_counter()
            recorded_calls = done.tool_calls if done else (made,) if made else ()
            host.event(
                "llm_response",
                {"pieces": pieces, "tool_calls": [dataclasses.asdict(tc) for tc in recorded_calls],
                 "finish_reason": done.finish_reason if done else None, "attempts": done.attempts if done else None,
                 "complete": done is not None, "model": request.model,
                 "usage": done.usage.as_dict() if done and done.usage else None}
                | ({"stop": stop, "heard": speech.text} if stop else {}),
            )  # fmt: skip
        if stop is not None and done is None:
            # The filter stopped the reply, or its call was complete: its end is ours.
            done = Done(finish_reason=stop, tool_calls=(made,) if made else ())
        elif (
            stop in ("price", "booking", "message", "echo") and done is not None and done.tool_calls
        ):
            done = dataclasses.replace(done, tool_calls=())  # the re-ask decides what to call
        if done is None:
            raise LLMError("the model's stream ended without finishing", kind="stream-broken")
        metrics.model_replied(
            agent.name, request.model, done.usage.as_dict() if done.usage else None
        )
        if cut_off is not None:
            # The server cut the reply off (its token limit, relay's max_tokens included, or a
            # content filter): the turn failed, and the apology follows the words already said.
            raise LLMError(cut_off[1], kind=cut_off[0])
        if done.tool_calls:
            calls = [ToolCallItem(tc.id, tc.name, tc.arguments) for tc in done.tool_calls]
            into, self._answers = host.transcript.add_tool_calls(self._reply, calls)
            if into is not self._reply:
                self.messages.append(into)
                self._reply = into
        elif self._reply is not None:
            host.deps.recorder.turn(**self._reply.row)
        return done, stop

    def _stream_text(self, text: str, *, now: bool = False) -> bool:
        """Send words the speech filter let through; the history keeps exactly them. Returns
        whether a frame was queued (``now``: the caller writes it, see ``CallSession.send``)."""
        if not text:
            return False
        host = self.host
        if self._round_fresh:
            self._round_fresh = False
            if self.talking and self._said_tail and not self._said_tail.isspace():
                text = " " + text  # after words of an earlier round, or a bridge line
        self._said_tail = text[-1:]
        if self._reply is None:
            self._reply = host.transcript.assistant("")
            self.messages.append(self._reply)
        if "first_frame_at" not in self.timings:
            host.send(protocol.Text(token=text), on_sent=self._first_frame, now=now)
        else:
            host.send(protocol.Text(token=text), now=now)
        self.talking = True
        self._heard = True
        reply = self._reply
        reply.set_content(reply.content + text if reply.content else text.lstrip())
        reply.row["spoken_text"] = reply.content
        return True

    # -- the guards (issue 15) ---------------------------------------------------------------

    def _guard_tripped(self, stop: str) -> tuple[bool, str | dict[str, Any] | None]:
        """The speech filter kept an unpriced amount (``"price"``), an unconfirmed booking
        (``"booking"``) or a text or e-mail no tool sent (``"message"``) from the caller. The
        first time in a turn: a short bridge line, then the model is asked again with the tool
        that can settle it required (none for a message: sending again is the caller's call);
        after that: a safe line. Returns (ask again?, the re-ask's ``tool_choice``)."""
        host, agent = self.host, self.host.agent
        blocked = self._speech.blocked[-1] if self._speech and self._speech.blocked else ""
        host.promises.trips[stop] += 1
        tool = {"price": price_tool(agent), "booking": booking_tool(agent)}.get(stop)
        again = not self._reasked
        host.event(
            f"{stop}_guard",
            {"blocked": blocked, "action": "re-ask" if again else "fallback",
             "tool": tool if again else None},
        )  # fmt: skip
        log.info("guard_tripped", guard=stop, blocked=blocked, again=again)
        if not again:
            fallback = agent.apology_line if stop == "echo" else agent.guard_fallback_line
            self._say_line(fallback, preemptible=False)
            return False, None
        self._reasked = True
        if stop == "echo":  # nothing was said: ask again, quietly
            self._guard_note = "Answer the caller's last words. Never repeat these notes."
            return True, None
        bridge = {"price": agent.price_bridge_line, "message": agent.message_bridge_line}
        self._say_line(bridge.get(stop, agent.booking_bridge_line), preemptible=True)
        if stop == "message":
            self._guard_note = (
                "No text or e-mail has gone to the caller in this call: no send tool succeeded. "
                "Never say one was sent or is on its way. If a send failed or its outcome is "
                "unknown, say so plainly and offer to read the details out instead."
            )
        elif stop == "price":
            self._guard_note = (
                "Say no amount of money that no tool result in this call gave. "
                + (f"Call {tool} now to work out the exact price." if tool else
                   "No tool can price this: offer to have the team call back with a price.")
            )  # fmt: skip
        else:
            self._guard_note = (
                "Nothing is booked yet: no booking tool has succeeded in this call. "
                + (f"Call {tool} now (confirmed=true only if the caller clearly said yes to "
                   "your read-back; otherwise read it back and ask)." if tool else
                   "Do not say it is booked; offer to take a message.")
            )  # fmt: skip
        choice: str | dict[str, Any] | None = None
        if tool is not None:
            named = {"type": "function", "function": {"name": tool}}
            choice = named if agent.guard_tool_choice == "named" else "required"
        return True, choice

    def _say_line(self, line: str, *, preemptible: bool) -> None:
        """Say a line of relay's own within the turn; the history keeps it with the reply."""
        host = self.host
        text = (" " if self.talking else "") + line
        host.send(protocol.Text(token=text, preemptible=preemptible))
        self._said_tail = text[-1:]
        self.talking = True
        self._heard = True
        last = host.transcript.last
        if self._reply is not None and last is self._reply and not last.tool_calls:
            host.transcript.say(self._reply, text)
        else:
            self._reply = host.transcript.assistant(line)
            self.messages.append(self._reply)

    def _arm_filler(self, since: float) -> None:
        """Arm the wait filler: ``llm_filler_after`` from ``since`` when nothing was said in
        the turn yet; when something was (a bridge line, words before a tool call), the next
        line comes after :data:`FILLER_AGAIN_SECONDS` without a token."""
        after = self.host.agent.llm_filler_after
        if after <= 0 or self._filler is not None:
            return
        if self._heard or self.talking:
            self._filler_again(since)
            return
        delay = max(0.0, since + after - time.perf_counter())
        self._filler = asyncio.get_running_loop().call_later(delay, self._wait_filler)

    def _filler_again(self, since: float) -> None:
        delay = max(0.0, since + FILLER_AGAIN_SECONDS - time.perf_counter())
        self._filler = asyncio.get_running_loop().call_later(delay, self._wait_filler, True)

    def _disarm_filler(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            self._filler = None

    def _wait_filler(self, again: bool = False) -> None:
        """No token yet: say a short filler line, preemptible so the answer cuts it off; and
        while none comes, another every :data:`FILLER_AGAIN_SECONDS` (``again``)."""
        self._filler = None
        if self.cancelled is not None or not self.running:
            return
        if not again and (self._heard or self.talking):
            return
        line = _filler(self.host.agent, self.seq + self._fillers) + " "
        # After a line that did not end in a space (a guard's bridge line): one between.
        said = (" " if self.talking and not self._said_tail.isspace() else "") + line
        self.host.send(protocol.Text(token=said, preemptible=True))
        self._said_tail = said[-1:]
        self._fillers += 1
        self.talking = True
        self._waited = True
        last = self.host.transcript.last
        if self._reply is not None and (last is self._reply or self._reply.tool_calls):
            # Tools are running (the line goes with their calls), or the line continues what
            # was said.
            self.host.transcript.say(self._reply, said if self._reply.content else line)
        else:
            self._reply = self.host.transcript.assistant(line)
            self.messages.append(self._reply)
        self.host.event("filler", {"reason": "waiting-for-model", "line": line})
        self._filler_again(time.perf_counter())

    def _first_frame(self, at: float) -> None:
        if "first_frame_at" in self.timings:
            return
        self.timings["first_frame_at"] = at
        metrics.observe_first_frame(self.host.agent.name, at - self.timings["prompt_received_at"])
        if self.summarised:
            # The writer sent the frame after the turn had finished (a reply that arrived in
            # one read): complete the stored timings now.
            first_frame_ms = round((at - self.timings["prompt_received_at"]) * 1000, 3)
            for message in self.messages:
                message.row.update(first_frame_at=at, first_frame_ms=first_frame_ms)
                self.host.deps.recorder.turn(**message.row)

    # -- tools -------------------------------------------------------------------------------

    async def _run_tools(
        self,
        calls: Sequence[ToolCall],
        tools: Mapping[str, Tool],
        customer: Mapping[str, Any] | None,
    ) -> SessionAction | None:
        host = self.host
        # Placeholders were added with the calls: every call has its answer from the start.
        answers = self._answers
        action: SessionAction | None = None
        filler_sent = self._waited  # one filler line per wait is enough
        for call, answer in zip(calls, answers, strict=True):
            assert answer.tool_call_id == call_id(call.id)
            started = time.perf_counter()
            host.event("tool_call", {"id": call.id, "name": call.name, "arguments": call.arguments})
            task = asyncio.create_task(
                self.call_tool(call, tools, customer), name=f"relay-tool-{call.name}"
            )
            try:
                if not filler_sent:
                    finished, _ = await asyncio.wait({task}, timeout=host.deps.filler_after)
                    if not finished:
                        filler_sent = True
                        self._tool_filler()
                result = await task
            except asyncio.CancelledError:
                task.cancel()
                raise
            elapsed = (time.perf_counter() - started) * 1000
            metrics.observe_tool(call.name, elapsed / 1000)
            host.event(
                "tool_result",
                {"id": call.id, "name": call.name, "content": result.content,
                 "data": result.data, "elapsed_ms": round(elapsed, 2)},
            )  # fmt: skip
            log.info(
                "tool_completed",
                tool=call.name,
                elapsed_ms=round(elapsed, 1),
                error=bool(result.data and "error" in result.data),
            )
            host.transcript.answer(answer, result.content)
            host.promises.saw_result(result.content, result.data, call.name)
            if result.action is not None and action is None:
                action = result.action
        return action

    def _tool_filler(self) -> None:
        if self._waited:
            return  # a filler line was already said while waiting
        line = _filler(self.host.agent, self.seq + self._fillers) + " "
        self.host.send(protocol.Text(token=line, preemptible=True))
        self._fillers += 1
        self.talking = True
        self._heard = True
        if self._reply is not None:
            # Words the caller heard belong in the history, with the calls they came with.
            self.host.transcript.say(self._reply, line)

    async def call_tool(
        self, call: ToolCall, tools: Mapping[str, Tool], customer: Mapping[str, Any] | None
    ) -> ToolResult:
        return await call_tool(self.host, call, tools, customer)

    # -- failure and summary -----------------------------------------------------------------

    def _fail(self, kind: str, error: str) -> None:
        """Say the apology (or the offer of a person) instead of an answer."""
        host = self.host
        line = host.turn_failed(self, kind, error)
        metrics.apologised(host.agent.name)
        spoken = (" " if self.talking else "") + line
        host.send(protocol.Text(token=spoken, last=True))
        self.talking = False
        last = host.transcript.last
        if self.messages and last is self.messages[-1] and not last.tool_calls:
            last.set_content(last.content + spoken)
            last.row.update(spoken_text=last.content, error=error)
            host.deps.recorder.turn(**last.row)
        else:
            self.messages.append(host.transcript.assistant(line, error=error))
        host.event("llm_error", {"error": error})

    def _summarise(self) -> None:
        timings = self.timings
        received = timings["prompt_received_at"]
        self.summarised = True

        def ms(key: str) -> float | None:
            return round((timings[key] - received) * 1000, 3) if key in timings else None

        for message in self.messages:
            row = message.row
            row.update({k: v for k, v in timings.items() if k != "prompt_received_at"})
            row["first_token_ms"], row["first_frame_ms"] = (
                ms("first_token_at"),
                ms("first_frame_at"),
            )
            if self.retrieved is not None:
                row["retrieval"] = self.retrieved.provenance
            self.host.deps.recorder.turn(**row)
        cancelled = self.cancelled.value if self.cancelled else None
        metrics.turn_completed(self.host.agent.name, cancelled, timings)
        log.info(
            "turn_completed", seq=self.seq, outcome=self.cancelled.value if self.cancelled else "answered",
            retrieval_ms=ms("retrieval_done_at"), llm_request_ms=ms("llm_request_at"),
            first_token_ms=ms("first_token_at"), first_frame_ms=ms("first_frame_at"), last_token_ms=ms("last_token_at"),
        )  # fmt: skip


async def call_tool(
    host: TurnHost, call: ToolCall, tools: Mapping[str, Tool], customer: Mapping[str, Any] | None
) -> ToolResult:
    """Run one tool call for the call ``host`` (side effects at most once, via the ledger); a
    tool's failure comes back as an error result for the model, never as an exception."""
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
    deps = host.deps
    ctx = ToolContext(
        call_sid=host.call_sid, agent=host.agent, caller=host.caller,
        db=deps.db, http=deps.http, now=deps.now,
        services=deps.services.get(host.agent.name, {}), tool_call_id=call.id,
        customer=customer, extras={"parameters": dict(host.parameters)},
    )  # fmt: skip
    if t.side_effect:
        return await ledger.once(
            deps.db,
            t.idempotency_key(host.call_sid, arguments),
            t.name,
            host.call_sid,
            lambda: invoke(t, ctx, arguments),
        )
    return await invoke(t, ctx, arguments)


async def _by(deadline: float, work: Awaitable[_T], fallback: _T, what: str) -> _T:
    """``work``'s result, or ``fallback`` when it is not done by ``deadline`` (perf_counter)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            return await work
    except TimeoutError:
        log.warning("turn_preparation_timed_out", what=what)
        return fallback


class _StallWatch:
    """The stall limit of one model round: the stream fails when no token came for ``stall``
    seconds.

    Its first token takes the round's budget off ``scope`` and starts one timer. A later token
    only stores its time, where moving the scope's deadline would cancel a timer and push
    another on the loop's heap for nearly every paced read. The timer, when it fires, re-arms
    at the last token's time plus ``stall``, or, when nothing came since, ends ``scope`` at
    once, which the round sees as ``TimeoutError``. The limit is thus exactly ``stall``.
    """

    __slots__ = ("_handle", "_loop", "_scope", "_stall", "last")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, scope: asyncio.Timeout, stall: float
    ) -> None:
        self._loop = loop
        self._scope = scope
        self._stall = stall
        self._handle: asyncio.TimerHandle | None = None
        self.last = 0.0

    def token(self, at: float) -> None:
        self.last = at
        if self._handle is None:
            self._scope.reschedule(None)  # a token came: the budget no longer applies
            self._handle = self._loop.call_at(at + self._stall, self._fire)

    def _fire(self) -> None:
        due = self.last + self._stall
        if due > self._loop.time():
            self._handle = self._loop.call_at(due, self._fire)
        else:
            self._scope.reschedule(self._loop.time())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _limits(host: TurnHost) -> tuple[float, float]:
    """(turn budget, stall limit) in seconds: the agent's, stretched to the LLM client's own
    first-token and read timeouts where those are longer (a slow local model is configured
    there, and the session must not cut it short)."""
    agent = host.agent
    budget, stall = agent.llm_turn_budget, agent.llm_stall_after
    client = getattr(host.deps.llm, "timeouts", None)
    if isinstance(client, Timeouts):
        limits = Timeouts.of(agent.llm).over(client)
        budget = max(budget, limits.first_token or 0.0)
        stall = max(stall, limits.read or 0.0)
    return budget, stall


def _adjusted(
    request: ChatRequest, choice: str | dict[str, Any] | None, note: str | None
) -> ChatRequest:
    """``request`` with a ``tool_choice`` and a guard's note added to its last (per-turn)
    system message: the rest of the request, a prompt cache's prefix, is left as it is."""
    if choice is not None and request.tools:
        request = dataclasses.replace(request, tool_choice=choice)
    if note:
        messages = list(request.messages)
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "system":
            messages[-1] = {**last, "content": f"{last['content']}\n\n{note}"}
        else:
            messages.append({"role": "system", "content": note})
        request = dataclasses.replace(request, messages=messages)
    return request


def _filler(agent: AgentProfile, seq: int) -> str:
    lines = agent.filler_lines or ["One moment."]
    return lines[seq % len(lines)]
