"""Typed ConversationRelay frames (see shared/docs/conversationrelay.md, sections 2 and 3).

Inbound models ignore unknown fields, because Twilio adds fields over time, and read a ``null``
as a field left out (its default: ``"lang": null`` is no language, not a broken prompt); what
a frame cannot do without (a prompt's text, a key's digit, the setup's ids) stays required, and a
value of the wrong kind (a number or an object for text) is still refused. Outbound models
forbid unknown fields, because Twilio answers a frame it cannot validate with error 64107 and
closes the socket after ten in a row. Every outbound frame is validated when it is built.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from relay.errors import ProtocolError

#: Frames larger than this are refused before parsing (logged, recorded in part and ignored; the
#: call goes on). Twilio's frames are a few hundred bytes; a setup frame with many custom
#: parameters stays well under 16 KiB. The socket itself takes frames up to
#: ``RELAY_WS_MAX_FRAME_BYTES`` (4 MiB, relay.web.socket) and closes beyond that.
MAX_FRAME_BYTES = 64 * 1024
#: JSON nested deeper than this is refused (Twilio's deepest frame, setup, has two levels).
MAX_NESTING = 32
#: How much of a refused frame is kept in the recording.
RECORD_CAP = 8 * 1024


class _Inbound(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )
    #: Required text fields (wire names) whose ``null`` reads as empty text rather than missing.
    _null_is_empty: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _null_is_left_out(cls, data: Any) -> Any:
        """A ``null`` field is a field left out: its default applies (and a required one is
        missing), except the text fields of ``_null_is_empty``, which read as ``""``."""
        if isinstance(data, dict) and None in data.values():
            empty = cls._null_is_empty
            data = {
                key: "" if value is None else value
                for key, value in data.items()
                if value is not None or key in empty
            }
        return data


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
    # a null transcript is an empty one (the session notes an empty final prompt and waits)
    _null_is_empty: ClassVar[frozenset[str]] = frozenset({"voicePrompt", "voice_prompt"})


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
    # Milliseconds; documented as an integer, sent with a fraction by some gateways.
    ts: int | float | None = None

    @model_validator(mode="before")
    @classmethod
    def _stringify_value(cls, data: Any) -> Any:
        value = data.get("value") if isinstance(data, dict) else None
        if value is not None and not isinstance(value, str):
            data = {**data, "value": orjson.dumps(data["value"]).decode()}
        return data


#: The name of the event Twilio sends after a provider failover (and maybe after a ``config``).
CONFIG_UPDATED = "configUpdated"
#: Keys of a ``configUpdated`` payload that name a provider, voice or language, wherever they
#: appear in it (its shape is unconfirmed: notes, sections 0.1 and 0.5).
_CONFIG_KEYS = (
    "ttsProvider", "transcriptionProvider", "provider", "voice", "speechModel", "language",
    "ttsLanguage", "transcriptionLanguage", "reason",
)  # fmt: skip


class ConfigUpdated(_Inbound):
    """Twilio changed the session's configuration (a provider failover, or a ``config`` frame).

    Its shape is unconfirmed, so both readings are accepted: ``{"type": "configUpdated", ...}``
    (``via="frame"``) and ``{"type": "info", "name": "configUpdated", "value": ...}``
    (``via="info"``). ``payload`` keeps the whole frame as received; ``details`` picks out the
    recognisable keys (a provider, voice or language) found at its top level or in its value.
    """

    type: Literal["configUpdated"] = "configUpdated"
    via: Literal["frame", "info"] = "frame"
    payload: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ConfigUpdated:
        via: Literal["frame", "info"] = "info" if data.get("type") == "info" else "frame"
        found: dict[str, str] = {}
        places: list[Any] = [data]
        value = data.get("value")
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(value)
        places.append(value)
        for place in places:
            if isinstance(place, dict):
                for key in _CONFIG_KEYS:
                    item = place.get(key)
                    if isinstance(item, str | int | float) and not isinstance(item, bool):
                        found.setdefault(key, str(item)[:200])
                for nested in place.values():  # e.g. {"tts": {"provider": "Google"}}
                    if isinstance(nested, dict):
                        for key in _CONFIG_KEYS:
                            item = nested.get(key)
                            if isinstance(item, str):
                                found.setdefault(key, item[:200])
        if via == "info" and isinstance(value, str) and not found and value:
            found["value"] = value[:200]
        return cls(via=via, payload=data, details=found)


class Unknown(_Inbound):
    """A frame whose ``type`` we do not know. Logged and ignored."""

    type: str
    raw: dict[str, Any] = Field(default_factory=dict)


InboundFrame = Setup | Prompt | Dtmf | Interrupt | Error | Info | ConfigUpdated | Unknown
_KNOWN_INBOUND = frozenset({"setup", "prompt", "dtmf", "interrupt", "error", "info"})
_inbound_adapter: TypeAdapter[Setup | Prompt | Dtmf | Interrupt | Error | Info] = TypeAdapter(
    Annotated[Setup | Prompt | Dtmf | Interrupt | Error | Info, Field(discriminator="type")]
)


def parse_inbound(raw: str | bytes) -> InboundFrame:
    """Parse one frame from Twilio. Never raises anything but :class:`ProtocolError`.

    Raises :class:`ProtocolError` for anything that is not a JSON object with a string ``type``
    (invalid UTF-8, binary noise, JSON nested deeper than ``MAX_NESTING``), for a known type with
    missing or mistyped fields, and for frames over ``MAX_FRAME_BYTES``. A well-formed frame of
    an unknown type comes back as :class:`Unknown`; ``configUpdated``, as a frame of its own or
    as an ``info`` frame of that name, comes back as :class:`ConfigUpdated`.
    """
    size = frame_size(raw)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}", raw=raw[:200])
    try:
        return _parse(raw)
    except ProtocolError:
        raise
    except Exception as exc:  # whatever a hostile frame finds in orjson or pydantic
        raise ProtocolError(
            f"unparseable frame: {type(exc).__name__}: {exc}"[:300], raw=raw
        ) from exc


def frame_size(raw: str | bytes) -> int:
    """The frame's size in bytes (UTF-8 for text)."""
    if isinstance(raw, bytes):
        return len(raw)
    return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))


