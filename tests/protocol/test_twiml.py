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
from relay.cli.call import sign
from relay.protocol import twiml

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
        agent, ws_url="wss://voice.example.com/ws", action_url="https://voice.example.com/handoff"
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
        agent, ws_url="wss://h/ws", action_url="https://h/handoff",
        parameters={"resumed": "1", "greeting": "Where were we?"}, welcome_greeting="Where were we?",
    )  # fmt: skip

    _, element = relay_element(parse(document))
    assert element.attrib["welcomeGreeting"] == "Where were we?"
    parameters = {p.attrib["name"]: p.attrib["value"] for p in element.findall("Parameter")}
    assert parameters == {"agent": "piano-removals", "resumed": "1", "greeting": "Where were we?"}


def test_connect_with_no_greeting(agent: AgentProfile) -> None:
    _, element = relay_element(
        parse(
            twiml.connect(agent, ws_url="wss://h/ws", action_url="https://h/a", welcome_greeting="")
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
