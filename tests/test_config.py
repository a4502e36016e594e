"""Settings: environment names, validation messages that name the variable, derived values."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import OPENAI_DEFAULT_BASE_URL, load_settings, unknown_variables
from relay.errors import ConfigError


@pytest.fixture(autouse=True)
def isolated(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host variables, and a working directory without a .env file."""
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = load_settings()

    assert settings.llm_base_url == OPENAI_DEFAULT_BASE_URL
    assert settings.llm_transport == "aiohttp"
    assert settings.llm_max_retries == 2
    assert settings.public_url is None
    assert settings.twilio_auth_token is None
    assert settings.data_dir == Path("data")
    assert settings.prompts_dir == Path("prompts")
    assert settings.port == 8080


def test_overrides_use_the_environment_names(tmp_path: Path) -> None:
    settings = load_settings(
        OPENAI_BASE_URL="http://127.0.0.1:9999/v1/",
        RELAY_DATA_DIR=str(tmp_path / "d"),
        RELAY_PROMPTS_DIR=str(tmp_path / "p"),
        TWILIO_AUTH_TOKEN="tok",
        RELAY_LLM_TRANSPORT="lean",
        RELAY_LLM_FIRST_TOKEN_TIMEOUT="1.5",
    )

    assert settings.llm_base_url == "http://127.0.0.1:9999/v1"  # trailing slash dropped
    assert settings.data_dir == tmp_path / "d"
    assert settings.prompts_dir == tmp_path / "p"
    assert settings.twilio_auth_token == "tok"
    assert settings.llm_transport == "lean"
    assert settings.llm_first_token_timeout == 1.5


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PUBLIC_URL", "https://voice.example.com/")
    monkeypatch.setenv("RELAY_PORT", "9090")
    monkeypatch.setenv("CHROMA_URL", "http://chroma:8000")

    settings = load_settings()

    assert settings.public_url == "https://voice.example.com"
    assert settings.port == 9090
    assert settings.chroma_url == "http://chroma:8000"


def test_a_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "TWILIO_AUTH_TOKEN=from-dotenv\nRELAY_LOG_LEVEL=debug\n", encoding="utf-8"
    )

    settings = load_settings()

    assert settings.twilio_auth_token == "from-dotenv"
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RELAY_PUBLIC_URL", "voice.example.com", "RELAY_PUBLIC_URL"),
        ("RELAY_PUBLIC_URL", "wss://voice.example.com", "RELAY_PUBLIC_URL"),
        ("RELAY_PUBLIC_URL", "https://voice.example.com/?a=1", "RELAY_PUBLIC_URL"),
        ("OPENAI_BASE_URL", "localhost:11434", "OPENAI_BASE_URL"),
        ("DATABASE_URL", "mysql://db/relay", "DATABASE_URL"),
        ("RELAY_LLM_TRANSPORT", "carrier-pigeon", "RELAY_LLM_TRANSPORT"),
        ("RELAY_LLM_MAX_RETRIES", "11", "RELAY_LLM_MAX_RETRIES"),
        ("RELAY_LLM_FIRST_TOKEN_TIMEOUT", "0", "RELAY_LLM_FIRST_TOKEN_TIMEOUT"),
        ("RELAY_PORT", "70000", "RELAY_PORT"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**{name: value})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db/relay", "postgresql+asyncpg://u:p@db/relay"),
        ("postgresql://u:p@db/relay", "postgresql+asyncpg://u:p@db/relay"),
        ("sqlite:///tmp/relay.db", "sqlite+aiosqlite:///tmp/relay.db"),
        ("sqlite+aiosqlite:///tmp/relay.db", "sqlite+aiosqlite:///tmp/relay.db"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(given: str, expected: str) -> None:
    settings = load_settings(DATABASE_URL=given)

    assert settings.database_url == expected
    assert settings.database == expected


def test_the_default_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(RELAY_DATA_DIR=str(tmp_path / "data"))

    assert settings.database == f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'relay.db').resolve()}"
    assert settings.knowledge_path == tmp_path / "data" / "chroma"


def test_an_api_key_is_needed_only_for_openai_itself() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        load_settings().llm_api_key()

    assert load_settings(OPENAI_BASE_URL="http://127.0.0.1:8000/v1").llm_api_key() == "not-needed"
    assert load_settings(OPENAI_API_KEY="sk-test").llm_api_key() == "sk-test"


def test_empty_strings_mean_unset() -> None:
    settings = load_settings(RELAY_PUBLIC_URL="", OPENAI_BASE_URL="", DATABASE_URL="")

    assert settings.public_url is None
    assert settings.openai_base_url is None
    assert settings.database_url is None


def test_an_invalid_value_given_by_a_flag_names_the_flag_and_the_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"RELAY_PORT": "--port"}, RELAY_PORT=70000, RELAY_WORKERS=0)

    assert str(raised.value) == (
        "invalid settings: RELAY_WORKERS: Input should be greater than or equal to 1; "
        "--port / RELAY_PORT: Input should be less than or equal to 65535"
    )


def test_unknown_relay_variables_are_found_with_the_nearest_setting(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RELAY_MAX_CALL=3\nRELAY_PORT=9090\nOTHER=1\n", encoding="utf-8")
    environ = {
        "RELAY_PROT": "18264",
        "RELAY_PORT": "18264",
        "RELAY_ZZZ": "1",  # nothing near
        "relay_port": "1",  # the settings' names are not case-sensitive
        "PATH": "/usr/bin",
    }

    assert unknown_variables(environ, env_file) == [
        ("RELAY_MAX_CALL", "RELAY_MAX_CALLS"),
        ("RELAY_PROT", "RELAY_PORT"),
        ("RELAY_ZZZ", None),
    ]


def test_the_relay_variables_read_outside_the_settings_are_not_unknown(tmp_path: Path) -> None:
    """The browser tests' Chromium and screenshots, the test suite's PostgreSQL, and every
    setting (``RELAY_CHROMA_URL`` is CHROMA_URL's other name)."""
    environ = {
        name: "x"
        for name in (
            "RELAY_CHROMIUM", "RELAY_SCREENSHOTS", "RELAY_TEST_POSTGRES_URL",
            "RELAY_LLM_READ_INTERVAL", "RELAY_CHROMA_URL", "RELAY_MASK_NUMBERS_AFTER_DAYS",
        )
    }  # fmt: skip

    assert unknown_variables(environ, tmp_path / "no.env") == []


def test_the_dot_env_file_read_by_default_is_the_settings_one(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RELAY_PROT=1\n", encoding="utf-8")  # in the working directory

    assert unknown_variables({}) == [("RELAY_PROT", "RELAY_PORT")]
