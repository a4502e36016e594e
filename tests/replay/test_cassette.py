"""The recorded model answers, served back in order, and what counts as a divergence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.llm.types import ChatRequest
from relay.recordings.format import Recording
from relay.replay.cassette import (
    Cassette,
    CassetteDirectory,
    CassetteLLM,
    CassetteRetriever,
    known_caller,
)
from relay.replay.compare import Masker

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def _load(name: str) -> Recording:
    return Recording.read(SESSIONS / f"{name}.jsonl")


def test_a_request_past_the_end_of_the_recording_is_a_divergence() -> None:
    recording = _load("handoff")
    cassette = Cassette(recording, Masker())
    body = dict(
        recording.events[[e["kind"] for e in recording.events].index("llm_request")]["data"]["body"]
    )
    assert cassette.answer(body) is not None and not cassette.divergences
    assert cassette.answer(body) is None
    [divergence] = cassette.divergences
    assert (
        divergence.number == 2
        and divergence.summary == "an LLM request the recording does not have"
    )


def _bodies(recording: Recording) -> list[dict[str, Any]]:
    return [dict(e["data"]["body"]) for e in recording.events if e["kind"] == "llm_request"]


def test_a_recorded_request_cut_off_before_any_answer_is_skipped_when_not_made_now() -> None:
    """Then: asked, and cut off by an interrupt before any answer. Now: the interrupt came
    first and the request was never made. The next request gets the next answer."""
    recording = _load("interruption")
    bodies = _bodies(recording)
    first_llm = [e["kind"] for e in recording.events].index("llm_request")
    cut = {**recording.events[first_llm], "data": {"body": {**bodies[0], "messages": [
        *bodies[0]["messages"], {"role": "user", "content": "something cut off"}]}}}  # fmt: skip
    recording.events.insert(first_llm, cut)
    cassette = Cassette(recording, Masker())
    assert cassette.unused == len(bodies)  # the cut-off request is not owed an answer
    for body in bodies:
        assert cassette.answer(body) is not None
    assert cassette.divergences == [] and cassette.skipped == 1 and cassette.unused == 0


async def test_a_request_the_recording_never_made_leaves_no_trace_when_its_turn_is_cut_off() -> (
    None
):
    """The other order: now the request goes out before the caller's interrupt or hang-up
    lands (it did not then). It waits a moment, is cancelled with its turn, leaves no trace."""
    cassette = Cassette(_load("interruption"), Masker())
    llm = CassetteLLM(cassette, grace=5.0)
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "not recorded"}])

    async def consume() -> None:
        async for _ in llm.stream(request):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # the stream is waiting out its grace
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cassette.served == 0 and cassette.position == 0 and cassette.divergences == []


async def test_a_request_the_recording_never_made_is_a_divergence_when_its_turn_goes_on() -> None:
    cassette = Cassette(_load("handoff"), Masker())
    llm = CassetteLLM(cassette, grace=0.0)
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "not recorded"}])
    async for _ in llm.stream(request):
        break
    [divergence] = cassette.divergences
    assert divergence.number == 1 and divergence.summary.startswith("messages differ")


def _retrieval(doc: str) -> dict[str, Any]:
    return {"kind": "retrieval", "data": {"provenance": [{"doc_id": doc}], "elapsed_ms": 1.0}}


def _request(*said: str) -> dict[str, Any]:
    messages = [*({"role": "user", "content": s} for s in said)]
    messages.append({"role": "system", "content": "Notes."})
    return {"kind": "llm_request", "data": {"body": {"model": "m", "messages": messages}}}


def _response(*pieces: str) -> dict[str, Any]:
    data = {"pieces": list(pieces), "tool_calls": [], "complete": bool(pieces)}
    return {"kind": "llm_response", "data": data}


async def test_a_turn_cut_off_before_its_retrieval_now_leaves_its_passages_to_it() -> None:
    """Then: "again" retrieved, was asked and cut off by an interrupt before any answer. Now
    (--fast) the next prompt superseded it before it retrieved anything: the next turn gets
    its own retrieval, not the cut-off one's."""
    events = [
        _retrieval("history.html"), _request("long version"), _response("Sure."),
        _retrieval("access.md"), _request("long version", "again"), _response(),
        _retrieval("faq.csv"), _request("again", "areas?"), _response("We cover Melbourne."),
    ]  # fmt: skip
    recording = Recording({"call": {"call_sid": "CA1"}}, events=events)
    retriever = CassetteRetriever(Cassette(recording, Masker()))
    agent: Any = None  # the cassette's retriever does not read it
    first = await retriever.retrieve(agent, "long version")
    after = await retriever.retrieve(agent, "again areas?")
    assert first is not None and first.provenance == [{"doc_id": "history.html"}]
    assert after is not None and after.provenance == [{"doc_id": "faq.csv"}]
    assert await retriever.retrieve(agent, "more") is None


