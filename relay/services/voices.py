"""ElevenLabs voices, through the ``elevenlabs`` package: list the account's voices, preview one,
and check at start-up that every agent's ElevenLabs voice exists.

Twilio's voice strings carry more than the ElevenLabs voice id:
``<voiceId>[-<modelId>][-<speed>_<stability>_<similarity>]`` (notes, section 5), e.g.
``UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8``. :func:`parse_voice` splits one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from elevenlabs import ElevenLabs
from elevenlabs.core.api_error import ApiError

from relay.agents import AgentProfile
from relay.errors import ConfigError, RelayError

log = structlog.get_logger("relay.services.voices")

_ID = re.compile(r"^[A-Za-z0-9]{16,32}$")
_TUNING = re.compile(r"^(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)$")
#: Twilio's model tokens and the ElevenLabs model ids they stand for.
_MODELS = {
    "flash_v2_5": "eleven_flash_v2_5",
    "flash_v2": "eleven_flash_v2",
    "turbo_v2_5": "eleven_turbo_v2_5",
    "turbo_v2": "eleven_turbo_v2",
}


class VoiceError(RelayError):
    """ElevenLabs could not be asked (network, key) or refused the request."""


@dataclass(frozen=True)
class VoiceSpec:
    """A Twilio ElevenLabs voice string, taken apart."""

    voice_id: str
    model: str | None = None  # Twilio's token, e.g. flash_v2_5
    speed: float | None = None
    stability: float | None = None
    similarity: float | None = None

    @property
    def model_id(self) -> str | None:
        """The ElevenLabs model id (``eleven_flash_v2_5``); unknown tokens pass through."""
        if self.model is None:
            return None
        return _MODELS.get(self.model, self.model if self.model.startswith("eleven_") else None)


def parse_voice(voice: str) -> VoiceSpec:
    """``UgBB…-flash_v2_5-1.0_0.8_0.8`` → VoiceSpec(voice_id, model, speed, stability, similarity)."""
    parts = voice.strip().split("-")
    voice_id, rest = parts[0], parts[1:]
    model = None
    tuning: tuple[float, float, float] | None = None
    for part in rest:
        match = _TUNING.match(part)
        if match:
            a, b, c = (float(x) for x in match.groups())
            tuning = (a, b, c)
        elif part:
            model = part
    if tuning is None:
        return VoiceSpec(voice_id, model)
    return VoiceSpec(voice_id, model, *tuning)


def is_elevenlabs_id(voice_id: str) -> bool:
    return bool(_ID.match(voice_id))


@dataclass(frozen=True)
class Voice:
    voice_id: str
    name: str
    category: str
    labels: dict[str, str]
    preview_url: str | None


class Voices:
    """The account's ElevenLabs voices (``ELEVENLABS_API_KEY``)."""

    def __init__(
        self,
        api_key: str,
        *,
        http: httpx.Client | None = None,
        base_url: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=timeout)
        self._client = ElevenLabs(api_key=api_key, base_url=base_url, httpx_client=self._http)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Voices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list(self) -> list[Voice]:
        """``GET /v1/voices``: the voices of the account (its own and the ones it added)."""
        response = self._call(self._client.voices.get_all)
        return [
            Voice(
                voice_id=v.voice_id,
                name=v.name or "",
                category=str(v.category or ""),
                labels={str(k): str(val) for k, val in (v.labels or {}).items()},
                preview_url=v.preview_url,
            )
            for v in response.voices
        ]

    def exists(self, voice_id: str) -> bool:
        """``GET /v1/voices/{id}``: whether the voice can be used (also library voices that are
        not in the account's list)."""
        try:
            self._client.voices.get(voice_id)
        except ApiError as exc:
            if exc.status_code in (400, 404, 422):
                return False
            raise _voice_error(exc) from exc
        except httpx.HTTPError as exc:
            raise VoiceError(f"ElevenLabs is unreachable: {exc!r}") from exc
        return True

    def preview(
        self, voice: str, text: str, *, output_format: str = "mp3_44100_128"
    ) -> Iterator[bytes]:
        """``POST /v1/text-to-speech/{id}``: ``text`` spoken by ``voice`` (a voice id, a Twilio
        voice string, or a voice name from :meth:`list`)."""
        spec = parse_voice(voice)
        if not is_elevenlabs_id(spec.voice_id):
            named = [v for v in self.list() if v.name.lower() == voice.strip().lower()]
            if not named:
                raise VoiceError(f"no voice with the id or name {voice!r} (see: relay voices list)")
            spec = VoiceSpec(named[0].voice_id)
        options: dict[str, Any] = {"text": text, "output_format": output_format}
        if spec.model_id:
            options["model_id"] = spec.model_id
        if spec.speed is not None:
            from elevenlabs.types import VoiceSettings

            options["voice_settings"] = VoiceSettings(
                speed=spec.speed, stability=spec.stability, similarity_boost=spec.similarity
            )
        chunks = self._call(lambda: self._client.text_to_speech.convert(spec.voice_id, **options))
        try:
            yield from chunks
        except ApiError as exc:
            raise _voice_error(exc) from exc
        except httpx.HTTPError as exc:
            raise VoiceError(f"ElevenLabs is unreachable: {exc!r}") from exc

    @staticmethod
    def _call(function: Any) -> Any:
        try:
            return function()
        except ApiError as exc:
            raise _voice_error(exc) from exc
        except httpx.HTTPError as exc:
            raise VoiceError(f"ElevenLabs is unreachable: {exc!r}") from exc


