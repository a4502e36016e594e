"""Agent profiles: one TOML file per agent in ``prompts/``.

A profile is data a business owner can read: the system prompt, the greeting, the voice, the
languages, the phone numbers the agent answers, the model, its tools, its knowledge collection,
the number of a person to hand calls to, and the ConversationRelay settings for its TwiML.
"""

from __future__ import annotations

import difflib
import inspect
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from twilio.twiml.voice_response import Connect, ConversationRelay

from relay.errors import AgentNotFound, ConfigError

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def _phone_number(number: str) -> str:
    """An agent's number, checked with libphonenumber and written in E.164.

    ``"+61 3 9000 1234"`` becomes ``"+61390001234"``. The number must carry its country code and
    be valid for that country, or at least a full-length possible one: numbers reserved for
    fiction (``+1 555 …``) pass, so test profiles keep working."""
    wrong = f"{number!r} is not an E.164 number like +61390001234"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(wrong) from exc
    # Valid per libphonenumber, or at least a full-length possible number (fictional +1 555 …).
    possible = phonenumbers.is_possible_number(parsed) and len(str(parsed.national_number)) >= 7
    if not (phonenumbers.is_valid_number(parsed) or possible):
        raise ValueError(f"{wrong} (not a number of its country)")
    formatted = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    if not _E164.match(formatted):
        raise ValueError(wrong)
    return formatted


# -- the <ConversationRelay> and <Language> attributes a profile may set (h4-protocol) -------
#
# Which attributes exist is read from the installed twilio package (the keyword parameters of
# ``Connect.conversation_relay`` and ``ConversationRelay.language``), so every attribute of the
# package is accepted under its snake_case name. The ones whose values are documented are checked
# (booleans, enums, ranges, space-separated lists); any other attribute the package knows is
# accepted as a plain string, number or boolean. ``eot_threshold`` (documented by Twilio, not yet
# a keyword of the package) is accepted too. TwiML documents are built by relay.protocol.twiml
# from the plain values ``AgentProfile.twiml_options()`` hands it.

Scalar = str | bool | int | float

INPUT_KINDS = ("none", "dtmf", "speech", "any")
_NORMALIZATION = ("on", "auto", "off")
_LANG = re.compile(r"^(multi|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
#: Tokens of ``debug`` (the noun page) and of ``events`` (twilio 9.10.5+, ``config-updated``
#: since 2026-11-18).
DEBUG_TOKENS = ("debugging", "speaker-events", "tokens-played")
EVENT_TOKENS = ("speaker-events", "tokens-played", "config-updated")
INCLUDE_IN_PROMPT_TOKENS = ("turn-state", "prompt-segments")

#: Keys of the ``[relay]`` table that are relay's own switches, never TwiML attributes.
RELAY_OWN_KEYS = frozenset({"mid_call_config", "readback_uninterruptible"})
#: Attributes relay sets itself, never from a profile.
_RESERVED = frozenset({"url", "welcome_greeting", "kwargs", "self"})
#: Documented by Twilio but not (yet) a keyword of the twilio package.
_EXTRA_RELAY = frozenset({"eot_threshold"})


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _keywords(function: Callable[..., Any]) -> frozenset[str]:
    names = inspect.signature(function).parameters
    return frozenset(_snake(n) for n in names if n not in _RESERVED)


#: Every ``<ConversationRelay>`` attribute a profile's ``[relay]`` table may set.
RELAY_ATTRIBUTES = _keywords(Connect.conversation_relay) | _EXTRA_RELAY
#: Every ``<Language>`` attribute (besides ``code``) a ``[[languages]]`` entry may set.
LANGUAGE_ATTRIBUTES = _keywords(ConversationRelay.language) - {"code"}


# -- value checks ---------------------------------------------------------------------------


def _boolean(value: Any) -> Scalar:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # written as TwiML would: "true"
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _input_kind(value: Any) -> Scalar:
    """none | dtmf | speech | any; the legacy booleans (true = any, false = none) still work."""
    if isinstance(value, bool) or value in INPUT_KINDS:
        return value  # type: ignore[no-any-return]
    raise ValueError(f"must be one of {', '.join(INPUT_KINDS)}")


def _one_of(*allowed: str) -> Callable[[Any], Scalar]:
    def check(value: Any) -> Scalar:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return str(value)

    return check


def _provider(*allowed: str) -> Callable[[Any], Scalar]:
    def check(value: Any) -> Scalar:
        if not isinstance(value, str) or value.lower() not in {a.lower() for a in allowed}:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


def _text(value: Any) -> Scalar:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _language(value: Any) -> Scalar:
    if not isinstance(value, str) or not _LANG.match(value):
        raise ValueError("must be a BCP-47 language such as en-AU, or multi")
    return value


def _language_code(code: str) -> str:
    """A ``code`` of ``[[languages]]`` or ``[[failover.languages]]``, checked as ``[relay]``
    ``language`` is: BCP-47 (``en-AU``) or ``multi``."""
    _language(code)
    return code


def _did_you_mean(name: str, known: Iterable[str], *, shown: str | None = None) -> str:
    """``shown`` (default ``name``), with the nearest of ``known`` to ``name`` when one is close:
    ``speech_timout (did you mean speech_timeout?)``."""
    shown = name if shown is None else shown
    near = difflib.get_close_matches(name, sorted(known), n=1)
    return f"{shown} (did you mean {near[0]}?)" if near else shown


def _number(low: float, high: float) -> Callable[[Any], Scalar]:
    def check(value: Any) -> Scalar:
        number = value
        if isinstance(value, str):  # "0.7", as it would be written in TwiML
            try:
                number = float(value)
            except ValueError:
                number = None
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not low <= number <= high
        ):
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return value  # type: ignore[no-any-return]

    return check


