"""``relay sessions show --json``, ``analyze`` and ``costs``, and the analysis in exports, on a
recorded call imported into a scratch database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.cli.main import main
from relay.testing import FakeLLMServer, ScriptedLLM, ToolCall, ToolCalls

REPO = Path(__file__).resolve().parents[2]
QUOTE = REPO / "tests" / "sessions" / "quote.jsonl"
CALL = "CA6327245c3a45d3d9ea72b70fbb671926"


@pytest.fixture
def env(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "error")
    assert main(["sessions", "import", str(without_usage(QUOTE, tmp_path))]) == 0
    return tmp_path


def without_usage(recording: Path, folder: Path) -> Path:
    """The recording as relay wrote it before responses carried the model's token usage."""
    lines = []
    for line in recording.read_text(encoding="utf-8").splitlines():
        record = orjson.loads(line)
        if record.get("kind") == "llm_response":
            record["data"].pop("usage", None)
        lines.append(orjson.dumps(record).decode())
    old = folder / "old-quote.jsonl"
    old.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return old


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().out


def test_show_json_is_the_whole_record_with_outcomes_usage_and_cost(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(["sessions", "show", CALL, "--json"], capsys)

    assert code == 0
    record: dict[str, Any] = orjson.loads(out)
    assert record["call"]["call_sid"] == CALL
    assert record["outcomes"] == ["quoted"]
    assert record["fields"] == {} and record["summary"] is None
    # An old recording without usage: counted locally, flagged estimated.
    model = record["usage"]["models"]["gpt-4o-mini"]
    assert model["requests"] == 6 and model["estimated_requests"] == 6
    assert model["prompt_tokens"] > 0 and model["completion_tokens"] > 0
    assert record["cost"]["currency"] == "USD" and record["cost"]["total"] > 0
    assert {"sessions", "turns", "events"} <= set(record)
    assert any(e["kind"] == "tool_result" for e in record["events"])

    code, text = run(["sessions", "show", CALL], capsys)
    assert code == 0
    assert "Outcomes: quoted" in text
    assert "Usage gpt-4o-mini: 6 request(s)" in text and "(estimated)" in text

    # A recording made now carries the usage the model server reported: nothing estimated.
    code, from_file = run(["sessions", "show", str(QUOTE), "--json"], capsys)
    assert code == 0
    fresh = orjson.loads(from_file)
    assert fresh["outcomes"] == ["quoted"]
    reported = [e["data"]["usage"] for e in fresh["events"] if e["kind"] == "llm_response"]
    assert len(reported) == 6 and all(u and not u["estimated"] for u in reported)
    model = fresh["usage"]["models"]["gpt-4o-mini"]
    assert model["requests"] == 6 and model["estimated_requests"] == 0
    assert model["prompt_tokens"] == sum(u["prompt_tokens"] for u in reported)
    assert model["completion_tokens"] == sum(u["completion_tokens"] for u in reported)


def test_analyze_reruns_the_model_pass_over_old_calls_and_costs_sum_them(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("record_call_analysis", {
                "summary": "Quote for an upright to Geelong.", "reason": "quote",
                "sentiment": "positive"})])
        ]
    )  # fmt: skip
    with FakeLLMServer(llm) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("RELAY_ANALYSIS", "true")
        code, out = run(["sessions", "analyze", "--since", "2026-03-01"], capsys)

    assert code == 0, out
    assert out.splitlines()[-1] == "Analysed 1 call(s) with the model pass."
    assert out.startswith(f"{CALL}  quoted  ")
    [request] = llm.requests
    assert "Outcomes recorded: quoted." in request["messages"][1]["content"]

    code, out = run(["sessions", "show", CALL, "--json"], capsys)
    record = orjson.loads(out)
    assert record["summary"] == "Quote for an upright to Geelong."
    assert record["fields"] == {
        "summary": "Quote for an upright to Geelong.", "reason": "quote", "sentiment": "positive",
    }  # fmt: skip

    code, out = run(["sessions", "costs", "--json"], capsys)
    report = orjson.loads(out)
    assert report["calls"] == 1 and report["per_booking"] is None
    assert report["per_outcome"]["quoted"]["per_call"] == report["total"] == report["per_call"]
    assert report["agents"]["piano-removals"]["usage"]["models"]["gpt-4o-mini"]["requests"] == 6

    output = env / "out.jsonl"
    assert main(["sessions", "export", CALL, "-o", str(output)]) == 0
    header = orjson.loads(output.read_bytes().splitlines()[0])
    assert header["analysis"]["outcomes"] == ["quoted"]
    assert header["analysis"]["summary"] == "Quote for an upright to Geelong."
    assert main(["sessions", "export", CALL, "--redact", "-o", str(output)]) == 0
    redacted = orjson.loads(output.read_bytes().splitlines()[0])["analysis"]
    assert redacted["summary"] is None and redacted["fields"] == {}


def test_show_a_recording_file_with_its_outcomes_usage_and_cost(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RELAY_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "error")

    code, out = run(["sessions", "show", str(QUOTE), "--json"], capsys)
    assert code == 0
    record = orjson.loads(out)
    assert record["call"]["call_sid"] == CALL and record["outcomes"] == ["quoted"]
    assert record["usage"]["models"]["gpt-4o-mini"]["requests"] == 6
    assert record["cost"]["minutes"] == 1 and record["cost"]["conversation_relay"] == 0.07

    code, text = run(["sessions", "show", str(QUOTE)], capsys)
    assert code == 0
    assert "Outcomes: quoted" in text
    assert re.search(r"Cost: 0\.07\d+ USD \(model 0\.0\d+, ConversationRelay 1 min 0\.0700", text)
