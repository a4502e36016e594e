"""TwiML: the voice webhook's <Connect><ConversationRelay> and the action handler's documents.

Documents are parsed as XML and compared by element and attribute, never as strings: the
twilio package orders attributes alphabetically, which is not part of the contract.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from relay.agents import AgentProfile, AgentRegistry
from relay.protocol import twiml
from relay.testing.simcall import sign

SHIPPED_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


def parse(document: str) -> ET.Element:
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def relay_element(root: ET.Element) -> tuple[ET.Element, ET.Element]:
    children = list(root)
    assert [c.tag for c in children] == ["Connect"]
    connect = children[0]
    relays = list(connect)
    assert [r.tag for r in relays] == ["ConversationRelay"]
    return connect, relays[0]


def check_shipped_agent_relay(
    connect: ET.Element, relay: ET.Element, *, ws_url: str, action: str
) -> None:
    """What the shipped piano agent's TwiML must say, whatever the host."""
    assert connect.attrib == {"action": action, "method": "POST"}
    attrs = relay.attrib
    assert attrs["url"] == ws_url
    assert attrs["url"].startswith("wss://") and attrs["url"].endswith("/ws")
    # Set explicitly, never left to Twilio's defaults (the default of the first changed in 2025).
    assert attrs["reportInputDuringAgentSpeech"] == "none"
    assert attrs["interruptible"] == "any"
    assert attrs["welcomeGreetingInterruptible"] == "any"
    assert attrs["dtmfDetection"] == "true"
    assert attrs["preemptible"] == "false"
    assert attrs["language"] == "en-AU"
    assert attrs["ttsProvider"] == "ElevenLabs"
    assert attrs["voice"] == "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8"
    assert attrs["transcriptionProvider"] == "Deepgram"
    assert attrs["speechModel"] == "nova-3-general"
    assert attrs["interruptSensitivity"] == "medium"
    assert attrs["elevenlabsTextNormalization"] == "on"
    assert attrs["events"] == "speaker-events"
    assert "Keystone" in attrs["hints"].split(",")
    assert attrs["welcomeGreeting"].startswith("Thanks for calling Keystone Piano Movers")
    # Python-style names must never leak into the document.
    assert not any("_" in name for name in attrs)

    languages = relay.findall("Language")
    assert [lang.attrib["code"] for lang in languages] == ["en-AU", "es-ES", "it-IT"]
    for lang in languages:
        assert lang.attrib == {
            "code": lang.attrib["code"],
            "ttsProvider": "ElevenLabs",
            "voice": "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8",
            "transcriptionProvider": "Deepgram",
            "speechModel": "nova-3-general",
        }
    parameters = {p.attrib["name"]: p.attrib["value"] for p in relay.findall("Parameter")}
    assert parameters == {"agent": "piano-removals"}
    assert [c.tag for c in relay] == ["Language"] * 3 + ["Parameter"]


# -- the shipped agent, loaded from the real prompts/ directory -------------------------------


def test_shipped_agent_twiml() -> None:
    agents = AgentRegistry.load(SHIPPED_PROMPTS)
    agent = agents.for_number("+61390001234")
    assert agent.name == "piano-removals"

    document = twiml.connect(
        ws_url="wss://voice.example.com/ws",
        action_url="https://voice.example.com/handoff",
        **agent.twiml_options(),
    )

    assert document.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    connect, relay = relay_element(parse(document))
    check_shipped_agent_relay(
        connect,
        relay,
        ws_url="wss://voice.example.com/ws",
        action="https://voice.example.com/handoff",
    )