def record_of(raw: str | bytes, *, cap: int = RECORD_CAP) -> dict[str, Any]:
    """What to record of an inbound frame: its text up to ``cap`` characters, and its real size.

    Binary frames and invalid UTF-8 are decoded with replacement characters (``binary`` says
    which it was); ``truncated`` says the text was cut. Only the kept part is decoded or cleaned,
    so a 1 MiB frame costs microseconds, not milliseconds.
    """
    record: dict[str, Any]
    if isinstance(raw, bytes):
        size = len(raw)
        text = raw[: cap * 4].decode("utf-8", "replace")
        truncated = size > cap * 4 or len(text) > cap
        record = {"raw": "", "size": size}
    else:
        size = len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
        text = raw[: cap + 1]
        truncated = len(raw) > cap
        record = {"raw": "", "size": size}
    # No lone surrogates in records (they cannot be stored as JSON).
    record["raw"] = text[:cap].encode("utf-8", "replace").decode("utf-8")
    if truncated:
        record["truncated"] = True
    if isinstance(raw, bytes):
        record["binary"] = True
    return record


def _depth(value: dict[str, Any]) -> int:
    """How deeply the frame nests lists and objects (iteratively: no recursion to exhaust).
    Flat frames (prompt, dtmf, interrupt, most info) cost one pass over their values."""
    if not any(isinstance(v, dict | list) for v in value.values()):
        return 1
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items: Any = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        stack.extend((child, depth + 1) for child in items)
    return deepest


