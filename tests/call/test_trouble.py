"""The LLM trouble policy, session side: a filler line when the model is slow, the apology
within the turn's budget, and after two failed turns in a row the offer of a person, carried
out without the model when the caller agrees or says nothing useful.

Every test runs against a real relay (uvicorn, WebSocket) and the scripted model; the agent's
timings are shortened in its profile. Waiting is for frames, never for time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from relay.call.trouble import answer_to_offer, wants_person
from relay.llm.types import ChatRequest, Done, TextDelta
from relay.storage import repository
from relay.storage.models import Ticket
from relay.testing import Fail, ScriptedLLM, Stall, Text, ToolCall, ToolCalls
from relay.tools import ToolRegistry
from relay.tools.calls import TOOLS as CALL_TOOLS
from tests.conftest import agent_toml, stored_events, strip, write_profile

APOLOGY = "Sorry, I've hit a snag on my end. Could you say that again for me?"
OFFER_PERSON = (
    "I'm sorry, I'm having real trouble on my end. "
    "Would you like me to put you through to someone from our office?"
)
OFFER_MESSAGE = (
    "I'm sorry, I'm having real trouble on my end. "
    "Would you like to leave a message so someone can call you back?"
)
TRANSFER = "No worries, I'll put you through to someone from our office now."


def write_agent(prompts_dir: Path, *, person: bool = True, **fields: Any) -> None:
    """The test agent with extra top-level fields (and without its person, if asked)."""
    text = agent_toml([*_TOOLS, "take_message"] if not person else _TOOLS)
    if not person:
        text = re.sub(r"^person_number = .*\n", "", text, flags=re.M)
    write_profile(prompts_dir, text, **fields)


_TOOLS = ["transfer_to_person", "end_call", "switch_language", "send_digits", "collect_digits"]


def quick_speech(runtime: Any) -> None:
    """Lines take no time to say (the session waits that long before sending ``end``)."""
    runtime.deps.speech_seconds = lambda text: 0.0


async def test_a_stalled_model_gets_a_filler_then_the_apology_within_the_budget(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0.05, llm_turn_budget=0.4)
    llm = ScriptedLLM([Stall(30, then=Text("Far too late.")), Text("I'm back.")])
    async with start_relay(
        llm, RELAY_LLM_MAX_RETRIES="0", RELAY_LLM_FIRST_TOKEN_TIMEOUT="0.4"
    ) as relay:
        call = relay.call()
        await call.connect()
        stalled = await call.say("Hello?")
        after = await call.say("Are you there?")
        await call.close()
        await relay.session_closed()
        failures = await stored_events(relay, call.call_sid, "llm_failure")
        _, turns = await repository.call_history(relay.runtime.deps.db, call.call_sid)
        counts = relay.runtime.deps.llm_failures.counts()

    filler = "One moment while I check that. "  # the agent's filler line for turn 1
    assert strip(stalled.frames) == [
        {"type": "text", "token": filler, "last": False, "preemptible": True},
        {"type": "text", "token": " " + APOLOGY, "last": True},
    ]
    assert after.text == "I'm back."
    # The session's budget and the client's first-token timeout end together: either names it.
    [failure] = failures
    assert failure["kind"] in ("turn-budget", "timeout") and failure["consecutive"] == 1
    assert counts.get(failure["kind"], 0) >= 1
    # What the caller heard is the history: the filler, then the apology.
    said = [t for t in turns if t.role == "assistant" and t.error]
    assert [t.content for t in said] == [filler + " " + APOLOGY]


class SilentModel:
    """A ChatModel that never answers (and has no client timeouts of its own)."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Done]:
        self.requests.append(request)
        await asyncio.Event().wait()
        yield Done("stop")  # pragma: no cover


async def test_the_session_gives_up_on_a_silent_model_at_the_turn_budget(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0, llm_turn_budget=0.3)
    model = SilentModel()
    async with start_relay(configure=lambda runtime: setattr(runtime.deps, "llm", model)) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Hello?")
        await call.close()
        await relay.session_closed()
        failures = await stored_events(relay, call.call_sid, "llm_failure")

    assert strip(reply.frames) == [{"type": "text", "token": APOLOGY, "last": True}]
    assert [f["kind"] for f in failures] == ["turn-budget"]
    [request] = model.requests
    # The deadline handed to the client is the budget's end, counted from the prompt.
    assert request.deadline is not None and request.deadline - reply.frames[0]["_t"] < 0.3


class StallingModel:
    """A ChatModel that says a few words, quickly, and then nothing ever again."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    async def stream(self, request: ChatRequest) -> AsyncIterator[TextDelta | Done]:
        for word in self.words:
            await asyncio.sleep(0)
            yield TextDelta(word)
        await asyncio.Event().wait()
        yield Done("stop")  # pragma: no cover


async def test_a_model_that_stalls_mid_reply_is_given_up_at_the_stall_limit(
    start_relay: Any, prompts_dir: Path
) -> None:
    # The budget is far away: only the stall limit, counted from the last token, can end it.
    write_agent(prompts_dir, llm_filler_after=0, llm_turn_budget=60, llm_stall_after=0.3)
    words = ["Let ", "me ", "see, ", "the ", "stairs ", "are "]
    model = StallingModel(words)
    async with start_relay(configure=lambda runtime: setattr(runtime.deps, "llm", model)) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("How much for the stairs?")
        await call.close()
        await relay.session_closed()
        failures = await stored_events(relay, call.call_sid, "llm_failure")

    said = "".join(f["token"] for f in reply.frames[:-1])
    assert said.startswith("Let me see,") and reply.frames[-1]["last"] is True
    assert APOLOGY in reply.frames[-1]["token"]
    [failure] = failures
    assert failure["kind"] == "turn-budget" and "stalled for 0.3" in failure["error"]


class _Clock:
    """A loop's clock and timers, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        timer = (when, callback)
        self.timers.append(timer)
        return _Handle(self, timer)

    def run_due(self) -> None:
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()


class _Handle:
    """A timer of :class:`_Clock`: cancelling takes it off the clock."""

    def __init__(self, clock: _Clock, timer: tuple[float, Any]) -> None:
        self._clock, self._timer = clock, timer

    def cancel(self) -> None:
        if self._timer in self._clock.timers:
            self._clock.timers.remove(self._timer)


class _Scope:
    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    def reschedule(self, when: float | None) -> None:
        self.deadlines.append(when)


def test_the_stall_limit_runs_from_the_last_token_with_one_timer() -> None:
    from relay.call.turn import _StallWatch

    clock, scope = _Clock(), _Scope()
    watch = _StallWatch(clock, scope, 3.0)  # type: ignore[arg-type]
    clock.now = 1.0
    watch.token(clock.now)
    assert scope.deadlines == [None]  # the first token takes the budget away
    for at in (1.5, 2.0, 3.5, 3.9):  # tokens only note their time: no new timer
        watch.token(at)
    assert [when for when, _ in clock.timers] == [4.0]
    clock.now = 4.0
    clock.run_due()  # the last token was at 3.9: re-armed at 6.9, the turn goes on
    assert [when for when, _ in clock.timers] == [6.9] and scope.deadlines == [None]
    clock.now = 6.9
    clock.run_due()  # nothing for 3 s: the scope ends now
    assert scope.deadlines == [None, 6.9] and clock.timers == []
    watch.token(7.0)  # a token after the end arms nothing
    assert clock.timers == [] and scope.deadlines == [None, 6.9]


async def test_a_quick_model_gets_no_filler(start_relay: Any, prompts_dir: Path) -> None:
    write_agent(prompts_dir, llm_filler_after=5.0)
    llm = ScriptedLLM([Text("Hi there.")])
    async with start_relay(llm) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Hello?")

    assert reply.text == "Hi there."
    assert not any(f.get("preemptible") for f in reply.frames)


