"""Typed ConversationRelay frames (see shared/docs/conversationrelay.md, sections 2 and 3).

Inbound models ignore unknown fields, because Twilio adds fields over time; outbound models
forbid them, because Twilio answers a frame it cannot validate with error 64107 and closes the
socket after ten in a row. Every outbound frame is validated when it is built.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from relay.errors import ProtocolError

#: Frames larger than this are refused before parsing. Twilio's frames are a few hundred bytes;
#: a setup frame with many custom parameters stays well under 16 KiB.
MAX_FRAME_BYTES = 64 * 1024


class _Inbound(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Setup(_Inbound):
    """The first frame of every session: who is calling whom."""

    type: Literal["setup"] = "setup"
    session_id: str
    call_sid: str
    account_sid: str = ""
    parent_call_sid: str = ""
    from_: str = Field(default="", alias="from")
    to: str = ""
    forwarded_from: str = ""
    call_type: str = ""
    caller_name: str = ""
    direction: str = ""
    call_status: str = ""
    custom_parameters: dict[str, str] = Field(default_factory=dict)


class Prompt(_Inbound):
    """What the caller said. ``last=False`` marks an interim (partial) transcript."""

    type: Literal["prompt"] = "prompt"
    voice_prompt: str
    lang: str = ""
    last: bool = True


class Dtmf(_Inbound):
    """One keypress."""

    type: Literal["dtmf"] = "dtmf"
    digit: Annotated[str, Field(pattern=r"^[0-9*#A-Da-d]$")]


class Interrupt(_Inbound):
    """The caller barged in; ``utterance_until_interrupt`` is what they actually heard."""

    type: Literal["interrupt"] = "interrupt"
    utterance_until_interrupt: str = ""
    # Documented as an integer; some gateways send strings or decimals.
    duration_until_interrupt_ms: float = 0.0


class Error(_Inbound):
    """Twilio reports a problem (for example 64107, a frame of ours it could not validate)."""

    type: Literal["error"] = "error"
    description: str = ""


class Info(_Inbound):
    """Optional telemetry (speaker events, tokens played, round-trip delay)."""

    type: Literal["info"] = "info"
    name: str = ""
    value: str = ""
    ts: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _stringify_value(cls, data: Any) -> Any:
        if isinstance(data, dict) and "value" in data and not isinstance(data["value"], str):
            data = {**data, "value": orjson.dumps(data["value"]).decode()}
        return data


class Unknown(_Inbound):
    """A frame whose ``type`` we do not know. Logged and ignored."""

    type: str
    raw: dict[str, Any] = Field(default_factory=dict)


InboundFrame = Setup | Prompt | Dtmf | Interrupt | Error | Info | Unknown
_KNOWN_INBOUND = frozenset({"setup", "prompt", "dtmf", "interrupt", "error", "info"})
_inbound_adapter: TypeAdapter[Setup | Prompt | Dtmf | Interrupt | Error | Info] = TypeAdapter(
    Annotated[Setup | Prompt | Dtmf | Interrupt | Error | Info, Field(discriminator="type")]
)


def parse_inbound(raw: str | bytes) -> InboundFrame:
    """Parse one frame from Twilio.

    Raises :class:`ProtocolError` for anything that is not a JSON object with a string ``type``,
    for a known type with missing or mistyped fields, and for frames over ``MAX_FRAME_BYTES``.
    A well-formed frame of an unknown type comes back as :class:`Unknown`.
    """
    size = len(raw)
    if isinstance(raw, str) and size * 4 > MAX_FRAME_BYTES:  # a character is at most 4 UTF-8 bytes
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}", raw=raw[:200])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}", raw=raw) from exc
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object", raw=raw)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no string 'type'", raw=raw)
    if kind not in _KNOWN_INBOUND:
        return Unknown(type=kind, raw=data)
    try:
        return _inbound_adapter.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or kind}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProtocolError(f"invalid {kind} frame: {problems}", raw=raw) from exc


class _Outbound(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )

    def to_json(self) -> str:
        """The frame as Twilio expects it: camelCase keys, unset optional fields left out."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


class Text(_Outbound):
    """Words to speak. Tokens are sent exactly as the model produced them, never trimmed."""

    type: Literal["text"] = "text"
    token: str
    last: bool = False
    lang: str | None = None
    interruptible: bool | None = None
    preemptible: bool | None = None


class Play(_Outbound):
    """Play an audio file from a public URL."""

    type: Literal["play"] = "play"
    source: Annotated[str, Field(pattern=r"^https?://")]
    loop: Annotated[int, Field(ge=0, le=1000)] = 1
    preemptible: bool | None = None
    interruptible: bool | None = None


class SendDigits(_Outbound):
    """Send DTMF tones into the call (``w`` is a half-second pause)."""

    type: Literal["sendDigits"] = "sendDigits"
    digits: Annotated[str, Field(pattern=r"^[0-9w#*]+$", max_length=64)]


class Language(_Outbound):
    """Switch the speech-to-text and/or text-to-speech language."""

    type: Literal["language"] = "language"
    tts_language: str | None = None
    transcription_language: str | None = None

    @model_validator(mode="after")
    def _one_language(self) -> Language:
        if self.tts_language is None and self.transcription_language is None:
            raise ValueError("a language frame needs ttsLanguage or transcriptionLanguage")
        return self


class End(_Outbound):
    """End the session; ``handoff_data`` (a string) reaches the Connect action URL."""

    type: Literal["end"] = "end"
    handoff_data: str | None = None


OutboundFrame = Text | Play | SendDigits | Language | End


def outbound(frame: OutboundFrame) -> str:
    """Serialise a validated outbound frame."""
    return frame.to_json()