def _parse(raw: str | bytes) -> InboundFrame:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}", raw=raw) from exc
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object", raw=raw)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no string 'type'", raw=raw)
    if _depth(data) > MAX_NESTING:
        raise ProtocolError(f"frame nests deeper than {MAX_NESTING} levels", raw=raw)
    if kind == CONFIG_UPDATED or (kind == "info" and data.get("name") == CONFIG_UPDATED):
        return ConfigUpdated.from_wire(data)
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
    """Switch the speech-to-text and/or text-to-speech language.

    With any of ``voice``, ``tts_provider``, ``transcription_provider`` or ``speech_model`` it
    is the extended frame of dynamic configuration (GA 2026-10-28): it declares a language the
    TwiML did not and switches to it in one message. Those field names are **unconfirmed**
    (notes, sections 0.1 and 3.4): each is written once here, so matching the live schema is a
    one-line change. Send the extended form only for agents with ``mid_call_config = true``.
    """

    type: Literal["language"] = "language"
    tts_language: str | None = None
    transcription_language: str | None = None
    # -- the declaration of a new language (unconfirmed names) --
    voice: str | None = None
    tts_provider: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None

    @model_validator(mode="after")
    def _one_language(self) -> Language:
        if self.tts_language is None and self.transcription_language is None:
            raise ValueError("a language frame needs ttsLanguage or transcriptionLanguage")
        if (self.voice or self.tts_provider) and self.tts_language is None:
            raise ValueError("declaring a voice or TTS provider needs ttsLanguage")
        if (self.transcription_provider or self.speech_model) and (
            self.transcription_language is None
        ):
            raise ValueError(
                "declaring a transcription provider or model needs transcriptionLanguage"
            )
        return self

    @property
    def declares(self) -> bool:
        """True for the extended (dynamic configuration) form."""
        return any((self.voice, self.tts_provider, self.transcription_provider, self.speech_model))


InputKind = Literal["none", "dtmf", "speech", "any"]


class Config(_Outbound):
    """Change settings during the call (dynamic configuration, GA 2026-10-28; notes 0.1, 3.6).

    The session settings Twilio lists can change, and a language's voice, providers, speech
    model and text normalisation (``language`` names which one; absent: the current one).
    The JSON field names are **unconfirmed**: each is the TwiML attribute's name, written once
    here (the alias), so matching the live schema is a one-line change. Sent only for agents
    with ``mid_call_config = true``; after a 64107 for it, stop sending it (see
    :func:`rejected_frame_type`).
    """

    type: Literal["config"] = "config"
    # -- session settings --
    interruptible: InputKind | None = None
    preemptible: bool | None = None
    dtmf_detection: bool | None = None
    report_input_during_agent_speech: InputKind | None = None
    partial_prompts: bool | None = None
    speech_timeout: Annotated[int, Field(ge=0, le=60_000)] | Literal["auto"] | None = None
    echo_prompt_filtering: bool | None = None
    interrupt_sensitivity: Literal["low", "medium", "high"] | None = None
    ignore_backchannel: bool | None = None
    profanity_filter: bool | None = None
    eot_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    # -- one language's settings --
    language: str | None = None
    voice: str | None = None
    tts_provider: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None
    tts_text_normalization: Literal["on", "auto", "off"] | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> Config:
        changed = self.model_dump(exclude_none=True, exclude={"type", "language"})
        if not changed:
            raise ValueError("a config frame must change at least one setting")
        return self


class Hints(_Outbound):
    """Speech-recognition hints during the call (dynamic configuration; notes 0.1, 3.6).

    ``hints`` is comma-separated like the TwiML attribute; ``language`` (optional) names the
    language they are for. Field names **unconfirmed**, written once here. Whether they replace
    or add to the TwiML's hints is unconfirmed too: send the full list you want.
    """

    type: Literal["hints"] = "hints"
    hints: Annotated[str, Field(min_length=1, max_length=5000)]
    language: str | None = None


class End(_Outbound):
    """End the session; ``handoff_data`` (a string) reaches the Connect action URL."""

    type: Literal["end"] = "end"
    handoff_data: str | None = None


OutboundFrame = Text | Play | SendDigits | Language | Config | Hints | End

#: Frame types of dynamic configuration, sent only for agents with ``mid_call_config = true``
#: (the extended ``language`` frame too: see :attr:`Language.declares`).
MID_CALL_TYPES = frozenset({"config", "hints"})


