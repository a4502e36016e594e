"""Agent profiles: one TOML file per agent in ``prompts/``.

A profile is data a business owner can read: the system prompt, the greeting, the voice, the
languages, the phone numbers the agent answers, the model, its tools, its knowledge collection,
the number of a person to hand calls to, and the ConversationRelay settings for its TwiML.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relay.errors import AgentNotFound, ConfigError

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")

#: The <ConversationRelay> attributes a profile may set (the twilio package's keyword names).
RELAY_ATTRIBUTES = frozenset(
    {
        "language", "tts_language", "transcription_language", "tts_provider", "voice",
        "transcription_provider", "speech_model", "profanity_filter", "dtmf_detection",
        "partial_prompts", "welcome_greeting_interruptible", "interruptible", "preemptible",
        "hints", "intelligence_service", "report_input_during_agent_speech",
        "elevenlabs_text_normalization", "interrupt_sensitivity", "debug", "events",
        "speech_timeout", "ignore_backchannel", "background_noise_reduction",
        "deepgram_smart_format", "eot_threshold", "tts_text_normalization",
        "asr_smart_format", "echo_prompt_filtering", "turn_detection",
    }
)  # fmt: skip

_INPUT_KINDS = ("none", "dtmf", "speech", "any")


class LanguageOption(BaseModel):
    """A language the agent speaks: a ``<Language>`` child in TwiML."""

    model_config = ConfigDict(extra="forbid")

    code: str
    name: str = ""
    voice: str | None = None
    tts_provider: str | None = None
    transcription_provider: str | None = None
    speech_model: str | None = None


class KeypadOption(BaseModel):
    """What a key does when pressed outside digit collection."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["transfer", "say", "prompt", "end"]
    text: str = ""  # for "say": the words; for "prompt": what the caller is taken to mean


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
    goodbye_line: str = "Thanks for calling. Goodbye!"
    resume_greeting: str = "Sorry about that, I think we got cut off. Where were we?"
    apology_line: str = "Sorry, I'm having trouble on my end. Could you say that again?"
    filler_lines: list[str] = Field(default_factory=lambda: ["One moment while I check that."])
    keypad: dict[str, KeypadOption] = Field(default_factory=dict)
    relay: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    data: dict[str, str] = Field(default_factory=dict)  # business tables, relative to the data dir

    @field_validator("numbers")
    @classmethod
    def _e164(cls, numbers: list[str]) -> list[str]:
        for number in numbers:
            if not _E164.match(number):
                raise ValueError(f"{number!r} is not an E.164 number like +61390001234")
        return numbers

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
        if number is not None and not _E164.match(number):
            raise ValueError(f"{number!r} is not an E.164 number like +61390001234")
        return number

    @field_validator("relay")
    @classmethod
    def _relay_attributes(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(attrs) - RELAY_ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown ConversationRelay attributes: {', '.join(unknown)}")
        for key in (
            "interruptible",
            "welcome_greeting_interruptible",
            "report_input_during_agent_speech",
        ):
            if key in attrs and attrs[key] not in _INPUT_KINDS:
                raise ValueError(f"{key} must be one of {', '.join(_INPUT_KINDS)}")
        # Pitfall 1 in the ConversationRelay notes: its default changed in May 2025.
        if "report_input_during_agent_speech" not in attrs:
            raise ValueError("report_input_during_agent_speech must be set explicitly")
        return attrs

    @field_validator("keypad")
    @classmethod
    def _keys(cls, keypad: dict[str, KeypadOption]) -> dict[str, KeypadOption]:
        for key in keypad:
            if key not in "0123456789*#" or len(key) != 1:
                raise ValueError(f"keypad key {key!r} must be one of 0-9, * or #")
        return keypad

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


def load_profile(path: Path) -> AgentProfile:
    """Read and validate one profile, naming the file and field on error."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read agent profile: {exc}") from exc
    raw.setdefault("name", path.stem)
    try:
        return AgentProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid agent profile: {problems}") from exc


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
            raise ConfigError(f"RELAY_PROMPTS_DIR: {directory} is not a directory")
        return cls.from_profiles(
            (load_profile(p) for p in sorted(directory.glob("*.toml"))), default=default
        )

    @property
    def default(self) -> AgentProfile:
        return self.agents[self.default_name]

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