def _speech_timeout(value: Any) -> Scalar:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError('must be milliseconds of silence (an integer) or "auto"')


def _tokens(*allowed: str, separator: str = " ") -> Callable[[Any], Scalar]:
    def check(value: Any) -> Scalar:
        if isinstance(value, list):
            value = separator.join(str(v) for v in value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must list some of {', '.join(allowed)}")
        tokens = value.replace(",", " ").split()
        wrong = [t for t in tokens if t not in allowed]
        if wrong:
            raise ValueError(f"unknown {', '.join(wrong)} (known: {', '.join(allowed)})")
        return separator.join(dict.fromkeys(tokens))

    return check


def _hints(value: Any) -> Scalar:
    if isinstance(value, list):
        if not all(isinstance(v, str) and "," not in v for v in value):
            raise ValueError(
                "must be a list of phrases without commas, or one comma-separated string"
            )
        value = ",".join(v.strip() for v in value if v.strip())
    return _text(value)


_CHECKS: dict[str, Callable[[Any], Scalar]] = {
    "language": _language,
    "tts_language": _language,
    "transcription_language": _language,
    "tts_provider": _provider("Google", "Amazon", "ElevenLabs"),
    "transcription_provider": _provider("Google", "Deepgram"),
    "voice": _text,
    "speech_model": _text,
    "welcome_greeting_interruptible": _input_kind,
    "interruptible": _input_kind,
    "report_input_during_agent_speech": _one_of(*INPUT_KINDS),
    "interrupt_sensitivity": _one_of("low", "medium", "high"),
    "elevenlabs_text_normalization": _one_of(*_NORMALIZATION),
    "tts_text_normalization": _one_of(*_NORMALIZATION),
    "hints": _hints,
    "intelligence_service": _text,
    "customer_name": _text,
    "debug": _tokens(*DEBUG_TOKENS),
    "events": _tokens(*EVENT_TOKENS),
    "include_in_prompt": _tokens(*INCLUDE_IN_PROMPT_TOKENS),
    "speech_timeout": _speech_timeout,
    "eager_eot_threshold": _number(0.3, 0.9),
    "eot_threshold": _number(0.0, 1.0),
    **{
        name: _boolean
        for name in (
            "profanity_filter", "dtmf_detection", "partial_prompts", "preemptible",
            "background_noise_reduction", "deepgram_smart_format", "ignore_backchannel",
            "partial_prompt_on_hangup", "asr_smart_format", "tts_language_text_normalization",
            "elevenlabs_language_text_normalization", "application_reconnect",
            "echo_prompt_filtering", "turn_detection",
        )
    },
}  # fmt: skip


def _scalar(value: Any) -> Scalar:
    if isinstance(value, str | bool | int | float):
        return value
    raise ValueError("must be a string, number or true/false")


def check_attributes(
    attrs: Mapping[str, Any], allowed: frozenset[str], *, what: str
) -> dict[str, Scalar]:
    """``attrs`` checked against ``allowed`` and the value rules; raises ValueError naming
    every problem (and the nearest known name for a misspelt one)."""
    problems: list[str] = []
    unknown: list[str] = []
    checked: dict[str, Scalar] = {}
    for key, value in attrs.items():
        if key not in allowed:
            unknown.append(_did_you_mean(_snake(key), allowed, shown=key))
            continue
        try:
            checked[key] = _CHECKS.get(key, _scalar)(value)
        except ValueError as exc:
            problems.append(f"{key} {exc}")
    if unknown:
        problems.insert(0, f"unknown {what} attributes: {', '.join(unknown)}")
    if problems:
        raise ValueError("; ".join(problems))
    return checked


_VOICE_ID = re.compile(r"^[A-Za-z0-9]{10,40}$")
_VOICE_MODEL = re.compile(r"^[a-z][a-z0-9_]*$")
_VOICE_TUNING = re.compile(r"^(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)$")


def elevenlabs_voice_problem(voice: str) -> str | None:
    """What is wrong with a Twilio ElevenLabs voice string
    ``<voiceId>[-<modelId>][-<speed>_<stability>_<similarity>]`` (notes, section 5), or None.
    The model is free text (new models such as v4 Turbo have tokens not known here)."""
    parts = voice.split("-")
    if not _VOICE_ID.match(parts[0]):
        return f"{voice!r} does not start with an ElevenLabs voice id (see: relay voices list)"
    rest = parts[1:]
    if len(rest) > 2:
        return f"{voice!r} is not <voiceId>[-<model>][-<speed>_<stability>_<similarity>]"
    for index, part in enumerate(rest):
        tuning = _VOICE_TUNING.match(part)
        if tuning:
            if index != len(rest) - 1:
                return f"{voice!r}: the tuning comes last"
            speed, stability, similarity = (float(x) for x in tuning.groups())
            if not 0.7 <= speed <= 1.2:
                return f"{voice!r}: speed {speed:g} is outside 0.7-1.2"
            if not (0 <= stability <= 1 and 0 <= similarity <= 1):
                return f"{voice!r}: stability and similarity must be from 0.0 to 1.0"
        elif index > 0 or not _VOICE_MODEL.match(part):
            return f"{voice!r}: {part!r} is neither a model (flash_v2_5) nor tuning (1.0_0.8_0.8)"
    return None


def _multi_problems(where: str, stt: Any, model: Any, tts: str | None) -> list[str]:
    """``multi`` (auto-detected language) needs Deepgram nova-2/nova-3 and ElevenLabs."""
    problems = []
    if stt is not None and str(stt).lower() != "deepgram":
        problems.append(f'{where}: "multi" needs transcription_provider "Deepgram"')
    if model is not None and model not in ("nova-2-general", "nova-3-general"):
        problems.append(f'{where}: "multi" needs speech_model nova-2-general or nova-3-general')
    if tts is not None and tts.lower() != "elevenlabs":
        problems.append(f'{where}: "multi" needs tts_provider "ElevenLabs"')
    return problems


def with_event(events: Scalar | None, token: str) -> str:
    """``events`` with ``token`` added once."""
    tokens = str(events or "").replace(",", " ").split()
    return " ".join(dict.fromkeys([*tokens, token]))


_INPUT_KINDS = INPUT_KINDS


class LanguageOption(BaseModel):
    """A language the agent speaks: a ``<Language>`` child in TwiML.

    Besides ``code`` and ``name`` (ours: how the language is called), every ``<Language>``
    attribute of the twilio package may be set by its snake_case name (``hints``,
    ``tts_text_normalization``, ``asr_smart_format``...) and is checked like ``[relay]``.
    """

    model_config = ConfigDict(extra="allow")

    code: str
    name: str = ""
    voice: str | None = None
    tts_provider: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None

    @field_validator("code")
    @classmethod
    def _bcp47(cls, code: str) -> str:
        return _language_code(code)

    @model_validator(mode="before")
    @classmethod
    def _attributes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            rest = {k: v for k, v in data.items() if k not in ("code", "name") and v is not None}
            checked = check_attributes(rest, LANGUAGE_ATTRIBUTES, what="<Language>")
            data = {**data, **checked}
        return data

    def attributes(self) -> dict[str, Scalar]:
        """The ``<Language>`` attributes, ``code`` first, unset ones left out."""
        values = self.model_dump(exclude={"name"}, exclude_none=True)
        return {"code": self.code, **{k: v for k, v in values.items() if k != "code"}}


class FailoverLanguage(BaseModel):
    """One language's backup providers: a ``<Language>`` child of ``<Failover>``."""

    model_config = ConfigDict(extra="forbid")

    code: str
    tts_provider: str | None = None
    voice: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None

    @field_validator("code")
    @classmethod
    def _bcp47(cls, code: str) -> str:
        return _language_code(code)


class FailoverOptions(BaseModel):
    """``[failover]``: backup STT/TTS providers, emitted as ``<Failover>`` in ``<ConversationRelay>``.

    The children and attributes of ``<Failover>`` are **unconfirmed** (notes, section 0.5), so
    both readings can be written: ``[[failover.languages]]`` entries become
    ``<Language code=... ttsProvider=... voice=... transcriptionProvider=... speechModel=...>``
    children (one backup per language, as the guide describes), and the top-level keys become
    attributes of ``<Failover>`` itself (one backup for every language). An empty
    ``[failover]`` (or ``enabled = true`` alone) emits ``<Failover/>``: Twilio's default backups.
    ``enabled = false`` keeps the section but emits nothing.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    tts_provider: str | None = None
    voice: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None
    languages: list[FailoverLanguage] = Field(default_factory=list)

    @model_validator(mode="after")
    def _checked(self) -> FailoverOptions:
        attrs = self.model_dump(exclude={"enabled", "languages"}, exclude_none=True)
        check_attributes(attrs, LANGUAGE_ATTRIBUTES, what="<Failover>")
        for language in self.languages:
            rest = language.model_dump(exclude={"code"}, exclude_none=True)
            check_attributes(rest, LANGUAGE_ATTRIBUTES, what="<Failover>")
            if not rest:
                raise ValueError(f"failover language {language.code!r} names no backup")
        codes = [language.code for language in self.languages]
        if len(set(codes)) != len(codes):
            raise ValueError("a failover language is listed twice")
        return self

    def attributes(self) -> dict[str, Scalar]:
        return dict(self.model_dump(exclude={"enabled", "languages"}, exclude_none=True))

    def language_attributes(self) -> list[dict[str, Scalar]]:
        return [language.model_dump(exclude_none=True) for language in self.languages]


class TwimlOptions(TypedDict):
    """What :func:`relay.protocol.twiml.connect` needs of an agent: plain values only."""

    relay: dict[str, Scalar]
    languages: list[dict[str, Scalar]]
    failover: dict[str, Scalar] | None
    failover_languages: list[dict[str, Scalar]]
    parameters: dict[str, str]
    welcome_greeting: str | None


class KeypadOption(BaseModel):
    """What a key does when pressed outside digit collection."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["transfer", "say", "prompt", "end"]
    text: str = ""  # for "say": the words; for "prompt": what the caller is taken to mean


class LLMLimits(BaseModel):
    """The agent's own LLM client time limits: the ``[llm]`` table (seconds).

    Each one left out is the matching setting: ``RELAY_LLM_CONNECT_TIMEOUT``,
    ``RELAY_LLM_FIRST_TOKEN_TIMEOUT``, ``RELAY_LLM_READ_TIMEOUT``, ``RELAY_LLM_TURN_TIMEOUT``
    (a slow local model behind one agent: ``first_token_timeout = 120``).
    """

    model_config = ConfigDict(extra="forbid")

    connect_timeout: float | None = Field(default=None, gt=0)
    first_token_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(default=None, gt=0)
    turn_timeout: float | None = Field(default=None, gt=0)


# -- [analysis] and the post-call settings (h8: outcomes, webhook, e-mail) -----------------


class AnalysisField(BaseModel):
    """One field the post-call model pass fills for each call (``[[analysis.fields]]``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    type: Literal["text", "enum", "boolean", "number"] = "text"
    description: str = ""
    values: list[str] = Field(default_factory=list)  # for enum: the allowed values

    @field_validator("values")
    @classmethod
    def _values(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("enum values must be distinct")
        return values


#: The fields every agent's analysis fills unless its profile replaces them by name.
DEFAULT_ANALYSIS_FIELDS = (
    AnalysisField(
        name="summary",
        description="Two or three sentences: what the caller wanted and what was done.",
    ),
    AnalysisField(name="reason", description="The reason for the call, in a few words."),
    AnalysisField(
        name="sentiment",
        type="enum",
        values=["positive", "neutral", "negative"],
        description="How the caller felt by the end of the call.",
    ),
)


class AnalysisSection(BaseModel):
    """``[analysis]``: what the optional post-call model pass extracts from each call."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # default: the agent's model
    instructions: str = ""
    fields: list[AnalysisField] = Field(default_factory=list)  # added to (or replacing) defaults

    @model_validator(mode="after")
    def _enums_have_values(self) -> AnalysisSection:
        for item in self.fields:
            if item.type == "enum" and not item.values:
                raise ValueError(f"analysis field {item.name!r} is an enum without values")
        return self

    def all_fields(self) -> list[AnalysisField]:
        """The defaults (summary, reason, sentiment), each replaced by a field of the same name,
        then the profile's other fields."""
        own = {f.name: f for f in self.fields}
        merged = [own.pop(f.name, f) for f in DEFAULT_ANALYSIS_FIELDS]
        return merged + list(own.values())


class AgentProfile(BaseModel):
    """One agent, as written in its ``prompts/<name>.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    business_name: str
    system_prompt: str
    welcome_greeting: str
    model: str | None = None
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_tokens: int = Field(default=400, ge=16, le=4096)
    numbers: list[str] = Field(default_factory=list)
    default: bool = False
    timezone: str = "UTC"
    languages: list[LanguageOption] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    knowledge_collection: str | None = None
    person_number: str | None = None
    person_name: str = "a member of our team"
    transfer_line: str = "Of course. I'm putting you through to a member of our team now."
    handoff_say: str = "Please hold while I connect you."
    no_person_line: str = "I'm sorry, nobody is available to take your call right now."
    #: Said (by Twilio's own voice) when a call's sessions keep failing and nobody can take it.
    trouble_line: str = (
        "I'm sorry, we're having technical trouble. Please call back in a few minutes. Goodbye!"
    )
    goodbye_line: str = "Thanks for calling. Goodbye!"
    resume_greeting: str = "Sorry about that, I think we got cut off. Where were we?"
    apology_line: str = "Sorry, I'm having trouble on my end. Could you say that again?"
    filler_lines: list[str] = Field(default_factory=lambda: ["One moment while I check that."])
    keypad: dict[str, KeypadOption] = Field(default_factory=dict)
    relay: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    failover: FailoverOptions | None = None  # [failover]: <Failover> (h4-protocol)
    _source: Path | None = PrivateAttr(default=None)  # the file it was loaded from
    data: dict[str, str] = Field(default_factory=dict)  # business tables, relative to the data dir
    # h8: post-call analysis, webhook and owner e-mail (relay.services.postcall).
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://")
    owner_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    llm: LLMLimits = Field(default_factory=LLMLimits)  # [llm]: the LLM client's time limits (h3)

    # -- How a call behaves when the model is slow or failing, and when the caller goes quiet
    # -- (read by relay.call; seconds). Every one has a default, so profiles may leave them out.
    llm_filler_after: float = Field(default=1.2, ge=0)  # no token yet: a filler line (0: never)
    llm_turn_budget: float = Field(default=4.0, gt=0)  # no token by then: the apology
    llm_stall_after: float = Field(default=3.0, gt=0)  # a stream silent this long has failed
    offer_person_line: str = (
        "I'm sorry, I'm having real trouble on my end. "
        "Would you like me to put you through to {person_name}?"
    )
    offer_message_line: str = (
        "I'm sorry, I'm having real trouble on my end. "
        "Would you like to leave a message so someone can call you back?"
    )
    take_message_line: str = (
        "Of course. Please tell me your name and what it's about, "
        "and someone will call you back on this number."
    )
    message_taken_line: str = "Thank you, I've passed that on. Someone will call you back. Goodbye!"
    silence_timeout: float = Field(default=10.0, ge=0)  # caller silent this long (0: never)
    still_there_line: str = "Are you still there?"
    silence_goodbye_line: str = "I'll let you go now. Please call back any time. Goodbye!"

    # -- What the caller hears of the model's words (relay.call.speech, issue 15): a reply
    # -- limit in words (ended at a sentence end; 0: none), the price guard (an amount is said
    # -- only if this call's tool results or the business's documents produced it) and the
    # -- booking guard (no "you're booked" unless a booking tool succeeded in this call).
    max_reply_words: int = Field(default=60, ge=0)
    price_guard: bool = True
    booking_guard: bool = True
    message_guard: bool = True  # no "I've texted you the quote" unless a send tool succeeded
    price_tool: str | None = None  # required on a re-ask; default: the first known price tool
    # How a re-ask requires the tool: "named" (OpenAI's {"type": "function", ...}) or
    # "required" (any tool; for servers that only know the string forms, e.g. llama.cpp's
    # llama-server, which reads a named choice as "auto"). The re-ask's note names it either way.
    guard_tool_choice: Literal["named", "required"] = "named"
    price_bridge_line: str = "Let me work out the exact price for you."
    booking_bridge_line: str = "Let me just confirm that booking."
    message_bridge_line: str = "Let me just check on that message."
    guard_fallback_line: str = (
        "I can't confirm that right now. Would you like me to take a message for the team?"
    )

    @field_validator("numbers")
    @classmethod
    def _e164(cls, numbers: list[str]) -> list[str]:
        return [_phone_number(number) for number in numbers]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{zone!r} is not a time zone such as Australia/Melbourne") from exc
        return zone

    @field_validator("person_number")
    @classmethod
    def _person_e164(cls, number: str | None) -> str | None:
        return None if number is None else _phone_number(number)

    @field_validator("relay")
    @classmethod
    def _relay_attributes(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in attrs.items() if k in RELAY_OWN_KEYS}
        for key, value in own.items():
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
        twiml = {k: v for k, v in attrs.items() if k not in RELAY_OWN_KEYS}
        checked = check_attributes(twiml, RELAY_ATTRIBUTES, what="ConversationRelay")
        # Pitfall 1 in the ConversationRelay notes: its default changed in May 2025.
        if "report_input_during_agent_speech" not in attrs:
            raise ValueError("report_input_during_agent_speech must be set explicitly")
        return {**checked, **own}

    @field_validator("keypad")
    @classmethod
    def _keys(cls, keypad: dict[str, KeypadOption]) -> dict[str, KeypadOption]:
        for key in keypad:
            if key not in "0123456789*#" or len(key) != 1:
                raise ValueError(f"keypad key {key!r} must be one of 0-9, * or #")
        return keypad

    @model_validator(mode="after")
    def _voices_and_multi(self) -> AgentProfile:
        """Combinations Twilio refuses by ending the call (notes 2.5, 4.4, 5, pitfall 10)."""
        relay = self.relay
        parent_tts = str(relay.get("tts_provider", "ElevenLabs"))
        problems = []
        voice = relay.get("voice")
        if isinstance(voice, str) and parent_tts.lower() == "elevenlabs":
            problem = elevenlabs_voice_problem(voice)
            if problem:
                problems.append(f"relay.voice: {problem}")
        if "multi" in (relay.get("language"), relay.get("transcription_language")):
            problems += _multi_problems(
                "relay", relay.get("transcription_provider"), relay.get("speech_model"), None
            )
        if relay.get("tts_language") == "multi" and parent_tts.lower() != "elevenlabs":
            problems.append('relay: tts_language "multi" needs tts_provider "ElevenLabs"')
        for option in self.languages:
            tts = option.tts_provider or parent_tts
            if option.voice and tts.lower() == "elevenlabs":
                problem = elevenlabs_voice_problem(option.voice)
                if problem:
                    problems.append(f"languages {option.code}: voice: {problem}")
            if option.code == "multi":
                problems += _multi_problems(
                    "languages multi",
                    option.transcription_provider or relay.get("transcription_provider"),
                    option.speech_model or relay.get("speech_model"),
                    tts,
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- ConversationRelay (h4-protocol): the switches of [relay] and the TwiML's plain values --

    @property
    def source(self) -> Path | None:
        """The profile file this agent was loaded from (None when built in code)."""
        return self._source

    def check_tools(self, known: Collection[str]) -> None:
        """Refuse a ``tools`` entry that is not one of ``known`` (the tool registry's names) with
        the file and the field named, as a bad value is, and the nearest known name:
        ``prompts/tuner.toml: invalid agent profile: tools: unknown tool 'take_mesage' (did you
        mean take_message?) (known: ...)``."""
        unknown = [name for name in self.tools if name not in known]
        if not unknown:
            return
        names = ", ".join(_did_you_mean(name, known, shown=repr(name)) for name in unknown)
        where = str(self._source) if self._source is not None else f"agent {self.name!r}"
        raise ConfigError(
            f"{where}: invalid agent profile: tools: unknown tool{'s' if len(unknown) > 1 else ''}"
            f" {names} (known: {', '.join(sorted(known))})"
        )

    @property
    def mid_call_config(self) -> bool:
        """``[relay] mid_call_config = true``: send ``config``/``hints`` and the extended
        ``language`` frame during calls (off by default while their field names are unconfirmed)."""
        return bool(self.relay.get("mid_call_config", False))

    @property
    def readback_uninterruptible(self) -> bool:
        """``[relay] readback_uninterruptible = true``: a price or booking read back cannot be
        interrupted (with ``mid_call_config``)."""
        return bool(self.relay.get("readback_uninterruptible", False))

    def relay_attributes(self) -> dict[str, Scalar]:
        """The ``<ConversationRelay>`` attributes (snake_case), without relay's own switches;
        with ``[failover]`` on, ``events`` also asks for ``config-updated``."""
        attrs = {k: v for k, v in self.relay.items() if k not in RELAY_OWN_KEYS}
        if self.failover is not None and self.failover.enabled:
            attrs["events"] = with_event(attrs.get("events"), "config-updated")
        return attrs

    def twiml_options(
        self,
        *,
        parameters: Mapping[str, str] | None = None,
        welcome_greeting: str | None = None,
        language: str | None = None,
    ) -> TwimlOptions:
        """Everything :func:`relay.protocol.twiml.connect` needs, as plain values.

        ``welcome_greeting`` overrides the agent's greeting (a resumed call greets differently);
        ``""`` plays none. ``language`` (a resumed call that had switched) replaces the
        agent's ``language``, ``tts_language`` and ``transcription_language``. The ``agent``
        parameter always names this agent.
        """
        failover = self.failover if self.failover is not None and self.failover.enabled else None
        greeting = self.welcome_greeting if welcome_greeting is None else welcome_greeting
        relay = self.relay_attributes()
        if language:
            relay = {k: v for k, v in relay.items() if k not in _LANGUAGE_KEYS}
            relay["language"] = language
        return TwimlOptions(
            relay=relay,
            languages=[option.attributes() for option in self.languages],
            failover=failover.attributes() if failover is not None else None,
            failover_languages=failover.language_attributes() if failover is not None else [],
            parameters={"agent": self.name, **(parameters or {})},
            welcome_greeting=greeting or None,
        )

    @property
    def language(self) -> str:
        return str(
            self.relay.get("language", self.languages[0].code if self.languages else "en-US")
        )

    def speaks(self, code: str) -> LanguageOption | None:
        """The declared language matching ``code`` (exact, or by primary subtag)."""
        for option in self.languages:
            if option.code.lower() == code.lower():
                return option
        primary = code.split("-")[0].lower()
        for option in self.languages:
            if option.code.split("-")[0].lower() == primary:
                return option
        return None


#: The ``<ConversationRelay>`` attributes a ``language`` frame changes (``language`` sets both).
_LANGUAGE_KEYS = frozenset({"language", "tts_language", "transcription_language"})


def _problems(exc: ValidationError) -> str:
    """pydantic's errors as ``field: problem``, joined by ``; ``. A check of the whole profile
    (voices, ``multi``) has no field of its own: its problems name theirs (``relay.voice: ...``).
    Our own checks' messages lose pydantic's ``Value error, `` prefix."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        problem = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {problem}" if where else problem)
    return "; ".join(problems)


def load_profile(path: Path) -> AgentProfile:
    """Read and validate one profile, naming the file and field on error."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read agent profile: {exc}") from exc
    raw.setdefault("name", path.stem)
    try:
        profile = AgentProfile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid agent profile: {_problems(exc)}") from exc
    profile._source = path
    return profile


@dataclass
class AgentRegistry:
    """The agents this process serves, found by name or by the number that was called."""

    agents: dict[str, AgentProfile]
    default_name: str
    _by_number: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.default_name not in self.agents:
            raise ConfigError(
                f"RELAY_DEFAULT_AGENT: no agent named {self.default_name!r} "
                f"(have: {', '.join(sorted(self.agents)) or 'none'})"
            )
        for agent in self.agents.values():
            for number in agent.numbers:
                other = self._by_number.get(number)
                if other is not None and other != agent.name:
                    raise ConfigError(f"{number} is claimed by both {other!r} and {agent.name!r}")
                self._by_number[number] = agent.name

    @classmethod
    def from_profiles(
        cls, profiles: Iterable[AgentProfile], *, default: str | None = None
    ) -> AgentRegistry:
        agents = {p.name: p for p in profiles}
        if not agents:
            raise ConfigError("RELAY_PROMPTS_DIR: no agent profiles (*.toml) found")
        if default is None:
            flagged = [p.name for p in agents.values() if p.default]
            if len(flagged) > 1:
                raise ConfigError(f"several agents say default = true: {', '.join(flagged)}")
            default = flagged[0] if flagged else sorted(agents)[0]
        return cls(agents=agents, default_name=default)

    @classmethod
    def load(cls, directory: Path, *, default: str | None = None) -> AgentRegistry:
        if not directory.is_dir():
            where = (
                f" (relative to {Path.cwd()}: run relay from the folder that holds the agents' "
                "prompts/, or set RELAY_PROMPTS_DIR to it)"
                if not directory.is_absolute()
                else ""
            )
            raise ConfigError(f"RELAY_PROMPTS_DIR: {directory} is not a directory{where}")
        return cls.from_profiles(
            (load_profile(p) for p in sorted(directory.glob("*.toml"))), default=default
        )

    @property
    def default(self) -> AgentProfile:
        return self.agents[self.default_name]

    def check_tools(self, known: Collection[str]) -> None:
        """Refuse, at start, the first agent whose ``tools`` lists a name not in ``known`` (see
        :meth:`AgentProfile.check_tools`)."""
        for agent in self.agents.values():
            agent.check_tools(known)

    def get(self, name: str) -> AgentProfile:
        try:
            return self.agents[name]
        except KeyError:
            raise AgentNotFound(f"no agent named {name!r}") from None

    def for_number(self, number: str | None) -> AgentProfile:
        """The agent answering ``number``, or the default agent."""
        name = self._by_number.get(normalise_number(number or ""))
        return self.agents[name] if name else self.default

    def resolve(self, params: Mapping[str, str], to: str | None) -> AgentProfile:
        """The agent for a session: an explicit ``agent`` parameter wins over the number."""
        name = params.get("agent")
        if name and name in self.agents:
            return self.agents[name]
        return self.for_number(to)


def normalise_number(number: str) -> str:
    """Strip spaces, dashes and brackets so '+61 3 9000 1234' matches '+61390001234'."""
    return re.sub(r"[\s\-().]", "", number)