async def test_after_two_failures_a_person_is_offered_and_the_call_transferred_on_yes(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0)
    llm = ScriptedLLM([Fail(503), Fail(503)])  # then the script is exhausted: 500s
    async with start_relay(llm, configure=quick_speech, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        first = await call.say("Hello?")
        second = await call.say("Hello, can you hear me?")
        handoff = await call.say("Yes please")
        end = await call.next_frame()
        await call.close()  # Twilio hangs up the socket after `end`
        await relay.session_closed()
        row = await repository.get_call(relay.runtime.deps.db, call.call_sid)
        failures = await stored_events(relay, call.call_sid, "llm_failure")
        offers = await stored_events(relay, call.call_sid, "llm_failure_offer")

    assert first.text == APOLOGY
    assert second.text == OFFER_PERSON  # not another apology
    assert handoff.text == TRANSFER
    assert end is not None and end["type"] == "end"
    data = orjson.loads(end["handoffData"])
    assert (data["reasonCode"], data["reason"]) == ("live-agent-handoff", "llm-failure")
    assert len(llm.requests) == 2  # the caller's "yes" was understood without the model
    assert row is not None and row.outcome == "llm-failure"
    assert [(f["kind"], f["consecutive"], f["offered"]) for f in failures] == [
        ("status", 1, None),
        ("status", 2, "person"),
    ]
    assert offers == [{"offer": "person", "accepted": True, "why": "caller agreed"}]


async def test_a_caller_who_declines_goes_back_to_the_model(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0)
    llm = ScriptedLLM([Fail(503), Fail(503), Text("I'm back, sorry about that.")])
    async with start_relay(llm, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hello?")
        offered = await call.say("Hello?")
        back = await call.say("No thanks, I'll wait")

    assert offered.text == OFFER_PERSON
    assert back.text == "I'm back, sorry about that."
    assert back.end is None


async def test_a_caller_who_says_nothing_after_the_offer_is_put_through(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0, silence_timeout=0.5)
    llm = ScriptedLLM([Fail(503), Fail(503)])

    async with start_relay(llm, configure=quick_speech, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hello?")
        offered = await call.say("Hello?")
        handoff = await call.reply()  # nothing said: after the silence, the transfer
        end = await call.next_frame()

    assert offered.text == OFFER_PERSON
    assert handoff.text == TRANSFER
    assert end is not None and end["type"] == "end"


async def test_without_a_person_a_message_is_offered_and_taken(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, person=False, llm_filler_after=0)
    llm = ScriptedLLM([Fail(503), Fail(503)])
    async with start_relay(llm, configure=quick_speech, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hello?")
        offered = await call.say("Is anyone there?")
        asked = await call.say("Yeah okay")
        goodbye = await call.say("It's Sam, I need a quote for moving an upright to Geelong")
        end = await call.next_frame()
        await call.close()
        await relay.session_closed()
        row = await repository.get_call(relay.runtime.deps.db, call.call_sid)
        async with relay.runtime.deps.db.session() as session:
            tickets = (await session.scalars(select(Ticket))).all()

    assert offered.text == OFFER_MESSAGE
    assert asked.text.startswith("Of course. Please tell me your name")
    assert goodbye.text == "Thank you, I've passed that on. Someone will call you back. Goodbye!"
    assert end is not None and end["type"] == "end"
    assert [(t.phone, t.reason, t.call_sid) for t in tickets] == [
        (call.from_, "It's Sam, I need a quote for moving an upright to Geelong", call.call_sid)
    ]
    assert row is not None and row.outcome == "llm-failure"


async def test_a_call_that_hangs_up_while_the_model_fails_records_llm_failure(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0)
    llm = ScriptedLLM([Fail(503)])
    async with start_relay(llm, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hello?")
        await call.close()
        await relay.session_closed()
        row = await repository.get_call(relay.runtime.deps.db, call.call_sid)

    assert row is not None and row.outcome == "llm-failure"


def test_answers_to_the_offer() -> None:
    for yes in ("yes", "Yes please.", "yeah", "sure, go ahead", "okay", "", "um what", "hello?"):
        assert answer_to_offer(yes), yes
    for no in ("no", "No thanks.", "nope", "not right now", "don't bother"):
        assert not answer_to_offer(no), no


class StuckRetriever:
    """A knowledge retriever that never answers."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def retrieve(self, agent: Any, query: str) -> Any:
        self.queries.append(query)
        await asyncio.Event().wait()


async def test_a_stuck_retrieval_leaves_the_turn_ungrounded_not_silent(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0.05, llm_turn_budget=0.3)
    retriever = StuckRetriever()
    llm = ScriptedLLM([Text("Yes, we do.")])
    async with start_relay(
        llm,
        configure=lambda runtime: setattr(runtime.deps, "retriever", retriever),
        RELAY_LLM_FIRST_TOKEN_TIMEOUT="0.3",
    ) as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Do you move organs?")
        await call.close()
        await relay.session_closed()
        retrieval = await stored_events(relay, call.call_sid, "retrieval")

    assert retriever.queries == ["Do you move organs?"]
    assert strip(reply.frames)[0] == {
        "type": "text",
        "token": "One moment while I check that. ",
        "last": False,
        "preemptible": True,
    }
    assert "".join(f["token"] for f in reply.frames[1:]) == "Yes, we do."
    assert [r["error"] for r in retrieval] == ["retrieval timed out"]
    [request] = llm.requests
    system = [m["content"] for m in request["messages"] if m["role"] == "system"]
    assert not any("Reference material" in text for text in system)
    # The filler is the caller's: the model is not shown it, and its answer continues it.
    talk = [m for m in request["messages"] if m["role"] != "system"]
    assert talk[-1] == {"role": "user", "content": "Do you move organs?"}


async def test_after_a_failure_asking_for_a_person_gets_one_without_the_model(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0)
    llm = ScriptedLLM([Fail(503)])
    async with start_relay(llm, configure=quick_speech, RELAY_LLM_MAX_RETRIES="0") as relay:
        call = relay.call()
        await call.connect()
        failed = await call.say("How much for a grand?")
        handoff = await call.say("Can I just talk to a real person please?")
        end = await call.next_frame()

    assert failed.text == APOLOGY
    assert handoff.text == TRANSFER
    assert end is not None and end["type"] == "end"
    assert orjson.loads(end["handoffData"])["reason"] == "llm-failure"
    assert len(llm.requests) == 1  # the model, failing, was not asked again


def test_asking_for_a_person() -> None:
    for asked in ("Can I talk to a real person?", "put me through to someone", "a human please",
                  "I need to speak with the manager", "operator"):  # fmt: skip
        assert wants_person(asked), asked
    for other in ("Hello?", "Is anyone there?", "How much is a grand piano?", "Can you hear me?"):
        assert not wants_person(other), other


async def test_a_slow_tool_gets_the_wait_filler_in_time_and_it_joins_the_calls(
    start_relay: Any, prompts_dir: Path
) -> None:
    write_agent(prompts_dir, llm_filler_after=0.05)
    started, gate = asyncio.Event(), asyncio.Event()
    original = next(t for t in CALL_TOOLS if t.name == "switch_language")

    async def gated(ctx: Any, language: str) -> Any:
        started.set()
        await gate.wait()
        return await original.function(ctx, language)

    def configure(runtime: Any) -> None:
        runtime.deps.tools = ToolRegistry(
            [dataclasses.replace(t, function=gated) if t is original else t for t in CALL_TOOLS]
        )
        runtime.deps.filler_after = 60.0  # the tool's own filler would come far too late

    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("switch_language", {"language": "Spanish"}, id="call_1")]),
            Text("Claro."),
        ]
    )
    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        await call.prompt("¿Hablas español?")
        filler = await call.next_frame()  # said while the model or the tool works
        await asyncio.wait_for(started.wait(), 10)
        gate.set()
        rest = await call.reply()

    line = "One moment while I check that. "
    assert filler is not None
    assert strip([filler]) == [{"type": "text", "token": line, "last": False, "preemptible": True}]
    assert rest.text == "Claro."
    calls, answer = [m for m in llm.requests[1]["messages"] if m["role"] != "system"][-2:]
    assert (calls["content"], [c["id"] for c in calls["tool_calls"]]) == (line, ["call_1"])
    assert answer["role"] == "tool" and answer["tool_call_id"] == "call_1"
