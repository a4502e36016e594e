"""``relay voices list|preview|check`` and the start-up voice check, against ElevenLabs' REST API
mocked with respx in its exact wire format (``GET /v1/voices``, ``GET /v1/voices/{id}``,
``POST /v1/text-to-speech/{id}``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import structlog

from relay.cli.main import main
from relay.errors import ConfigError
from relay.services.voices import Voices, check_agent_voices, parse_voice
from relay.web.app import preflight

REPO = Path(__file__).resolve().parents[2]
API = "https://api.elevenlabs.io"
KEY = "el-test-key"
MARK = "UgBBYS2sOqTuMpoF3BR0"  # the shipped agents' voice (an ElevenLabs library voice)
OWN = "NYC9WEgkq1u4jiqBseQ9"

VOICES = {
    "voices": [
        {
            "voice_id": OWN,
            "name": "Kerry",
            "samples": None,
            "category": "cloned",
            "fine_tuning": None,
            "labels": {"accent": "australian", "gender": "female", "use_case": "conversational"},
            "description": "Our receptionist",
            "preview_url": f"https://storage.googleapis.com/eleven-public-prod/{OWN}/preview.mp3",
            "available_for_tiers": [],
            "settings": None,
            "sharing": None,
            "high_quality_base_model_ids": ["eleven_flash_v2_5"],
            "verified_languages": [],
            "is_owner": True,
            "is_legacy": False,
            "is_mixed": False,
            "created_at_unix": 1735689600,
        },
        {
            "voice_id": "21m00Tcm4TlvDq8ikWAM",
            "name": "Rachel",
            "category": "premade",
            "labels": {"accent": "american", "gender": "female"},
            "preview_url": "https://storage.googleapis.com/eleven-public-prod/premade/21m00Tcm4TlvDq8ikWAM/preview.mp3",
        },
    ],
    "has_more": False,
    "total_count": 2,
    "next_page_token": None,
}
MARK_VOICE = {
    "voice_id": MARK,
    "name": "Mark - Natural Conversations",
    "category": "professional",
    "labels": {"accent": "american"},
    "preview_url": None,
}
NOT_FOUND = {
    "detail": {
        "status": "voice_not_found",
        "message": "A voice with the voice_id {id} was not found.",
    }
}


def not_found(voice_id: str) -> httpx.Response:
    body = orjson.loads(orjson.dumps(NOT_FOUND).decode().replace("{id}", voice_id))
    return httpx.Response(404, json=body)


@pytest.fixture
def env(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RELAY_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "warning")
    monkeypatch.setenv("ELEVENLABS_API_KEY", KEY)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    yield setenv
    structlog.reset_defaults()


def test_parse_voice() -> None:
    spec = parse_voice(f"{MARK}-flash_v2_5-1.0_0.8_0.6")
    assert (spec.voice_id, spec.model, spec.model_id) == (MARK, "flash_v2_5", "eleven_flash_v2_5")
    assert (spec.speed, spec.stability, spec.similarity) == (1.0, 0.8, 0.6)
    assert parse_voice(f"{MARK}-1.2_0.6_0.8").model is None
    assert parse_voice(MARK).speed is None


@respx.mock(base_url=API, assert_all_called=True)
def test_voices_list(
    respx_mock: respx.MockRouter, env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    route = respx_mock.get("/v1/voices").respond(json=VOICES)

    assert main(["voices", "list"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{OWN}  Kerry ") and "accent: australian" in out[0]
    assert out[1].startswith("21m00Tcm4TlvDq8ikWAM  Rachel")
    assert route.calls[0].request.headers["xi-api-key"] == KEY


@respx.mock(base_url=API)
def test_voices_list_json(
    respx_mock: respx.MockRouter, env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.get("/v1/voices").respond(json={"voices": [*VOICES["voices"], MARK_VOICE]})

    assert main(["voices", "list", "--json"]) == 0

    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["voice_id"] for r in rows] == [OWN, "21m00Tcm4TlvDq8ikWAM", MARK]
    assert rows[2]["used_by"] == ["car-service", "piano-removals", "reminders"]
    assert rows[0]["used_by"] == []
    assert rows[0]["labels"]["gender"] == "female"
    assert rows[0]["preview_url"].endswith("/preview.mp3")


@respx.mock(base_url=API)
def test_voices_preview_from_a_twilio_voice_string(
    respx_mock: respx.MockRouter, env: Any, tmp_path: Path
) -> None:
    audio = b"ID3\x04\x00" + bytes(range(256)) * 8
    route = respx_mock.post(f"/v1/text-to-speech/{MARK}").respond(
        200, content=audio, headers={"content-type": "audio/mpeg"}
    )

    out = tmp_path / "sample.mp3"
    code = main(["voices", "preview", f"{MARK}-flash_v2_5-1.1_0.8_0.6", "G'day!", "-o", str(out)])

    assert code == 0
    assert out.read_bytes() == audio
    request = route.calls[0].request
    assert request.url.params["output_format"] == "mp3_44100_128"
    assert request.headers["xi-api-key"] == KEY
    body = orjson.loads(request.content)
    assert body["text"] == "G'day!"
    assert body["model_id"] == "eleven_flash_v2_5"
    assert body["voice_settings"] == {"speed": 1.1, "stability": 0.8, "similarity_boost": 0.6}


@respx.mock(base_url=API)
def test_voices_preview_by_name(respx_mock: respx.MockRouter, env: Any, tmp_path: Path) -> None:
    respx_mock.get("/v1/voices").respond(json=VOICES)
    respx_mock.post(f"/v1/text-to-speech/{OWN}").respond(200, content=b"audio")

    out = tmp_path / "kerry.mp3"
    assert (
        main(["voices", "preview", "kerry", "Hello", "-o", str(out), "--format", "ulaw_8000"]) == 0
    )
    assert out.read_bytes() == b"audio"


@respx.mock(base_url=API)
def test_a_refused_key_is_reported(
    respx_mock: respx.MockRouter, env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    respx_mock.get("/v1/voices").respond(
        401, json={"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
    )

    assert main(["voices", "list"]) == 1
    assert "ELEVENLABS_API_KEY (401): Invalid API key" in capsys.readouterr().err


def test_voices_need_a_key(
    env: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY")

    assert main(["voices", "list"]) == 2
    assert "ELEVENLABS_API_KEY is not set" in capsys.readouterr().err


# -- the start-up check ----------------------------------------------------------------------


def write_agent(prompts: Path, voice: str) -> Path:
    text = (REPO / "prompts" / "piano-removals.toml").read_text(encoding="utf-8")
    path = prompts / "piano-removals.toml"
    path.write_text(text.replace(MARK, voice), encoding="utf-8")
    return path


@respx.mock(base_url=API, assert_all_called=True)
def test_preflight_accepts_the_shipped_voices(
    respx_mock: respx.MockRouter, make_settings: Callable[..., Any]
) -> None:
    respx_mock.get("/v1/voices").respond(json=VOICES)
    respx_mock.get(f"/v1/voices/{MARK}").respond(json=MARK_VOICE)  # a library voice

    preflight(make_settings(ELEVENLABS_API_KEY=KEY, OPENAI_API_KEY="sk-test"))


@respx.mock(base_url=API)
def test_preflight_stops_on_a_wrong_voice_naming_the_file(
    respx_mock: respx.MockRouter, make_settings: Callable[..., Any], prompts_dir: Path
) -> None:
    wrong = "ZZZZZZZZZZZZZZZZZZZZ"
    path = write_agent(prompts_dir, wrong)
    respx_mock.get("/v1/voices").respond(json=VOICES)
    respx_mock.get(f"/v1/voices/{wrong}").mock(return_value=not_found(wrong))

    with pytest.raises(ConfigError) as caught:
        preflight(make_settings(ELEVENLABS_API_KEY=KEY, OPENAI_API_KEY="sk-test"))

    message = str(caught.value)
    assert str(path) in message
    assert "[relay] voice" in message and wrong in message


@respx.mock(base_url=API)
def test_preflight_skips_the_check_without_a_key(
    respx_mock: respx.MockRouter, make_settings: Callable[..., Any]
) -> None:
    preflight(make_settings(OPENAI_API_KEY="sk-test"))

    assert not respx_mock.calls


@respx.mock(base_url=API)
def test_preflight_goes_on_when_elevenlabs_is_unreachable(
    respx_mock: respx.MockRouter, make_settings: Callable[..., Any]
) -> None:
    respx_mock.get("/v1/voices").mock(side_effect=httpx.ConnectError("no route"))

    preflight(make_settings(ELEVENLABS_API_KEY=KEY, OPENAI_API_KEY="sk-test"))


@respx.mock(base_url=API)
def test_only_elevenlabs_voices_are_checked(
    respx_mock: respx.MockRouter, prompts_dir: Path
) -> None:
    from relay.agents import load_profile

    text = (prompts_dir / "piano-removals.toml").read_text(encoding="utf-8")
    text += '\n[failover]\n[[failover.languages]]\ncode = "en-AU"\ntts_provider = "Google"\nvoice = "en-AU-Neural2-A"\n'
    (prompts_dir / "piano-removals.toml").write_text(text, encoding="utf-8")
    agent = load_profile(prompts_dir / "piano-removals.toml")
    respx_mock.get("/v1/voices").respond(json={"voices": [MARK_VOICE]})

    with Voices(KEY) as voices:
        assert check_agent_voices([agent], voices) == 1  # Mark, once; the Google voice is not asked
