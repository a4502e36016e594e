"""TwiML documents, built only through the twilio package (never by string formatting)."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, ConversationRelay, VoiceResponse

from relay.agents import AgentProfile


def connect(
    agent: AgentProfile,
    *,
    ws_url: str,
    action_url: str,
    parameters: Mapping[str, str] = {},
    welcome_greeting: str | None = None,
) -> str:
    """``<Connect action=…><ConversationRelay url=…>`` for ``agent``.

    ``welcome_greeting`` overrides the agent's greeting (a resumed call greets differently);
    pass ``""`` to play none.
    """
    response = VoiceResponse()
    conn: Connect = response.connect(action=action_url, method="POST")
    greeting = agent.welcome_greeting if welcome_greeting is None else welcome_greeting
    relay: ConversationRelay = conn.conversation_relay(
        url=ws_url, welcome_greeting=greeting or None, **agent.relay
    )
    for option in agent.languages:
        relay.language(
            code=option.code,
            tts_provider=option.tts_provider,
            voice=option.voice,
            transcription_provider=option.transcription_provider,
            speech_model=option.speech_model,
        )
    for name, value in {"agent": agent.name, **parameters}.items():
        relay.parameter(name=name, value=value)
    return str(response)


def dial(*, say: str | None, number: str, caller_id: str | None = None, timeout: int = 30) -> str:
    """A spoken line, then ``<Dial><Number>`` to a person."""
    response = VoiceResponse()
    if say:
        response.say(say)
    response.dial(caller_id=caller_id, timeout=timeout).number(number)
    return str(response)


def say_and_hang_up(text: str | None) -> str:
    response = VoiceResponse()
    if text:
        response.say(text)
    response.hangup()
    return str(response)


def empty() -> str:
    """``<Response/>``: nothing more to do (the call is over)."""
    return str(VoiceResponse())