async def test_a_cut_off_turn_that_retrieves_now_too_gets_its_own_retrieval() -> None:
    events = [
        _retrieval("access.md"), _request("again"), _response(),
        _retrieval("faq.csv"), _request("again", "areas?"), _response("We cover Melbourne."),
    ]  # fmt: skip
    recording = Recording({"call": {"call_sid": "CA1"}}, events=events)
    retriever = CassetteRetriever(Cassette(recording, Masker()))
    agent: Any = None
    found = [await retriever.retrieve(agent, q) for q in ("again", "again areas?")]
    assert [r.provenance[0]["doc_id"] for r in found if r is not None] == ["access.md", "faq.csv"]


async def test_the_caller_the_recording_found_is_found_again() -> None:
    """The replay's database is new: the caller lookup answers from the recorded requests,
    once the requests made before it finished then have been made now."""
    customer = {"id": 7, "name": "Sarah Kelly", "phone": "+61491570158", "bookings": []}
    facts = "You are Kerry.\n\nCaller ID: +61491570158."

    def request(system: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]
        return {"kind": "llm_request", "data": {"body": {"messages": messages}}}

    known = request(facts + " Known caller: " + orjson.dumps(customer).decode())
    recording = Recording({"call": {}}, events=[request(facts), _response("Hi."), known])
    assert known_caller(recording) == (True, customer, 2)
    assert known_caller(Recording({"call": {}}, events=[request(facts)])) == (True, None, 0)
    assert known_caller(Recording({"call": {}}, events=[])) == (False, None, 0)

    # Since 7 December the call's facts are a system message of their own after the prompt;
    # the turn's notes, last, are never read for them.
    def request_now(facts: str, notes: str = "Current date and time: now.") -> dict[str, Any]:
        messages = [{"role": "system", "content": "You are Kerry."},
                    {"role": "system", "content": facts}, {"role": "user", "content": "Hi"},
                    {"role": "system", "content": notes}]  # fmt: skip
        return {"kind": "llm_request", "data": {"body": {"messages": messages}}}

    said = "Caller ID: +61491570158. Known caller: " + orjson.dumps(customer).decode()
    assert known_caller(Recording({"call": {}}, events=[request_now(said)])) == (True, customer, 1)
    notes = "Known caller: " + orjson.dumps(customer).decode()  # e.g. in a retrieved passage
    assert known_caller(
        Recording({"call": {}}, events=[request_now("Caller ID: +61491570158.", notes)])
    ) == (True, None, 0)

    cassette = Cassette(recording, Masker())
    agent: Any = None
    lookup = asyncio.ensure_future(CassetteDirectory(cassette, customer, 2).lookup(agent, "x"))
    await asyncio.sleep(0)
    assert not lookup.done()  # the first request went out without it, then
    assert cassette.answer(request(facts)["data"]["body"]) is not None
    assert await lookup == customer
