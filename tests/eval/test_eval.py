"""``relay eval`` offline: the agent's model and the caller's are both scripted servers; the
call goes over the real WebSocket to the real tools on a scratch database."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.cli.main import main
from relay.eval.scenarios import load_scenario, load_scenarios
from relay.testing import FakeLLMServer, Reply, ScriptedLLM, Text, ToolCall, ToolCalls

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "prompts" / "evals"
QUOTE_ARGS = {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg",
              "move_date": "2026-11-24"}  # fmt: skip


def test_the_shipped_scenarios_load_and_cover_the_six_kinds() -> None:
    scenarios = {s.name: s for s in load_scenarios([SHIPPED])}
    assert {"piano-quote", "piano-booking", "piano-crane", "piano-knowledge",
            "piano-wants-person", "piano-unhappy"} <= set(scenarios)  # fmt: skip
    assert scenarios["piano-booking"].expect.booking is True
    assert scenarios["piano-crane"].expect.booking is False
    assert scenarios["piano-wants-person"].expect.handoff is True


@pytest.fixture
def servers() -> Iterator[tuple[FakeLLMServer, FakeLLMServer]]:
    with FakeLLMServer(ScriptedLLM()) as agent, FakeLLMServer(ScriptedLLM()) as caller:
        yield agent, caller


@pytest.fixture
def env(eval_env: Path) -> Path:
    return eval_env


def script_quote_call(agent: FakeLLMServer, caller: FakeLLMServer) -> None:
    agent.llm.push(
        ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]),
        Text("It comes to $350 including GST, for the upright."),
        Text("You're welcome, goodbye!"),
    )
    caller.llm.push(Text("Great, that's all I needed, thanks. Bye."), Text("[HANGUP]"))


def run_eval(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["eval", *args])
    return code, capsys.readouterr().out


def test_a_quote_scenario_passes_and_writes_junit(
    env: Path,
    servers: tuple[FakeLLMServer, FakeLLMServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent, caller = servers
    monkeypatch.setenv("OPENAI_BASE_URL", agent.base_url)
    script_quote_call(agent, caller)
    report = tmp_path / "eval.xml"

    code, out = run_eval(
        [str(SHIPPED / "piano-quote.toml"), "--caller-url", caller.base_url,
         "--junit", str(report)],
        capsys,
    )  # fmt: skip

    assert code == 0, out
    assert out.splitlines()[0] == "PASS  piano-quote (piano-removals): 1/1 runs passed (100%)"
    # The caller model was told its persona, goal and facts, and heard the agent's answer.
    first = caller.llm.requests[0]
    assert "Priya Sharma" in first["messages"][0]["content"]
    assert first["messages"][-1] == {
        "role": "user", "content": "It comes to $350 including GST, for the upright.",
    }  # fmt: skip
    # The agent's model got the caller's opening line over the WebSocket path.
    assert agent.llm.requests[0]["messages"][-2]["content"] == (
        "Hi, how much would it be to move my piano?"
    )
    suites = ET.parse(report).getroot()
    assert suites.get("tests") == "1" and suites.get("failures") == "0"
    [case] = suites.iter("testcase")
    assert case.get("name") == "piano-quote run 1" and case.find("failure") is None


def test_eval_fails_when_a_tool_is_removed_from_the_agent(
    env: Path,
    servers: tuple[FakeLLMServer, FakeLLMServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = env / "piano-removals.toml"
    text = profile.read_text(encoding="utf-8")
    profile.write_text(re.sub(r'\s*"quote_piano_move",', "", text, count=1), encoding="utf-8")
    agent, caller = servers
    monkeypatch.setenv("OPENAI_BASE_URL", agent.base_url)
    script_quote_call(agent, caller)
    report = tmp_path / "eval.xml"

    code, out = run_eval(
        [str(SHIPPED / "piano-quote.toml"), "--caller-url", caller.base_url,
         "--junit", str(report)],
        capsys,
    )  # fmt: skip

    assert code == 1, out
    assert out.splitlines()[0] == "FAIL  piano-quote (piano-removals): 0/1 runs passed (0%)"
    assert "quote_piano_move(piano_type~/(?i)upright/" in out and "ok=False" in out
    # The scripted agent's "$350" (no tool produced it) was kept from the caller by the price
    # guard, which asked again (issue 15): the script had no reply for that.
    assert "outcome quoted recorded (outcomes: answered-only" in out
    assert "quote_piano_move" not in {t["function"]["name"] for t in agent.llm.requests[0]["tools"]}
    [failure] = ET.parse(report).getroot().iter("failure")
    assert "quote_piano_move" in (failure.get("message") or "")


def booking_agent(body: dict[str, Any]) -> Reply:
    """A scripted agent: quotes on the first request, books when the caller says yes."""
    messages = body["messages"]
    last = messages[-2] if messages[-1]["role"] == "system" else messages[-1]  # issue 15 layout
    if last["role"] == "tool":
        if last["content"].startswith("Booked"):
            return Text("You're booked in. Goodbye!")
        return Text("That's $350 including GST. Shall I book the morning of Tuesday the 24th?")
    users = [m for m in messages if m["role"] == "user"]
    if len(users) == 1:
        return ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)])
    if "yes" in last["content"].lower():
        quote = next(m for m in messages if m["role"] == "tool")["content"].split(":")[0]
        return ToolCalls([ToolCall("book_move", {
            "quote_id": quote.split()[-1], "date": "2026-11-24", "window": "morning",
            "confirmed": True, "name": "Tom Nguyen"})])  # fmt: skip
    return Text("No problem. Goodbye!")


def test_runs_give_a_pass_rate_and_a_booking_is_checked_in_the_database(
    env: Path,
    servers: tuple[FakeLLMServer, FakeLLMServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent, caller = servers
    monkeypatch.setenv("OPENAI_BASE_URL", agent.base_url)
    agent.llm.default = booking_agent
    # Run 1 says yes and books; run 2 declines.
    caller.llm.push(Text("Yes please, book it under Tom Nguyen."), Text("[HANGUP]"))
    caller.llm.push(Text("Actually no, bye."), Text("[HANGUP]"))
    arguments = [str(SHIPPED / "piano-booking.toml"), "--caller-url", caller.base_url,
                 "--runs", "2"]  # fmt: skip

    code, out = run_eval([*arguments, "--min-pass-rate", "0.5"], capsys)

    assert code == 0, out
    assert out.splitlines()[0] == "PASS  piano-booking (piano-removals): 1/2 runs passed (50%)"
    assert "a booking exists (bookings: 0)" in out  # run 2
    assert "book_move(window~/(?i)morning/, confirmed~/true/, date~/2026-11-24/) ran" in out

    caller.llm.push(Text("Yes please, book it under Tom Nguyen."), Text("[HANGUP]"))
    caller.llm.push(Text("Actually no, bye."), Text("[HANGUP]"))
    code, out = run_eval(arguments, capsys)  # every run must pass by default
    assert code == 1
    assert out.splitlines()[0] == "FAIL  piano-booking (piano-removals): 1/2 runs passed (50%)"


def test_from_call_drafts_a_scenario_that_loads(
    env: Path,
    servers: tuple[FakeLLMServer, FakeLLMServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    assert main(["sessions", "import", str(REPO / "tests" / "sessions" / "quote.jsonl")]) == 0
    draft = tmp_path / "drafted.toml"

    assert (
        main(["eval", "--from-call", "CA6327245c3a45d3d9ea72b70fbb671926", "-o", str(draft)]) == 0
    )

    scenario = load_scenario(draft)
    assert scenario.agent == "piano-removals" and scenario.name == "from-bb671926"
    assert scenario.expect.outcomes == ["quoted"]
    [tool, *_] = scenario.expect.tools
    assert tool.name == "quote_piano_move"
    assert tool.arguments["pickup"] == "(?i)^Brunswick$"
    assert scenario.opening and scenario.facts[0] == scenario.opening


def test_a_drafted_scenario_matches_any_random_reference_as_replay_ignores_them(
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A booking in the recorded call names the quote its run made up (``Q333238``); the next
    run makes up another. The draft expects a reference of that shape, not that one (replay
    ignores them: relay.replay.compare.REFERENCES), and the rest of the words exactly."""
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    lines = (REPO / "tests" / "sessions" / "quote.jsonl").read_text(encoding="utf-8").splitlines()
    last = max(i for i, line in enumerate(lines) if orjson.loads(line).get("type") == "event")
    event = orjson.loads(lines[last])
    booking = {"quote_id": "Q333238", "date": "2026-03-24", "window": "morning",
               "confirmed": True, "name": "Tom Nguyen",
               "notes": "ref 482913 or 4 8 2 9 1 3"}  # fmt: skip
    made = [
        {**event, "seq": event["seq"] + 1, "kind": "tool_call", "data": {
            "id": "call_book_1", "name": "book_move", "arguments": orjson.dumps(booking).decode()}},
        {**event, "seq": event["seq"] + 2, "kind": "tool_result", "data": {
            "id": "call_book_1", "name": "book_move", "content": "Booked: reference 482913.",
            "data": {"booking": "482913"}, "elapsed_ms": 1.0}},
    ]  # fmt: skip
    lines[last + 1 : last + 1] = [orjson.dumps(e).decode() for e in made]
    recording = tmp_path / "booked.jsonl"
    recording.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["sessions", "import", str(recording)]) == 0
    draft = tmp_path / "drafted.toml"

    assert (
        main(["eval", "--from-call", "CA6327245c3a45d3d9ea72b70fbb671926", "-o", str(draft)]) == 0
    )

    scenario = load_scenario(draft)
    [arguments] = [t.arguments for t in scenario.expect.tools if t.name == "book_move"]
    assert arguments["name"] == "(?i)^Tom\\ Nguyen$"
    quote = arguments["quote_id"]
    assert re.search(quote, "Q104424") and re.search(quote, "q104424")
    assert not re.search(quote, "Q10442") and not re.search(quote, "Q1044245")
    notes = arguments["notes"]
    assert re.search(notes, "ref 913482 or 9 1 3 4 8 2")
    assert not re.search(notes, "ref 913482 or 9 1 3 4 8 2 7")
    assert not re.search(notes, "ref 913482 and 9 1 3 4 8 2")
