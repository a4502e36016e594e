"""``relay sessions analyze`` after ``relay sessions purge``: a call whose recording retention
deleted keeps the outcomes, usage and cost worked out while it was whole (README, "Retention
and privacy"), and the command says so."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from relay.cli.main import main

REPO = Path(__file__).resolve().parents[2]
QUOTE = REPO / "tests" / "sessions" / "quote.jsonl"
CALL = "CA6327245c3a45d3d9ea72b70fbb671926"


@pytest.fixture
def env(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "error")
    assert main(["sessions", "import", str(QUOTE)]) == 0
    return tmp_path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().out


def test_analyze_keeps_the_stored_analysis_of_a_purged_call_and_says_so(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, first = run(["sessions", "analyze", "--since", "2026-03-01", "--no-model"], capsys)
    assert code == 0 and first.startswith(f"{CALL}  quoted  "), first
    code, before = run(["sessions", "show", CALL, "--json"], capsys)
    whole = orjson.loads(before)
    assert whole["cost"]["llm"] > 0

    code, purged = run(["sessions", "purge", "--older-than", "0"], capsys)
    assert code == 0 and "events: " in purged
    code, again = run(["sessions", "analyze", "--since", "2026-03-01", "--no-model"], capsys)

    assert code == 0, again
    kept, summary = again.splitlines()
    assert re.fullmatch(
        rf"{CALL}  quoted  {whole['cost']['total']:.4f} USD  kept: its recording was purged; "
        r"outcomes and cost as worked out on \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC",
        kept,
    ), kept
    assert summary == "Analysed 0 call(s) (outcomes and cost); kept 1 whose recording was purged."
    code, after = run(["sessions", "show", CALL, "--json"], capsys)
    record = orjson.loads(after)
    assert (record["outcomes"], record["usage"], record["cost"]) == (
        whole["outcomes"], whole["usage"], whole["cost"],
    )  # fmt: skip
    assert record["events"] == [] and record["turns"] == []
    code, text = run(["sessions", "show", CALL], capsys)
    assert "Outcomes: quoted" in text and "Usage gpt-4o-mini: 6 request(s)" in text
