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
    with pytest.raises(ConfigError) as absolute:
        AgentRegistry.load(tmp_path / "nope")
    assert str(absolute.value) == f"RELAY_PROMPTS_DIR: {tmp_path / 'nope'} is not a directory"


def test_a_relative_prompts_directory_that_is_missing_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default is "prompts", relative: relay run from elsewhere than the repository.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as relative:
        AgentRegistry.load(Path("prompts"))
    assert str(relative.value) == (
        f"RELAY_PROMPTS_DIR: prompts is not a directory (relative to {tmp_path}: run relay from "
        "the folder that holds the agents' prompts/, or set RELAY_PROMPTS_DIR to it)"
    )


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


# -- every <ConversationRelay>/<Language> attribute of the twilio package (issue 10) ---------

SAMPLES = {
    "language": "en-AU", "tts_language": "multi", "transcription_language": "en-AU",
    "tts_provider": "ElevenLabs", "voice": "UgBBYS2sOqTuMpoF3BR0", "transcription_provider": "Deepgram",
    "speech_model": "nova-3-general", "welcome_greeting_interruptible": "speech",
    "interruptible": "any", "interrupt_sensitivity": "high", "hints": "Keystone",
    "elevenlabs_text_normalization": "off", "tts_text_normalization": "on",
    "intelligence_service": "GA123", "customer_name": "A caller", "debug": "debugging",
    "events": "speaker-events", "include_in_prompt": "prompt-segments", "speech_timeout": "auto",
    "eager_eot_threshold": 0.5, "eot_threshold": 0.8,
}  # fmt: skip


def test_every_attribute_of_the_twilio_package_is_accepted(tmp_path: Path) -> None:
    import inspect
    import re

    from twilio.twiml.voice_response import Connect, ConversationRelay

    from relay.agents import LANGUAGE_ATTRIBUTES, RELAY_ATTRIBUTES

    def snake(name: str) -> str:
        return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()

    package = {snake(n) for n in inspect.signature(Connect.conversation_relay).parameters}
    assert package - {"self", "url", "welcome_greeting", "kwargs"} <= RELAY_ATTRIBUTES
    language = set(inspect.signature(ConversationRelay.language).parameters)
    assert language - {"self", "code", "kwargs"} <= LANGUAGE_ATTRIBUTES
    for new in ("application_reconnect", "include_in_prompt", "partial_prompt_on_hangup",
                "eager_eot_threshold", "customer_name", "turn_detection", "echo_prompt_filtering"):  # fmt: skip
        assert new in RELAY_ATTRIBUTES

    lines = []
    for name in sorted(RELAY_ATTRIBUTES - {"report_input_during_agent_speech"}):
        value = SAMPLES.get(name, True)
        lines.append(f"{name} = {value!r}".replace("True", "true").replace("'", '"'))
    languages = "\n".join(
        [
            "[[languages]]",
            'code = "en-AU"',
            'hints = "Brunswick"',
            "asr_smart_format = true",
            'tts_text_normalization = "off"',
            "tts_language_text_normalization = true",
        ]
    )
    path = write(tmp_path, "all", extra=languages, relay="\n".join(lines))

    agent = load_profile(path)
    assert set(agent.relay) == RELAY_ATTRIBUTES
    assert agent.languages[0].attributes() == {
        "code": "en-AU",
        "hints": "Brunswick",
        "asr_smart_format": True,
        "tts_text_normalization": "off",
        "tts_language_text_normalization": True,
    }


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ("eager_eot_threshold = 0.95", "eager_eot_threshold must be a number from 0.3 to 0.9"),
        ('application_reconnect = "yes"', "application_reconnect must be true or false"),
        ('include_in_prompt = "everything"', "include_in_prompt unknown everything"),
        ('events = "speaker-events bogus"', "events unknown bogus"),
        ("speech_timeout = -1", "speech_timeout must be milliseconds"),
        ('interrupt_sensitivity = "extreme"', "interrupt_sensitivity must be one of low"),
        ('tts_provider = "Acme"', "tts_provider must be one of Google, Amazon, ElevenLabs"),
        ('language = "english please"', "language must be a BCP-47 language"),
        ("speech_timout = 500", "speech_timout (did you mean speech_timeout?)"),
        ('mid_call_config = "on"', "mid_call_config must be true or false"),
        ('url = "wss://elsewhere/ws"', "unknown ConversationRelay attributes: url"),
    ],
)
def test_invalid_relay_attributes_are_refused(tmp_path: Path, relay: str, message: str) -> None:
    path = write(tmp_path, "bad", relay=relay)

    with pytest.raises(ConfigError) as caught:
        load_profile(path)

    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_an_unknown_language_attribute_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "bad", extra='[[languages]]\ncode = "en-AU"\nspeed = 2')

    with pytest.raises(ConfigError, match="unknown <Language> attributes: speed"):
        load_profile(path)


def test_relay_switches_default_off_and_are_not_twiml(tmp_path: Path) -> None:
    plain = load_profile(write(tmp_path, "plain"))
    assert (plain.mid_call_config, plain.readback_uninterruptible) == (False, False)

    path = write(tmp_path, "on", relay="mid_call_config = true\nreadback_uninterruptible = true")
    agent = load_profile(path)
    assert (agent.mid_call_config, agent.readback_uninterruptible) == (True, True)
    assert "mid_call_config" not in agent.twiml_options()["relay"]
    assert "readback_uninterruptible" not in agent.relay_attributes()