def outbound(frame: OutboundFrame) -> str:
    """Serialise a validated outbound frame."""
    return frame.to_json()


def config_frame(
    *,
    interruptible: InputKind | None = None,
    preemptible: bool | None = None,
    dtmf_detection: bool | None = None,
    report_input_during_agent_speech: InputKind | None = None,
    partial_prompts: bool | None = None,
    speech_timeout: int | Literal["auto"] | None = None,
    echo_prompt_filtering: bool | None = None,
    interrupt_sensitivity: Literal["low", "medium", "high"] | None = None,
    ignore_backchannel: bool | None = None,
    profanity_filter: bool | None = None,
    eot_threshold: float | None = None,
    language: str | None = None,
    voice: str | None = None,
    tts_provider: str | None = None,
    transcription_provider: str | None = None,
    speech_model: str | None = None,
    tts_text_normalization: Literal["on", "auto", "off"] | None = None,
) -> Config:
    """A validated ``config`` frame changing only the settings given (e.g.
    ``config_frame(dtmf_detection=True)`` while digits are collected)."""
    return Config(
        interruptible=interruptible, preemptible=preemptible, dtmf_detection=dtmf_detection,
        report_input_during_agent_speech=report_input_during_agent_speech,
        partial_prompts=partial_prompts, speech_timeout=speech_timeout,
        echo_prompt_filtering=echo_prompt_filtering, interrupt_sensitivity=interrupt_sensitivity,
        ignore_backchannel=ignore_backchannel, profanity_filter=profanity_filter,
        eot_threshold=eot_threshold, language=language, voice=voice, tts_provider=tts_provider,
        transcription_provider=transcription_provider, speech_model=speech_model,
        tts_text_normalization=tts_text_normalization,
    )  # fmt: skip


def hints_frame(phrases: Sequence[str], *, language: str | None = None) -> Hints:
    """A validated ``hints`` frame from phrases (e.g. the business's suburbs while an address is
    asked for). Empty phrases and duplicates are dropped; a phrase may not contain a comma."""
    kept: list[str] = []
    for phrase in phrases:
        phrase = " ".join(phrase.split())
        if "," in phrase:
            raise ValueError(f"hint {phrase!r} contains a comma (hints are comma-separated)")
        if phrase and phrase not in kept:
            kept.append(phrase)
    return Hints(hints=",".join(kept), language=language)


def language_frame(
    *,
    tts_language: str | None = None,
    transcription_language: str | None = None,
    voice: str | None = None,
    tts_provider: str | None = None,
    transcription_provider: str | None = None,
    speech_model: str | None = None,
) -> Language:
    """A validated ``language`` frame; with a voice, provider or model it also declares the
    language (the extended form: ``mid_call_config`` agents only)."""
    return Language(
        tts_language=tts_language, transcription_language=transcription_language, voice=voice,
        tts_provider=tts_provider, transcription_provider=transcription_provider,
        speech_model=speech_model,
    )  # fmt: skip


def is_mid_call(frame: OutboundFrame) -> bool:
    """Whether ``frame`` is dynamic configuration (needs ``mid_call_config``)."""
    return frame.type in MID_CALL_TYPES or (isinstance(frame, Language) and frame.declares)


_REJECTED = re.compile(r"\b64107\b")


def rejected_frame_type(error: Error) -> str | None:
    """The ``type`` of our frame that an ``error`` frame reports as refused (64107), if any.

    Twilio's description reads ``"Invalid message received, code: 64107, <your frame>"``
    (observed on live calls). Use it to stop sending ``config``/``hints`` after a refusal.
    """
    text = error.description
    if not _REJECTED.search(text):
        return None
    start = text.find("{")
    if start < 0:
        return ""
    try:
        data = orjson.loads(text[start : text.rfind("}") + 1])
    except orjson.JSONDecodeError:
        match = re.search(r'"type"\s*:\s*"([A-Za-z]+)"', text[start:])
        return match.group(1) if match else ""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else ""
