"""Agent profiles: loading, validation with useful messages, and picking the agent for a call."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.agents import AgentProfile, AgentRegistry, load_profile, normalise_number
from relay.errors import AgentNotFound, ConfigError
from relay.tools import default_registry

SHIPPED_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"

MINIMAL = """
business_name = "Test Co"
system_prompt = "You answer the phone."
welcome_greeting = "Hello!"
{extra}

[relay]
report_input_during_agent_speech = "none"
{relay}
"""


def write(directory: Path, name: str, *, extra: str = "", relay: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(MINIMAL.format(extra=extra, relay=relay), encoding="utf-8")
    return path


# -- the shipped profile ----------------------------------------------------------------------


def test_the_shipped_agent_loads() -> None:
    agents = AgentRegistry.load(SHIPPED_PROMPTS)

    agent = agents.default
    assert agent.name == "piano-removals"
    assert agent.numbers == ["+61390001234"]
    assert agent.person_number == "+61390001299"
    assert agent.language == "en-AU"
    assert [lang.code for lang in agent.languages] == ["en-AU", "es-ES", "it-IT"]
    assert agent.keypad["0"].action == "transfer"
    assert agent.relay["report_input_during_agent_speech"] == "none"
    assert agent.relay["dtmf_detection"] is True
    assert {"transfer_to_person", "end_call", "switch_language"} <= set(agent.tools)


def test_the_call_control_tools_of_the_shipped_agent_exist() -> None:
    agent = AgentRegistry.load(SHIPPED_PROMPTS).default
    call_control = [
        t for t in agent.tools if t in ("transfer_to_person", "end_call", "switch_language")
    ]

    assert set(default_registry().select(call_control, agent=agent.name)) == set(call_control)


def test_the_test_copy_keeps_only_call_control_tools(prompts_dir: Path) -> None:
    agent = AgentRegistry.load(prompts_dir).default

    assert agent.tools == [
        "transfer_to_person",
        "end_call",
        "switch_language",
        "send_digits",
        "collect_digits",
    ]
    assert set(default_registry().select(agent.tools, agent=agent.name)) == set(agent.tools)
    shipped = AgentRegistry.load(SHIPPED_PROMPTS).default
    assert agent.data == {}
    assert agent.model_dump(exclude={"tools", "data"}) == shipped.model_dump(
        exclude={"tools", "data"}
    )


# -- validation -------------------------------------------------------------------------------


def test_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, "dentist"))

    assert profile.name == "dentist"
    assert profile.tools == []
    assert profile.language == "en-US"


@pytest.mark.parametrize(
    ("extra", "relay", "message"),
    [
        ('numbers = ["0390001234"]', "", "E.164"),
        ('person_number = "12345"', "", "E.164"),
        ("", 'speak_slowly = "yes"', "unknown ConversationRelay attributes: speak_slowly"),
        ("", 'interruptible = "sometimes"', "interruptible must be one of"),
        ("temperature = 3.5", "", "temperature"),
        ("colour = 'blue'", "", "colour"),
        ('[keypad.5a]\naction = "say"', "", "keypad key"),
        ('[keypad.7]\naction = "dance"', "", "keypad.7.action"),
    ],
)
def test_invalid_profiles_name_the_file_and_field(
    tmp_path: Path, extra: str, relay: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    # Tables must follow top-level keys, so keypad entries go after the [relay] table.
    if extra.startswith("["):
        path.write_text(
            MINIMAL.format(extra="", relay=relay) + "\n" + extra + "\n", encoding="utf-8"
        )
    else:
        write(tmp_path, "bad", extra=extra, relay=relay)

    with pytest.raises(ConfigError) as caught:
        load_profile(path)

    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_report_input_during_agent_speech_must_be_explicit(tmp_path: Path) -> None:
    path = tmp_path / "quiet.toml"
    path.write_text(
        'business_name = "X"\nsystem_prompt = "p"\nwelcome_greeting = "hi"\n[relay]\ninterruptible = "any"\n',
        encoding="utf-8",
    )

    with pytest.raises(
        ConfigError, match="report_input_during_agent_speech must be set explicitly"
    ):
        load_profile(path)


def test_a_profile_without_a_relay_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "quiet.toml"
    path.write_text(
        'business_name = "X"\nsystem_prompt = "p"\nwelcome_greeting = "hi"\n', encoding="utf-8"
    )

    with pytest.raises(
        ConfigError, match="report_input_during_agent_speech must be set explicitly"
    ):
        load_profile(path)


def test_unreadable_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("business_name = \n", encoding="utf-8")

    with pytest.raises(ConfigError, match="cannot read agent profile"):
        load_profile(path)


# -- the registry -----------------------------------------------------------------------------


def test_registry_finds_the_agent_by_number_and_falls_back_to_the_default(tmp_path: Path) -> None:
    write(tmp_path, "alpha", extra='numbers = ["+61390000001"]')
    write(tmp_path, "beta", extra='numbers = ["+61390000002"]\ndefault = true')

    agents = AgentRegistry.load(tmp_path)

    assert agents.default_name == "beta"
    assert agents.for_number("+61390000001").name == "alpha"
    assert agents.for_number("+61 3 9000 0001").name == "alpha"
    assert agents.for_number("(+61) 3-9000-0001").name == "alpha"
    assert agents.for_number("+15550000000").name == "beta"
    assert agents.for_number(None).name == "beta"


def test_registry_resolve_prefers_the_agent_parameter(tmp_path: Path) -> None:
    write(tmp_path, "alpha", extra='numbers = ["+61390000001"]')
    write(tmp_path, "beta")
    agents = AgentRegistry.load(tmp_path)

    assert agents.resolve({"agent": "beta"}, "+61390000001").name == "beta"
    assert agents.resolve({"agent": "nobody"}, "+61390000001").name == "alpha"
    assert agents.resolve({}, "+61390000001").name == "alpha"


def test_default_is_the_first_by_name_unless_flagged_or_chosen(tmp_path: Path) -> None:
    write(tmp_path, "zeta")
    write(tmp_path, "alpha")

    assert AgentRegistry.load(tmp_path).default_name == "alpha"
    assert AgentRegistry.load(tmp_path, default="zeta").default_name == "zeta"
    with pytest.raises(ConfigError, match="RELAY_DEFAULT_AGENT: no agent named 'omega'"):
        AgentRegistry.load(tmp_path, default="omega")


def test_registry_get(tmp_path: Path) -> None:
    write(tmp_path, "alpha")
    agents = AgentRegistry.load(tmp_path)

    assert agents.get("alpha").name == "alpha"
    with pytest.raises(AgentNotFound):
        agents.get("beta")


def test_a_number_claimed_twice_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", extra='numbers = ["+61390000001"]')
    write(tmp_path, "beta", extra='numbers = ["+61390000001"]')

    with pytest.raises(ConfigError, match=r"\+61390000001 is claimed by both"):
        AgentRegistry.load(tmp_path)


def test_two_defaults_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "alpha", extra="default = true")
    write(tmp_path, "beta", extra="default = true")

    with pytest.raises(ConfigError, match="several agents say default = true"):
        AgentRegistry.load(tmp_path)


def test_empty_or_missing_prompts_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no agent profiles"):
        AgentRegistry.load(tmp_path)
    with pytest.raises(ConfigError, match="is not a directory"):
        AgentRegistry.load(tmp_path / "nope")


def test_speaks_matches_exactly_then_by_primary_subtag() -> None:
    agent = AgentRegistry.load(SHIPPED_PROMPTS).default

    assert agent.speaks("es-ES") is not None and agent.speaks("es-ES").code == "es-ES"  # type: ignore[union-attr]
    assert agent.speaks("es-MX").code == "es-ES"  # type: ignore[union-attr]
    assert agent.speaks("it").code == "it-IT"  # type: ignore[union-attr]
    assert agent.speaks("fr-FR") is None


def test_normalise_number() -> None:
    assert normalise_number("+61 (3) 9000-1234") == "+61390001234"
    assert normalise_number("+61.3.9000.1234") == "+61390001234"


def test_profile_model_forbids_unknown_fields() -> None:
    with pytest.raises(ValueError, match="colour"):
        AgentProfile.model_validate(
            {"name": "x", "business_name": "X", "system_prompt": "p", "welcome_greeting": "hi",
             "relay": {"report_input_during_agent_speech": "none"}, "colour": "blue"}
        )  # fmt: skip


def test_an_unknown_time_zone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lost.toml"
    path.write_text(
        'business_name = "X"\nsystem_prompt = "p"\nwelcome_greeting = "hi"\ntimezone = "Mars/Olympus"\n'
        '[relay]\nreport_input_during_agent_speech = "none"\n',
        encoding="utf-8",
    )

    with pytest.raises(ConfigError, match=r"timezone.*not a time zone"):
        load_profile(path)