def test_a_failover_language_must_name_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        MINIMAL.format(extra="", relay="")
        + '\n[failover]\n[[failover.languages]]\ncode = "en-AU"\n',
        encoding="utf-8",
    )

    with pytest.raises(ConfigError, match="names no backup"):
        load_profile(path)


def test_twiml_options_are_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "fo.toml"
    path.write_text(
        MINIMAL.format(extra="", relay='events = "speaker-events"')
        + '\n[failover]\ntts_provider = "Google"\n',
        encoding="utf-8",
    )
    agent = load_profile(path)

    options = agent.twiml_options(parameters={"resumed": "1"}, welcome_greeting="")
    assert options == {
        "relay": {
            "report_input_during_agent_speech": "none",
            "events": "speaker-events config-updated",
        },
        "languages": [],
        "failover": {"tts_provider": "Google"},
        "failover_languages": [],
        "parameters": {"agent": "fo", "resumed": "1"},
        "welcome_greeting": None,
    }
    assert agent.relay["events"] == "speaker-events"  # the profile itself is unchanged


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ('voice = "Mark"', "does not start with an ElevenLabs voice id"),
        ('voice = "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.5_0.8_0.8"', "speed 1.5 is outside 0.7-1.2"),
        ('voice = "UgBBYS2sOqTuMpoF3BR0-1.0_1.8_0.8"', "stability and similarity"),
        ('voice = "UgBBYS2sOqTuMpoF3BR0-1.0_0.8_0.8-flash_v2_5"', "the tuning comes last"),
        (
            'language = "multi"\ntranscription_provider = "Google"',
            '"multi" needs transcription_provider',
        ),
        ('language = "multi"\nspeech_model = "telephony"', '"multi" needs speech_model'),
        ('tts_language = "multi"\ntts_provider = "Google"', '"multi" needs tts_provider'),
    ],
)
def test_combinations_twilio_refuses_are_refused(tmp_path: Path, relay: str, message: str) -> None:
    path = write(tmp_path, "bad", relay=relay)

    with pytest.raises(ConfigError) as caught:
        load_profile(path)

    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(
    "relay",
    [
        'voice = "UgBBYS2sOqTuMpoF3BR0"',
        'voice = "UgBBYS2sOqTuMpoF3BR0-flash_v2_5"',
        'voice = "XrExE9yKIg1WjnnlVkGX-1.2_0.6_0.8"',
        'voice = "NYC9WEgkq1u4jiqBseQ9-turbo_v2_5-0.8_0.8_0.6"',
        'voice = "NYC9WEgkq1u4jiqBseQ9-some_new_model-1_1_1"',  # model tokens are free text
        'tts_provider = "Google"\nvoice = "en-AU-Neural2-A"',  # not ElevenLabs: not checked
        'language = "multi"\ntranscription_provider = "Deepgram"\nspeech_model = "nova-3-general"',
    ],
)
def test_valid_voices_and_multi(tmp_path: Path, relay: str) -> None:
    load_profile(write(tmp_path, "good", relay=relay))


def test_a_language_voice_is_checked_against_its_provider(tmp_path: Path) -> None:
    google = '[[languages]]\ncode = "es-ES"\ntts_provider = "Google"\nvoice = "es-ES-Neural2-A"'
    load_profile(write(tmp_path, "good", extra=google))

    bad = '[[languages]]\ncode = "es-ES"\nvoice = "es-ES-Neural2-A"'  # inherits ElevenLabs
    with pytest.raises(ConfigError, match="languages es-ES: voice"):
        load_profile(write(tmp_path, "bad", extra=bad))


def test_a_profile_survives_a_round_trip_through_model_dump() -> None:
    for agent in AgentRegistry.load(SHIPPED_PROMPTS).agents.values():
        again = AgentProfile.model_validate(agent.model_dump())
        assert again.twiml_options() == agent.twiml_options()


def test_values_written_as_twiml_would_are_accepted(tmp_path: Path) -> None:
    relay = "\n".join(
        [
            "interruptible = true",  # the legacy boolean: any
            "welcome_greeting_interruptible = false",  # none
            'speech_timeout = "1200"',
            'eager_eot_threshold = "0.5"',
            'dtmf_detection = "true"',
        ]
    )
    agent = load_profile(write(tmp_path, "twimlish", relay=relay))

    assert agent.relay["interruptible"] is True
    assert agent.relay["welcome_greeting_interruptible"] is False
    assert agent.relay["speech_timeout"] == 1200
    assert agent.relay["eager_eot_threshold"] == "0.5"
    assert agent.relay["dtmf_detection"] is True


def test_numbers_are_checked_with_libphonenumber_and_written_in_e164(tmp_path: Path) -> None:
    extra = 'numbers = ["+61 3 9000 1234", "+1 (555) 000-0000"]\nperson_number = "+61 3 9000 1299"'
    agent = load_profile(write(tmp_path, "spaced", extra=extra))
    assert agent.numbers == ["+61390001234", "+15550000000"]
    assert agent.person_number == "+61390001299"

    for bad in ('"+61 3 9000"', '"0390001234"', '"+999 1234 5678"'):
        with pytest.raises(ConfigError, match=r"is not an E\.164 number"):
            load_profile(write(tmp_path, "bad", extra=f"numbers = [{bad}]"))