# -- through the voice webhook ----------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module
async def test_voice_webhook_answers_with_connect_and_conversation_relay(relay: Any) -> None:
    host = relay.base_url.removeprefix("http://")
    response = await relay.post(
        "/twiml",
        {"CallSid": "CA1", "From": "+61412345678", "To": "+61390001234", "Direction": "inbound"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    connect, element = relay_element(parse(response.text))
    check_shipped_agent_relay(
        connect, element, ws_url=f"wss://{host}/ws", action=f"{relay.base_url}/handoff"
    )


async def test_voice_webhook_uses_the_public_url(start_relay: Any) -> None:
    async with start_relay(RELAY_PUBLIC_URL="https://voice.example.com/") as relay:
        response = await relay.post("/twiml", {"CallSid": "CA1", "To": "+61390001234"})

    assert response.status_code == 200
    connect, element = relay_element(parse(response.text))
    check_shipped_agent_relay(
        connect,
        element,
        ws_url="wss://voice.example.com/ws",
        action="https://voice.example.com/handoff",
    )


@pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module
async def test_voice_webhook_honours_forwarded_headers_without_a_public_url(relay: Any) -> None:
    form = {"CallSid": "CA1", "To": "+61390001234"}
    signature = sign(relay.settings.twilio_auth_token, "https://abc.ngrok.app/twiml", form)
    response = await relay.http.post(
        relay.base_url + "/twiml",
        data=form,
        headers={
            "X-Twilio-Signature": signature,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "abc.ngrok.app",
        },
    )

    assert response.status_code == 200
    connect, element = relay_element(parse(response.text))
    assert element.attrib["url"] == "wss://abc.ngrok.app/ws"
    assert connect.attrib["action"] == "https://abc.ngrok.app/handoff"


# -- the documents themselves ------------------------------------------------------------------


@pytest.fixture
def agent() -> AgentProfile:
    return AgentRegistry.load(SHIPPED_PROMPTS).default


def test_connect_with_parameters_and_another_greeting(agent: AgentProfile) -> None:
    document = twiml.connect(
        ws_url="wss://h/ws", action_url="https://h/handoff",
        **agent.twiml_options(
            parameters={"resumed": "1", "greeting": "Where were we?"},
            welcome_greeting="Where were we?",
        ),
    )  # fmt: skip

    _, element = relay_element(parse(document))
    assert element.attrib["welcomeGreeting"] == "Where were we?"
    parameters = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
    assert parameters == {"agent": "piano-removals", "resumed": "1", "greeting": "Where were we?"}


def test_connect_with_no_greeting(agent: AgentProfile) -> None:
    _, element = relay_element(
        parse(
            twiml.connect(
                ws_url="wss://h/ws",
                action_url="https://h/a",
                **agent.twiml_options(welcome_greeting=""),
            )
        )
    )

    assert "welcomeGreeting" not in element.attrib


def test_dial_a_person() -> None:
    root = parse(twiml.dial(say="Please hold.", number="+61390001299", caller_id="+61390001234"))

    assert [c.tag for c in root] == ["Say", "Dial"]
    assert root[0].text == "Please hold."
    dial = root[1]
    assert dial.attrib == {"callerId": "+61390001234", "timeout": "30"}
    assert [(n.tag, n.text) for n in dial] == [("Number", "+61390001299")]


def test_say_and_hang_up() -> None:
    root = parse(twiml.say_and_hang_up("Nobody is in."))
    assert [(c.tag, c.text) for c in root] == [("Say", "Nobody is in."), ("Hangup", None)]

    assert [c.tag for c in parse(twiml.say_and_hang_up(None))] == ["Hangup"]


def test_empty() -> None:
    root = parse(twiml.empty())

    assert list(root) == [] and not root.attrib and not (root.text or "").strip()


# -- every attribute of the twilio package, and <Failover> (issue 10) ---------------------------

PROFILE = """
business_name = "Test Co"
system_prompt = "You answer the phone."
welcome_greeting = "Hello!"

[[languages]]
code = "en-AU"
voice = "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8"
tts_provider = "ElevenLabs"
transcription_provider = "Deepgram"
speech_model = "nova-3-general"
hints = "Brunswick,Geelong"
asr_smart_format = true
tts_text_normalization = "on"
tts_language_text_normalization = true

[relay]
report_input_during_agent_speech = "none"
application_reconnect = true
include_in_prompt = "turn-state"
partial_prompt_on_hangup = true
eager_eot_threshold = 0.4
eot_threshold = 0.7
customer_name = "Keystone caller"
echo_prompt_filtering = true
turn_detection = false
ignore_backchannel = true
interrupt_sensitivity = "low"
speech_timeout = 1200
background_noise_reduction = true
deepgram_smart_format = false
asr_smart_format = true
tts_text_normalization = "auto"
tts_language_text_normalization = true
elevenlabs_language_text_normalization = false
events = "speaker-events tokens-played"
mid_call_config = true
readback_uninterruptible = true
{failover}
"""


def profile(tmp_path: Path, failover: str = "") -> AgentProfile:
    from relay.agents import load_profile

    path = tmp_path / "test-co.toml"
    path.write_text(PROFILE.format(failover=failover), encoding="utf-8")
    return load_profile(path)


def document_for(agent: AgentProfile) -> ET.Element:
    _, element = relay_element(
        parse(twiml.connect(ws_url="wss://h/ws", action_url="https://h/a", **agent.twiml_options()))
    )
    return element


def test_the_new_attributes_are_written_in_twilio_names(tmp_path: Path) -> None:
    element = document_for(profile(tmp_path))

    attrs = element.attrib
    assert attrs["applicationReconnect"] == "true"
    assert attrs["includeInPrompt"] == "turn-state"
    assert attrs["partialPromptOnHangup"] == "true"
    assert attrs["eagerEotThreshold"] == "0.4"
    assert attrs["eotThreshold"] == "0.7"
    assert attrs["customerName"] == "Keystone caller"
    assert attrs["echoPromptFiltering"] == "true"
    assert attrs["turnDetection"] == "false"
    assert attrs["ignoreBackchannel"] == "true"
    assert attrs["interruptSensitivity"] == "low"
    assert attrs["speechTimeout"] == "1200"
    assert attrs["backgroundNoiseReduction"] == "true"
    assert attrs["deepgramSmartFormat"] == "false"
    assert attrs["asrSmartFormat"] == "true"
    assert attrs["ttsTextNormalization"] == "auto"
    assert attrs["ttsLanguageTextNormalization"] == "true"
    assert attrs["elevenlabsLanguageTextNormalization"] == "false"
    assert attrs["events"] == "speaker-events tokens-played"  # no failover: no config-updated
    # relay's own switches are not TwiML.
    assert not any("_" in name for name in attrs)
    assert "midCallConfig" not in attrs and "readbackUninterruptible" not in attrs
    [language] = element.findall("Language")
    assert language.attrib == {
        "code": "en-AU",
        "voice": "UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8",
        "ttsProvider": "ElevenLabs",
        "transcriptionProvider": "Deepgram",
        "speechModel": "nova-3-general",
        "hints": "Brunswick,Geelong",
        "asrSmartFormat": "true",
        "ttsTextNormalization": "on",
        "ttsLanguageTextNormalization": "true",
    }
    assert element.find("Failover") is None


def test_default_failover_is_an_empty_element_and_asks_for_config_updated(tmp_path: Path) -> None:
    element = document_for(profile(tmp_path, "[failover]"))

    [failover] = element.findall("Failover")
    assert failover.attrib == {} and list(failover) == []
    assert element.attrib["events"].split() == ["speaker-events", "tokens-played", "config-updated"]
    assert [c.tag for c in element] == ["Language", "Failover", "Parameter"]


def test_failover_per_language_children(tmp_path: Path) -> None:
    element = document_for(
        profile(
            tmp_path,
            """
[failover]
[[failover.languages]]
code = "en-AU"
tts_provider = "Google"
voice = "en-AU-Neural2-A"
transcription_provider = "Google"
speech_model = "telephony"
[[failover.languages]]
code = "es-ES"
tts_provider = "Amazon"
""",
        )
    )

    [failover] = element.findall("Failover")
    assert failover.attrib == {}
    assert [c.attrib for c in failover] == [
        {
            "code": "en-AU",
            "ttsProvider": "Google",
            "voice": "en-AU-Neural2-A",
            "transcriptionProvider": "Google",
            "speechModel": "telephony",
        },
        {"code": "es-ES", "ttsProvider": "Amazon"},
    ]
    assert [c.tag for c in failover] == ["Language", "Language"]


def test_failover_as_attributes_of_the_element(tmp_path: Path) -> None:
    element = document_for(
        profile(
            tmp_path,
            '[failover]\ntts_provider = "Google"\nvoice = "en-AU-Neural2-A"\n'
            'transcription_provider = "Google"\nspeech_model = "telephony"',
        )
    )

    [failover] = element.findall("Failover")
    assert failover.attrib == {
        "ttsProvider": "Google",
        "voice": "en-AU-Neural2-A",
        "transcriptionProvider": "Google",
        "speechModel": "telephony",
    }


def test_failover_can_be_switched_off(tmp_path: Path) -> None:
    element = document_for(profile(tmp_path, "[failover]\nenabled = false"))

    assert element.find("Failover") is None
    assert "config-updated" not in element.attrib["events"]


def test_failover_with_config_updated_already_listed_is_not_doubled(tmp_path: Path) -> None:
    text = PROFILE.replace(
        'events = "speaker-events tokens-played"', 'events = "config-updated speaker-events"'
    )
    path = tmp_path / "test-co.toml"
    path.write_text(text.format(failover="[failover]"), encoding="utf-8")
    from relay.agents import load_profile

    element = document_for(load_profile(path))
    assert element.attrib["events"] == "config-updated speaker-events"


def test_twiml_takes_plain_values() -> None:
    document = twiml.connect(
        ws_url="wss://h/ws",
        action_url="https://h/a",
        relay={"application_reconnect": True, "speech_timeout": "auto"},
        languages=[{"code": "fr-FR", "voice": "v"}],
        failover={},
        parameters={"k": "v"},
    )
    _, element = relay_element(parse(document))
    assert element.attrib == {
        "url": "wss://h/ws",
        "applicationReconnect": "true",
        "speechTimeout": "auto",
    }
    assert [(c.tag, c.attrib) for c in element] == [
        ("Language", {"code": "fr-FR", "voice": "v"}),
        ("Failover", {}),
        ("Parameter", {"name": "k", "value": "v"}),
    ]


def test_the_protocol_package_imports_nothing_of_ours_but_errors() -> None:
    import ast

    package = Path(twiml.__file__).parent
    for module in package.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("relay"):
                    assert name == "relay.errors", f"{module.name} imports {name}"
