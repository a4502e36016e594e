"""Which price table the commands use: ``RELAY_PRICES`` names a file that must exist; without
it and without ``prices.toml`` in the data directory, costs are unknown (every model listed as
unpriced), never silently zero."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from relay.cli.main import main

REPO = Path(__file__).resolve().parents[2]
QUOTE = REPO / "tests" / "sessions" / "quote.jsonl"
CALL = "CA6327245c3a45d3d9ea72b70fbb671926"


@pytest.fixture
def data(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory without a price table, and the quote call imported (not analysed)."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(path))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "error")
    assert main(["sessions", "import", str(QUOTE)]) == 0
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_relay_prices_file_that_does_not_exist_stops_the_commands_naming_it(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = tmp_path / "typo.toml"
    monkeypatch.setenv("RELAY_PRICES", str(typo))

    shown = run(["sessions", "show", CALL], capsys)
    analysed = run(["sessions", "analyze", "--since", "2026-03-01", "--no-model"], capsys)

    message = f"relay: configuration error: RELAY_PRICES={typo}: no such price table\n"
    assert shown == (2, "", message)
    assert analysed == (2, "", message)


def test_without_a_price_table_the_cost_is_unknown_and_the_models_unpriced(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["sessions", "show", CALL, "--json"], capsys)
    assert code == 0
    cost = orjson.loads(out)["cost"]
    assert cost["unpriced_models"] == ["gpt-4o-mini"] and cost["no_price_table"] is True

    code, text, _ = run(["sessions", "show", CALL], capsys)
    [line] = [line for line in text.splitlines() if line.startswith("Cost")]
    assert line == (
        "Cost: unknown, no price table (ConversationRelay 1 min, SMS 0 segment(s); "
        "unpriced: gpt-4o-mini)"
    )

    code, out, _ = run(["sessions", "analyze", "--since", "2026-03-01", "--no-model"], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"{CALL}  quoted  cost unknown (no price table)"
    code, out, _ = run(["sessions", "costs"], capsys)
    assert out.splitlines()[:2] == [
        "1 call(s), 0.0000 USD in all, 0.0000 USD a call.",
        "1 call(s) with a model the price table does not price, or with no price table: "
        "their cost is understated (sessions show names them).",
    ]


def test_a_model_missing_from_the_price_table_is_named_on_the_cost_line(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "prices.toml").write_text(
        '[models."gpt-4.1"]\nprompt = 2.0\ncompletion = 8.0\n'
        "[conversation_relay]\nper_minute = 0.07\n",
        encoding="utf-8",
    )

    code, text, _ = run(["sessions", "show", CALL], capsys)

    assert code == 0
    [line] = [line for line in text.splitlines() if line.startswith("Cost")]
    assert line.endswith("SMS 0 segment(s) 0.0000; unpriced: gpt-4o-mini)"), line
