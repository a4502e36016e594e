"""The recorded model answers, served back in order, and what counts as a divergence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from relay.llm.types import ChatRequest
from relay.recordings.format import Recording
from relay.replay.cassette import Cassette, CassetteLLM
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
