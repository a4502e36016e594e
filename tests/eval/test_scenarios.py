"""Scenario files that cannot be right are configuration errors (exit 2) when ``relay eval``
loads them, naming the file and the field: a regex that does not compile, an agent, a tool or an
outcome that does not exist (a typo would otherwise start the app and fail the run, or make a
``not_tools`` check that can never fail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.agents import AgentRegistry
from relay.cli.main import main
from relay.errors import ConfigError
from relay.eval.scenarios import Known, load_scenario, load_scenarios
from relay.tools import default_registry

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "prompts" / "evals"
HEAD = 'agent = "piano-removals"\npersona = "x"\ngoal = "y"\nturn_limit = 1\n'
KNOWN = Known(
    agents={"piano-removals": ["quote_piano_move", "book_move", "transfer_to_person"],
            "car-service": ["book_appointment"]},
    tools=["quote_piano_move", "book_move", "book_appointment", "transfer_to_person", "end_call"],
)  # fmt: skip


def scenario(tmp_path: Path, text: str, name: str = "typo.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        ('says = ["(unclosed"]', "expect.says: Value error, bad regex '(unclosed': missing ), "
         "unterminated subpattern at position 0"),
        ('avoids = ["ok", "[a-"]', "expect.avoids: Value error, bad regex '[a-': unterminated "
         "character set at position 0"),
        ('tools = [{ name = "book_move", arguments = { date = "2026-(11" } }]',
         "expect.tools.0.arguments: Value error, bad regex '2026-(11' for date: missing ), "
         "unterminated subpattern at position 5"),
    ],
)  # fmt: skip
def test_a_bad_regex_is_a_configuration_error_naming_the_pattern(
    tmp_path: Path, expect: str, problem: str
) -> None:
    path = scenario(tmp_path, HEAD + "[expect]\n" + expect + "\n")
    with pytest.raises(ConfigError) as raised:
        load_scenario(path)
    assert str(raised.value) == f"{path}: invalid scenario: {problem}"


def test_names_that_do_not_exist_are_configuration_errors_with_the_close_ones(
    tmp_path: Path,
) -> None:
    path = scenario(
        tmp_path,
        HEAD.replace("piano-removals", "piano-removal")
        + '[expect]\ntools = [{ name = "quote_piano" }]\n'
        + 'not_tools = ["bok_move", "transfer-to-person", "book_move", "fly"]\n'
        + 'outcomes = ["quoted", "bookd", "won"]\n',
    )
    load_scenario(path)  # without the names known, the file is well formed

    with pytest.raises(ConfigError) as raised:
        load_scenario(path, known=KNOWN)

    assert str(raised.value) == (
        f"{path}: invalid scenario: "
        "agent: no agent named 'piano-removal' (did you mean 'piano-removals'?); "
        "expect.tools.0.name: no tool named 'quote_piano' (did you mean 'quote_piano_move'?); "
        "expect.not_tools.0: no tool named 'bok_move' (did you mean 'book_move'?); "
        "expect.not_tools.1: no tool named 'transfer-to-person' "
        "(did you mean 'transfer_to_person'?); "
        "expect.not_tools.3: no tool named 'fly' (known: book_appointment, book_move, end_call, "
        "quote_piano_move, transfer_to_person); "
        "expect.outcomes.1: no outcome named 'bookd' (did you mean 'booked'?); "
        "expect.outcomes.2: no outcome named 'won' (known: quoted, booked, rescheduled, "
        "cancelled, message-taken, transferred, sms-sent, e-mail-sent, answered-only, "
        "abandoned, llm-failure)"
    )


def test_a_tool_of_another_agent_is_a_name_that_exists(tmp_path: Path) -> None:
    """A tool relay has but the agent does not list is no typo: expected, the run fails (the
    agent lost a tool it needs); not expected, it trivially holds."""
    path = scenario(
        tmp_path,
        HEAD + '[expect]\ntools = [{ name = "end_call" }]\nnot_tools = ["book_appointment"]\n',
    )
    assert load_scenario(path, known=KNOWN).expect.not_tools == ["book_appointment"]


def test_the_shipped_scenarios_name_what_exists() -> None:
    agents = AgentRegistry.load(REPO / "prompts").agents.values()
    known = Known.of({a.name: a.tools for a in agents}, default_registry())
    assert known.arguments["quote_piano_move"]  # argument names are checked too
    assert len(load_scenarios([SHIPPED], known=known)) >= 6


def test_an_argument_the_tool_does_not_take_is_a_configuration_error(tmp_path: Path) -> None:
    """A pattern on an argument the tool never has is a check that can never pass (until
    8 December the run just failed, every time, with nothing to say why)."""
    agents = AgentRegistry.load(REPO / "prompts").agents.values()
    known = Known.of({a.name: a.tools for a in agents}, default_registry())
    path = scenario(
        tmp_path,
        HEAD + "[expect]\ntools = [\n"
        '  { name = "quote_piano_move", arguments = { piano_typ = "upright", stairs = "3" } },\n'
        '  { name = "end_call", arguments = { reason = "done" } },\n'
        '  { name = "book_move", arguments = { date = "2026-12" } },\n'
        "]\n",
    )
    load_scenario(path, known=KNOWN)  # names known, argument names not: the file is well formed

    with pytest.raises(ConfigError) as raised:
        load_scenario(path, known=known)

    takes = ", ".join(sorted(known.arguments["quote_piano_move"]))
    assert str(raised.value) == (
        f"{path}: invalid scenario: "
        "expect.tools.0.arguments.piano_typ: no argument of quote_piano_move named 'piano_typ' "
        "(did you mean 'piano_type'?); "
        f"expect.tools.0.arguments.stairs: no argument of quote_piano_move named 'stairs' (known: {takes})"
    )


@pytest.fixture
def env(eval_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Nothing listens here: a run that started would fail at once (exit 1), not hang.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    return eval_env


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        ('says = ["(unclosed"]',
         "expect.says: Value error, bad regex '(unclosed': missing ), unterminated subpattern "
         "at position 0"),
        ('not_tools = ["bok_move"]',
         "expect.not_tools.0: no tool named 'bok_move' (did you mean 'book_move'?)"),
        ('outcomes = ["bookd"]',
         "expect.outcomes.0: no outcome named 'bookd' (did you mean 'booked'?)"),
        ('tools = [{ name = "quote_piano" }]',
         "expect.tools.0.name: no tool named 'quote_piano' (did you mean 'quote_piano_move'?)"),
        ('tools = [{ name = "quote_piano_move", arguments = { piano_typ = "grand" } }]',
         "expect.tools.0.arguments.piano_typ: no argument of quote_piano_move named 'piano_typ' "
         "(did you mean 'piano_type'?)"),
    ],
)  # fmt: skip
def test_relay_eval_exits_2_on_a_malformed_scenario_before_any_run(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], expect: str, problem: str
) -> None:
    good = scenario(tmp_path, HEAD + "[expect]\n", name="good.toml")
    bad = scenario(tmp_path, HEAD + "[expect]\n" + expect + "\n")

    code = main(["eval", str(good), str(bad), "--caller-url", "http://127.0.0.1:9/v1"])

    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err == f"relay: configuration error: {bad}: invalid scenario: {problem}\n"
    assert captured.out == ""  # no run started


def test_relay_eval_names_the_agents_there_are(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = scenario(tmp_path, HEAD.replace("piano-removals", "piano-removal"))

    code = main(["eval", str(bad), "--caller-url", "http://127.0.0.1:9/v1"])

    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err == (
        f"relay: configuration error: {bad}: invalid scenario: "
        "agent: no agent named 'piano-removal' (did you mean 'piano-removals'?)\n"
    )


def test_a_bad_scenario_pattern_on_the_command_line_is_a_configuration_error(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until late 7 December ``--scenario '('`` was a traceback (exit 1, a failed run's code)."""
    good = scenario(tmp_path, HEAD + "[expect]\n", name="good.toml")

    code = main(["eval", str(good), "--scenario", "(", "--caller-url", "http://127.0.0.1:9/v1"])

    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err == (
        "relay: configuration error: --scenario: bad regex '(': missing ), unterminated "
        "subpattern at position 0\n"
    )
