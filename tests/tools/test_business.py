"""The business tool set and ``load_services``: what the model is shown, and start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.agents import AgentProfile, AgentRegistry
from relay.errors import ConfigError
from relay.tools import business
from relay.tools.business import load_services

REPO = Path(__file__).resolve().parents[2]


def test_tool_names() -> None:
    assert [t.name for t in business.TOOLS] == [
        "quote_piano_move", "find_move_dates", "book_move", "send_quote_sms",
        "find_available_slots", "book_appointment", "reschedule_appointment", "cancel_appointment",
        "appointment_status", "lookup_vehicle", "take_message", "search_knowledge",
        "send_quote_email",
    ]  # fmt: skip
    side_effects = {t.name for t in business.TOOLS if t.side_effect}
    assert side_effects == {
        "book_move", "send_quote_sms", "book_appointment", "reschedule_appointment",
        "cancel_appointment", "take_message", "send_quote_email",
    }  # fmt: skip


@pytest.mark.parametrize("tool", business.TOOLS, ids=lambda t: t.name)
def test_every_argument_is_described_for_the_model(tool: business.Tool) -> None:
    properties = tool.schema.get("properties", {})
    assert tool.description and "Args:" not in tool.description
    for name, prop in properties.items():
        assert prop.get("description"), f"{tool.name}.{name} has no description"


def _agent(tmp_path: Path, **fields: object) -> AgentProfile:
    base = AgentRegistry.load(REPO / "prompts").get("car-service")
    return base.model_copy(update=fields)


def test_load_services_reads_each_agents_files() -> None:
    agents = AgentRegistry.load(REPO / "prompts")
    car = load_services(agents.get("car-service"), REPO / "data")
    assert car["bookings_agent"] == "car-service" and len(car["catalogue"]) == 11
    assert load_services(agents.get("reminders"), REPO / "data")["bookings_agent"] == "car-service"
    piano = load_services(agents.get("piano-removals"), REPO / "data")
    assert set(piano) == {"bookings_agent", "pricing", "places", "calendar"}


def test_a_missing_file_names_the_agent_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"agent 'car-service', \[data\] catalogue: .*car-service/services.toml"
    ):
        load_services(_agent(tmp_path), tmp_path)


def test_a_missing_file_under_a_relative_data_dir_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another folder, the default ``data`` is looked for there: the error says so
    and names RELAY_DATA_DIR, as a missing prompts folder's does."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        load_services(_agent(tmp_path), Path("data"))

    assert str(refused.value).endswith(
        f"(relative to {tmp_path}: run relay from the folder that holds the agents' data/, "
        "or set RELAY_DATA_DIR to it)"
    )
    assert "data/car-service/services.toml" in str(refused.value)


def test_a_broken_file_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "calendar.toml").write_text('timezone = "Mars/Olympus"\ncapacity = 0\n')
    agent = _agent(tmp_path, data={"calendar": "calendar.toml"}, tools=["end_call"])
    with pytest.raises(
        ConfigError, match=r"(?s)\[data\] calendar: .*/calendar.toml has 3 problems.*capacity"
    ):
        load_services(agent, tmp_path)


def test_unknown_data_names_and_missing_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown data name"):
        load_services(_agent(tmp_path, data={"prices": "x.toml"}), REPO / "data")
    with pytest.raises(ConfigError, match=r"tool find_available_slots needs \[data\] catalogue"):
        load_services(
            _agent(tmp_path, data={"calendar": "car-service/calendar.toml"}), REPO / "data"
        )
    # book_move prices a quote again for its day when booking it.
    with pytest.raises(ConfigError, match=r"tool book_move needs \[data\] pricing"):
        load_services(_agent(tmp_path, tools=["book_move"]), REPO / "data")
    car_data_and_prices = {
        "calendar": "car-service/calendar.toml",
        "catalogue": "car-service/services.toml",
        "pricing": "piano-removals/pricing.toml",
    }
    with pytest.raises(
        ConfigError, match="tool book_move needs a calendar with \\[\\[window\\]\\] entries"
    ):
        load_services(
            _agent(tmp_path, tools=["book_move"], data=car_data_and_prices), REPO / "data"
        )