def _voice_error(exc: ApiError) -> VoiceError:
    detail: Any = exc.body
    if isinstance(detail, dict):
        inner = detail.get("detail", detail)
        detail = inner.get("message", inner) if isinstance(inner, dict) else inner
    if exc.status_code == 401:
        return VoiceError(f"ElevenLabs refused ELEVENLABS_API_KEY (401): {detail}")
    return VoiceError(f"ElevenLabs answered {exc.status_code}: {detail}")


def agent_voices(agent: AgentProfile) -> list[tuple[str, str]]:
    """``(where, voice id)`` for every ElevenLabs voice an agent uses: ``[relay]``, each
    ``[[languages]]`` entry and ``[failover]`` (a voice whose provider is not ElevenLabs, or
    not an ElevenLabs id, is left out)."""
    relay_provider = str(agent.relay.get("tts_provider", "ElevenLabs"))
    found: list[tuple[str, str]] = []

    def add(where: str, voice: Any, provider: Any) -> None:
        if not isinstance(voice, str) or str(provider or relay_provider).lower() != "elevenlabs":
            return
        voice_id = parse_voice(voice).voice_id
        if is_elevenlabs_id(voice_id):
            found.append((where, voice_id))

    add("[relay] voice", agent.relay.get("voice"), agent.relay.get("tts_provider"))
    for option in agent.languages:
        add(f"[[languages]] {option.code} voice", option.voice, option.tts_provider)
    if agent.failover is not None:
        add("[failover] voice", agent.failover.voice, agent.failover.tts_provider)
        for backup in agent.failover.languages:
            add(f"[[failover.languages]] {backup.code} voice", backup.voice, backup.tts_provider)
    return found


def check_agent_voices(
    agents: Iterable[AgentProfile], voices: Voices, *, prompts_dir: Path | None = None
) -> int:
    """Raise :class:`ConfigError` naming the profile file and field for a voice ElevenLabs does
    not know; return how many distinct voices were checked. One ``GET /v1/voices`` covers the
    account's voices; any other id is asked about on its own (library voices)."""
    wanted: dict[str, list[tuple[AgentProfile, str]]] = {}
    for agent in agents:
        for where, voice_id in agent_voices(agent):
            wanted.setdefault(voice_id, []).append((agent, where))
    if not wanted:
        return 0
    known = {v.voice_id for v in voices.list()}
    for voice_id, users in wanted.items():
        if voice_id in known or voices.exists(voice_id):
            continue
        agent, where = users[0]
        path = agent.source or (
            prompts_dir / f"{agent.name}.toml" if prompts_dir else Path(f"{agent.name}.toml")
        )
        raise ConfigError(
            f"{path}: {where}: ElevenLabs has no voice {voice_id!r} "
            "(check the id with: relay voices list)"
        )
    return len(wanted)
