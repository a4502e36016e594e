"""An unchanged agent always replays as a pass: the cases that used to report false regressions.

Each call is recorded fresh through the app (tests/sessions/record.py's harness: uvicorn, a
SimulatedCall over a real WebSocket, the scripted LLM over HTTP), exported exactly as
``relay sessions export`` writes it (no ``ignore`` patterns added by hand), then replayed
against the same agent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from relay.recordings.format import Recording
from relay.replay.runner import Options, Report, run_replays
from relay.testing import FakeLLMServer, ScriptedLLM, Stall, Text, ToolCall, ToolCalls
from relay.testing.simcall import SimulatedCall

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def _record_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "relay_tests_faithful_record", SESSIONS / "record.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = _record_module()


async def _requests(llm: ScriptedLLM, count: int) -> None:
    """Until the scripted model has received ``count`` requests (a condition, not a delay)."""
    async with asyncio.timeout(10):
        while len(llm.requests) < count:  # noqa: ASYNC110 - the server runs in another thread
            await asyncio.sleep(0.005)


async def _record_and_replay(
    tmp_path: Path, name: str, script: Any, **options: Any
) -> tuple[Recording, Report, str]:
    [path] = await RECORD.record(
        [name], tmp_path / "recorded", quiet=True, calls={name: (script, {"notes": name})}
    )
    recording = Recording.read(path)
    assert recording.ignore == []  # as exported: nothing added by hand
    settings = RECORD.settings(tmp_path / "replay", **options.pop("settings", {}))
    out = io.StringIO()
    options.setdefault("fast", True)
    [report] = await run_replays([recording], settings, Options(**options), out=out, verbose=True)
    return recording, report, out.getvalue()


@pytest.fixture
def recorded_dir(tmp_path: Path) -> Path:
    (tmp_path / "recorded").mkdir()
    return tmp_path


async def test_a_quote_replays_as_a_pass_with_its_new_random_id(recorded_dir: Path) -> None:
    recording, report, out = await _record_and_replay(recorded_dir, "quote", RECORD.quote)
    assert not report.failed, out
    assert not report.divergences and not report.changes and not report.history, out
    assert report.replayed is not None

    def quote_ids(rec: Recording) -> list[str]:
        return [t["content"][6:13] for t in rec.turns if t.get("tool_name") == "quote_piano_move"]

    assert quote_ids(report.replayed) != quote_ids(recording)  # a new random id, same verdict


async def test_a_key_pressed_just_before_hang_up_replays_as_a_pass(recorded_dir: Path) -> None:
    async def script(call: SimulatedCall, llm: ScriptedLLM) -> None:
        llm.push(Text("Hello! How can I help?"), Stall(5.0, Text("What kind of piano is it?")))
        await call.say("Hello?")
        await call.dtmf("1")  # the keypad's "I'd like a quote" prompt: a turn asks the model
        await _requests(llm, 2)
        await call.close()  # hung up while the model was still thinking

    recording, report, out = await _record_and_replay(recorded_dir, "key-then-hang-up", script)
    assert [e["kind"] for e in recording.events].count("llm_request") == 2
    assert not report.failed, out
    assert "[presses 1]" in out


async def test_an_interrupt_before_the_models_request_replays_as_a_pass(
    recorded_dir: Path,
) -> None:
    async def script(call: SimulatedCall, llm: ScriptedLLM) -> None:
        llm.push(
            Text("Hello! How can I help?"),
            Stall(5.0, Text("We cover all of Melbourne.")),  # cut off: never answered
            Text("Yes, we go to Geelong every week."),
        )
        await call.say("Hello?")
        await call.prompt("What areas do you cover?")
        await _requests(llm, 2)
        await call.interrupt("", duration_ms=300)  # before any answer came
        await call.say("Do you go to Geelong?")

    recording, report, out = await _record_and_replay(recorded_dir, "early-interrupt", script)
    assert [e["kind"] for e in recording.events].count("llm_request") == 3
    assert not report.failed, out
    assert "Yes, we go to Geelong every week." in out


async def test_a_handoff_without_speaker_events_replays_as_a_pass_in_live_mode(
    recorded_dir: Path,
) -> None:
    transfer = ToolCalls([
        ToolCall("transfer_to_person", {"reason": "caller asked for a person", "summary": "A grand."},
                 id="call_transfer_1"),
    ])  # fmt: skip

    async def script(call: SimulatedCall, llm: ScriptedLLM) -> None:
        llm.push(transfer)
        await call.prompt("Can I talk to a real person please?")
        await call.reply()
        end = await call.reply(timeout=15)  # no agentSpeaking "off": the line plays out first
        assert end.end is not None

    live = ScriptedLLM([transfer])
    async with FakeLLMServer(live) as fake:
        _, report, out = await _record_and_replay(
            recorded_dir,
            "quiet-handoff",
            script,
            mode="live",
            settings={"OPENAI_BASE_URL": fake.base_url},
        )
    assert not report.failed, out
    assert "live-agent-handoff" in out


async def test_a_call_that_runs_past_the_hour_replays_as_a_pass(
    start_relay: Any, tmp_path: Path
) -> None:
    """The model is told the time to the hour; a call whose second turn comes after the hour
    struck must be replayed with each turn's own time, not the call's start for all of them."""
    from datetime import UTC, datetime

    from relay.recordings.format import export_call

    clock = [datetime(2026, 11, 24, 3, 59, 40, tzinfo=UTC)]  # 2:59 PM in Melbourne
    llm = ScriptedLLM([Text("Hello, how can I help?"), Text("Sure, talk soon.")])

    def configure(runtime: Any) -> None:
        runtime.deps.now = lambda: clock[0]

    async with start_relay(llm, configure=configure) as relay:
        call = relay.call()
        await call.connect()
        await call.say("Hi there.")
        clock[0] = datetime(2026, 11, 24, 4, 0, 5, tzinfo=UTC)  # 3:00 PM: the hour has struck
        await call.say("Thanks, bye.")
        await call.close()
        await relay.session_closed()
        recording = await export_call(relay.runtime.deps.db, call.call_sid)
        settings = relay.settings
    times = [r["messages"][-1]["content"].split("\n", 1)[0] for r in llm.requests]
    assert "after 2 PM" in times[0] and "after 3 PM" in times[1]  # the requests differ

    path = tmp_path / "past-the-hour.jsonl"
    path.write_bytes(recording.dumps())
    [report] = await run_replays([Recording.read(path)], settings, Options(fast=True))
    assert not report.failed, report.regressions


async def test_a_filler_line_said_while_the_model_was_slow_replays_as_a_pass(
    start_relay: Any, prompts_dir: Path, tmp_path: Path
) -> None:
    """Whether the caller heard "One moment..." depends on how fast the model was that day,
    not on the agent: a replay (whose model answers at once) is no regression for lacking it."""
    import orjson

    from relay.recordings.format import export_call
    from tests.conftest import agent_toml, write_profile

    write_profile(
        prompts_dir, agent_toml(["transfer_to_person", "end_call"]), llm_filler_after=0.05
    )
    llm = ScriptedLLM([Stall(0.3, then=Text("Hello, how can I help?")), Text("Talk soon.")])
    async with start_relay(llm) as relay:
        call = relay.call()
        await call.connect()
        first = await call.say("Hi there.")
        await call.say("Thanks, bye.")
        await call.close()
        await relay.session_closed()
        recording = await export_call(relay.runtime.deps.db, call.call_sid)
        settings = relay.settings
    assert first.frames[0].get("preemptible") is True  # the filler was said
    assert any(e["kind"] == "filler" for e in recording.events)

    path = tmp_path / "filler.jsonl"
    path.write_bytes(recording.dumps())
    [report] = await run_replays([Recording.read(path)], settings, Options(fast=True))
    assert not report.failed, report.regressions
    assert orjson.loads(path.read_bytes().splitlines()[0])["format"] == "relay-recording"
