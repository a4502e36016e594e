"""TwiML documents, built only through the twilio package (never by string formatting).

Nothing here knows agent profiles: :func:`connect` takes plain values (attribute names in
snake_case, as the twilio package's keywords), which ``AgentProfile.twiml_options()`` produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twilio.twiml.voice_response import Connect, ConversationRelay, VoiceResponse

Scalar = str | bool | int | float


def connect(
    *,
    ws_url: str,
    action_url: str,
    relay: Mapping[str, Scalar] = {},
    languages: Sequence[Mapping[str, Scalar]] = (),
    failover: Mapping[str, Scalar] | None = None,
    failover_languages: Sequence[Mapping[str, Scalar]] = (),
    parameters: Mapping[str, str] = {},
    welcome_greeting: str | None = None,
) -> str:
    """``<Connect action=…><ConversationRelay url=…>`` with ``relay``'s attributes.

    ``languages`` become ``<Language>`` children (each mapping has ``code``); ``failover``
    (``None``: no failover) becomes a ``<Failover>`` child carrying its attributes, with
    ``failover_languages`` as its ``<Language>`` children (``<Failover>``'s shape is
    unconfirmed: notes, section 0.5; twilio 9.13 has no class for it, so it is a generic
    node); ``parameters`` become ``<Parameter>`` children. snake_case names are written in
    Twilio's lowerCamel by the twilio package; ``None`` values are left out.
    """
    response = VoiceResponse()
    conn: Connect = response.connect(action=action_url, method="POST")
    element: ConversationRelay = conn.conversation_relay(
        url=ws_url, welcome_greeting=welcome_greeting or None, **relay
    )
    for attributes in languages:
        element.language(**attributes)
    if failover is not None:
        node = element.add_child("Failover", **failover)
        for attributes in failover_languages:
            node.add_child("Language", **attributes)
    for name, value in parameters.items():
        element.parameter(name=name, value=value)
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
