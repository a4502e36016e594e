"""A bad agent profile is refused with one even message: ``<file>: invalid agent profile:
<field>: <problem>``; language codes everywhere are BCP-47 or ``multi``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay.agents import AgentRegistry, load_profile
from relay.config import Settings
from relay.errors import ConfigError
from relay.tools import default_registry
from relay.web.app import preflight

HEAD = """
business_name = "Test Co"
system_prompt = "You answer the phone."
welcome_greeting = "Hello!"
{top}

[relay]
report_input_during_agent_speech = "none"
{relay}

{tables}
"""

BCP47 = "must be a BCP-47 language such as en-AU, or multi"


def write(directory: Path, name: str, *, top: str = "", relay: str = "", tables: str = "") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(HEAD.format(top=top, relay=relay, tables=tables), encoding="utf-8")
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    return str(caught.value)


# -- language codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["en_AU", "e", "english", "en-", ""])
def test_a_languages_code_that_is_not_bcp47_is_refused(tmp_path: Path, code: str) -> None:
    path = write(tmp_path, "tuner", tables=f'[[languages]]\ncode = "{code}"')

    assert refusal(path) == f"{path}: invalid agent profile: languages.0.code: {BCP47}"


def test_the_entry_with_the_bad_code_is_the_one_named(tmp_path: Path) -> None:
    tables = '[[languages]]\ncode = "en-AU"\n\n[[languages]]\ncode = "es_ES"'
    path = write(tmp_path, "tuner", tables=tables)

    assert refusal(path) == f"{path}: invalid agent profile: languages.1.code: {BCP47}"


def test_bcp47_and_multi_language_codes_are_accepted(tmp_path: Path) -> None:
    tables = "\n\n".join(
        f'[[languages]]\ncode = "{code}"' for code in ("en-AU", "multi", "es-419", "zh-Hant-TW")
    )
    agent = load_profile(write(tmp_path, "tuner", tables=tables))

    assert [option.code for option in agent.languages] == ["en-AU", "multi", "es-419", "zh-Hant-TW"]


@pytest.mark.parametrize("code", ["en_AU", "e"])
def test_a_failover_language_code_that_is_not_bcp47_is_refused(tmp_path: Path, code: str) -> None:
    tables = f'[failover]\n[[failover.languages]]\ncode = "{code}"\ntts_provider = "Google"'
    path = write(tmp_path, "tuner", tables=tables)

    assert refusal(path) == f"{path}: invalid agent profile: failover.languages.0.code: {BCP47}"


@pytest.mark.parametrize("code", ["en-AU", "multi"])
def test_a_failover_language_code_in_bcp47_or_multi_is_accepted(tmp_path: Path, code: str) -> None:
    tables = f'[failover]\n[[failover.languages]]\ncode = "{code}"\ntts_provider = "Google"'
    agent = load_profile(write(tmp_path, "tuner", tables=tables))

    assert agent.failover is not None
    assert agent.failover.language_attributes() == [{"code": code, "tts_provider": "Google"}]


@pytest.mark.parametrize("key", ["language", "tts_language", "transcription_language"])
def test_relay_language_codes_keep_their_message(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, "tuner", relay=f'{key} = "en_AU"')

    assert refusal(path) == f"{path}: invalid agent profile: relay: {key} {BCP47}"


# -- tools --------------------------------------------------------------------------------------


def test_an_unknown_tool_names_the_file_the_field_and_the_nearest_tool(tmp_path: Path) -> None:
    path = write(tmp_path, "tuner", top='tools = ["end_call", "take_mesage"]')
    known = default_registry().names()

    with pytest.raises(ConfigError) as caught:
        AgentRegistry.load(tmp_path).check_tools(known)

    assert str(caught.value) == (
        f"{path}: invalid agent profile: tools: unknown tool 'take_mesage' "
        f"(did you mean take_message?) (known: {', '.join(sorted(known))})"
    )


def test_the_service_refuses_an_unknown_tool_at_start_with_that_message(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = write(tmp_path, "tuner", top='tools = ["end_call", "take_mesage"]')
    settings = make_settings(
        RELAY_PROMPTS_DIR=str(tmp_path), RELAY_DEFAULT_AGENT="tuner", OPENAI_API_KEY="sk-test"
    )

    with pytest.raises(ConfigError) as caught:
        preflight(settings)

    assert str(caught.value).startswith(
        f"{path}: invalid agent profile: tools: unknown tool 'take_mesage' "
        "(did you mean take_message?) (known: "
    )


def test_every_unknown_tool_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "tuner", top='tools = ["take_mesage", "dance"]')
    agent = load_profile(path)

    with pytest.raises(ConfigError) as caught:
        agent.check_tools(["end_call", "take_message"])

    assert str(caught.value) == (
        f"{path}: invalid agent profile: tools: unknown tools 'take_mesage' "
        "(did you mean take_message?), 'dance' (known: end_call, take_message)"
    )


def test_known_tools_pass(tmp_path: Path) -> None:
    write(tmp_path, "tuner", top='tools = ["end_call", "take_message"]')

    AgentRegistry.load(tmp_path).check_tools(default_registry().names())


# -- the message of every other refusal: <file>: invalid agent profile: <field>: <problem> --------


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            {"relay": 'voice = "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-2_0.8_0.8"'},
            "relay.voice: 'UgBBYS2sOqTuMpoF3BR0-flash_v2_5-2_0.8_0.8': speed 2 is outside 0.7-1.2",
        ),
        (
            {"relay": 'language = "multi"\ntranscription_provider = "Google"'},
            'relay: "multi" needs transcription_provider "Deepgram"',
        ),
        (
            {"tables": '[[languages]]\ncode = "es-ES"\nvoice = "es-ES-Neural2-A"'},
            "languages es-ES: voice: 'es-ES-Neural2-A' does not start with an ElevenLabs voice id"
            " (see: relay voices list)",
        ),
        ({"top": 'colour = "blue"'}, "colour: Extra inputs are not permitted"),
        (
            {"tables": '[llm]\nread_timeout = "soon"'},
            "llm.read_timeout: Input should be a valid number, unable to parse string as a number",
        ),
        (
            {"top": 'numbers = ["0390001234"]'},
            "numbers: '0390001234' is not an E.164 number like +61390001234",
        ),
        (
            {"top": 'person_number = "12345"'},
            "person_number: '12345' is not an E.164 number like +61390001234",
        ),
        (
            {"tables": '[keypad.7]\naction = "dance"'},
            "keypad.7.action: Input should be 'transfer', 'say', 'prompt' or 'end'",
        ),
        (
            {"tables": '[keypad.5a]\naction = "say"'},
            "keypad: keypad key '5a' must be one of 0-9, * or #",
        ),
        (
            {"top": 'timezone = "Mars/Base"'},
            "timezone: 'Mars/Base' is not a time zone such as Australia/Melbourne",
        ),
        (
            {"relay": 'interruptible = "sometimes"'},
            "relay: interruptible must be one of none, dtmf, speech, any",
        ),
        (
            {"tables": '[[languages]]\ncode = "en-AU"\nspeed = 2'},
            "languages.0: unknown <Language> attributes: speed",
        ),
        (
            {"tables": '[failover]\n[[failover.languages]]\ncode = "en-AU"'},
            "failover: failover language 'en-AU' names no backup",
        ),
    ],
)
def test_every_refusal_reads_file_field_problem(
    tmp_path: Path, profile: dict[str, str], message: str
) -> None:
    path = write(tmp_path, "tuner", **profile)

    assert refusal(path) == f"{path}: invalid agent profile: {message}"


def test_several_problems_of_the_whole_profile_each_name_their_field(tmp_path: Path) -> None:
    relay = 'voice = "Mark"\nlanguage = "multi"\ntranscription_provider = "Google"'
    tables = '[[languages]]\ncode = "es-ES"\nvoice = "x"'
    path = write(tmp_path, "tuner", relay=relay, tables=tables)

    assert refusal(path) == (
        f"{path}: invalid agent profile: "
        "relay.voice: 'Mark' does not start with an ElevenLabs voice id (see: relay voices list); "
        'relay: "multi" needs transcription_provider "Deepgram"; '
        "languages es-ES: voice: 'x' does not start with an ElevenLabs voice id"
        " (see: relay voices list)"
    )
