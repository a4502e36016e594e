"""Settings, read once from the environment (and an optional ``.env``) by the CLI and the app.

Standard names are used where they exist (``OPENAI_API_KEY``, ``TWILIO_AUTH_TOKEN``,
``DATABASE_URL``...); everything of relay's own has the ``RELAY_`` prefix. Nothing below the
app and CLI reads settings: they pass explicit values down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.errors import ConfigError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Settings(BaseSettings):
    """Every setting relay reads. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # The LLM: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp...).
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    llm_model: str | None = Field(default=None, alias="RELAY_LLM_MODEL")
    llm_first_token_timeout: float = Field(default=8.0, gt=0, alias="RELAY_LLM_FIRST_TOKEN_TIMEOUT")
    llm_max_retries: int = Field(default=2, ge=0, le=10, alias="RELAY_LLM_MAX_RETRIES")
    llm_transport: Literal["lean", "httpx", "fast", "sdk"] = Field(
        default="lean", alias="RELAY_LLM_TRANSPORT"
    )  # "fast" is the old name of "httpx"
    max_tool_rounds: int = Field(default=5, ge=1, le=20, alias="RELAY_MAX_TOOL_ROUNDS")

    # Twilio and ElevenLabs.
    twilio_account_sid: str | None = Field(default=None, alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(default=None, alias="TWILIO_AUTH_TOKEN")
    twilio_from_number: str | None = Field(default=None, alias="RELAY_SMS_FROM")
    caller_id: str | None = Field(default=None, alias="RELAY_CALLER_ID")  # From of reminder calls
    remind_allow: str | None = Field(
        default=None, alias="RELAY_REMIND_ALLOW"
    )  # comma-separated E.164
    feed_secret: str | None = Field(default=None, alias="RELAY_FEED_SECRET")
    elevenlabs_api_key: str | None = Field(default=None, alias="ELEVENLABS_API_KEY")

    # Where Twilio reaches us: https://voice.example.com (the wss:// URL is derived from it).
    public_url: str | None = Field(default=None, alias="RELAY_PUBLIC_URL")

    # Storage and data.
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path("data"), alias="RELAY_DATA_DIR")
    prompts_dir: Path = Field(default=Path("prompts"), alias="RELAY_PROMPTS_DIR")
    default_agent: str | None = Field(default=None, alias="RELAY_DEFAULT_AGENT")
    chroma_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CHROMA_URL", "RELAY_CHROMA_URL")
    )
    knowledge_enabled: bool = Field(default=True, alias="RELAY_KNOWLEDGE")
    knowledge_timeout: float = Field(default=0.5, gt=0, alias="RELAY_KNOWLEDGE_TIMEOUT")
    knowledge_k: int = Field(default=4, ge=1, le=20, alias="RELAY_KNOWLEDGE_K")
    knowledge_min_score: float = Field(default=0.3, ge=0, le=1, alias="RELAY_KNOWLEDGE_MIN_SCORE")
    knowledge_autoload: bool = Field(default=True, alias="RELAY_KNOWLEDGE_AUTOLOAD")
    embeddings: Literal["local", "openai"] = Field(default="local", alias="RELAY_EMBEDDINGS")
    embedding_model: str = Field(default="text-embedding-3-small", alias="RELAY_EMBEDDING_MODEL")

    # Operations.
    admin_token: str | None = Field(default=None, alias="RELAY_ADMIN_TOKEN")
    host: str = Field(default="0.0.0.0", alias="RELAY_HOST")
    port: int = Field(default=8080, ge=1, le=65535, alias="RELAY_PORT")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="RELAY_LOG_LEVEL"
    )
    log_format: Literal["auto", "json", "console"] = Field(default="auto", alias="RELAY_LOG_FORMAT")

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an absolute https:// URL such as https://voice.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return value.rstrip("/")

    @field_validator("openai_base_url", "chroma_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("must be an absolute http(s):// URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgres://")
        elif value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        elif value.startswith("sqlite:///"):
            value = "sqlite+aiosqlite:///" + value.removeprefix("sqlite:///")
        if not (
            value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")
        ):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @property
    def llm_base_url(self) -> str:
        return self.openai_base_url or OPENAI_DEFAULT_BASE_URL

    @property
    def database(self) -> str:
        """The SQLAlchemy URL: ``DATABASE_URL`` or a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'relay.db').resolve()}"

    @property
    def knowledge_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def documents_dir(self) -> Path:
        """Where each agent's source documents live: ``<data dir>/knowledge/<collection>/``."""
        return self.data_dir / "knowledge"

    def llm_api_key(self) -> str:
        """The key to send, or a ConfigError when OpenAI itself is the server and none is set."""
        if self.openai_api_key:
            return self.openai_api_key
        if self.openai_base_url is None:
            raise ConfigError(
                "OPENAI_API_KEY is not set. Set it, or point OPENAI_BASE_URL at another "
                "OpenAI-compatible server (vLLM, Ollama, llama.cpp), or start with "
                "`relay serve --fake-llm` to try relay with the built-in scripted model."
            )
        return "not-needed"  # local servers ignore the key, but the header must be present


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into a ConfigError naming each variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            info = Settings.model_fields.get(field)
            name = (info.alias if info and info.alias else field) or field
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc
