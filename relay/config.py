"""Settings, read once from the environment (and an optional ``.env``) by the CLI and the app.

Standard names are used where they exist (``OPENAI_API_KEY``, ``TWILIO_AUTH_TOKEN``,
``DATABASE_URL``...); everything of relay's own has the ``RELAY_`` prefix. Nothing below the
app and CLI reads settings: they pass explicit values down.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.errors import ConfigError

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: ``RELAY_FORWARDED_ALLOW_IPS`` by default: uvicorn's own default, a proxy on this host.
LOCAL_PROXY = "127.0.0.1,::1"


class Settings(BaseSettings):
    """Every setting relay reads. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # The LLM: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp...).
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    llm_model: str | None = Field(default=None, alias="RELAY_LLM_MODEL")
    # The LLM client's time limits, in seconds (an agent's [llm] table may override each).
    # Connecting (TCP, TLS, or a free pooled connection); each attempt's wait for the first
    # token; the longest pause between chunks once a reply has started; and the turn's budget
    # for getting a reply started, every retry included (never less than the first-token wait).
    llm_connect_timeout: float = Field(default=3.0, gt=0, alias="RELAY_LLM_CONNECT_TIMEOUT")
    llm_first_token_timeout: float = Field(default=3.0, gt=0, alias="RELAY_LLM_FIRST_TOKEN_TIMEOUT")
    llm_read_timeout: float = Field(default=10.0, gt=0, alias="RELAY_LLM_READ_TIMEOUT")
    llm_turn_timeout: float = Field(default=4.5, gt=0, alias="RELAY_LLM_TURN_TIMEOUT")
    llm_max_retries: int = Field(default=2, ge=0, le=10, alias="RELAY_LLM_MAX_RETRIES")
    # Once a reply has said a clause's end, its stream is read at most this often (seconds;
    # sooner while little has been said): what the model sent meanwhile goes to the caller as
    # one text frame. 0: every chunk as it comes. A model writes far faster than a caller hears.
    llm_read_interval: float = Field(default=0.5, ge=0, le=1.0, alias="RELAY_LLM_READ_INTERVAL")
    llm_transport: Literal["aiohttp", "lean"] = Field(
        default="aiohttp", alias="RELAY_LLM_TRANSPORT"
    )
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
    db_pool_size: int = Field(default=10, ge=1, le=1000, alias="RELAY_DB_POOL_SIZE")
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
    # Seconds an interim transcript (partialPrompts) must stand before its query is embedded
    # ahead of the final one; and query vectors kept in memory (0: no cache).
    knowledge_prefetch_delay: float = Field(
        default=0.25, ge=0, alias="RELAY_KNOWLEDGE_PREFETCH_DELAY"
    )
    knowledge_query_cache: int = Field(default=4096, ge=0, alias="RELAY_KNOWLEDGE_QUERY_CACHE")
    embeddings: Literal["local", "openai"] = Field(default="local", alias="RELAY_EMBEDDINGS")
    embedding_model: str = Field(default="text-embedding-3-small", alias="RELAY_EMBEDDING_MODEL")
    # How often a running server looks for knowledge changes made elsewhere (CLI, admin API,
    # another worker), in seconds; and the port of the Chroma server `relay serve --workers N`
    # runs when CHROMA_URL is unset (0: any free port).
    knowledge_refresh: float = Field(default=1.0, ge=0, alias="RELAY_KNOWLEDGE_REFRESH")
    chroma_port: int = Field(default=0, ge=0, le=65535, alias="RELAY_CHROMA_PORT")
    # Worker processes of `relay serve` (`--workers`).
    workers: int = Field(default=1, ge=1, le=64, alias="RELAY_WORKERS")
    # The recorder: events kept while the database is down (beyond, the oldest are dropped),
    # and the longest a hang-up's and the shutdown's flushes wait, in seconds.
    recorder_max_events: int = Field(default=200_000, ge=100, alias="RELAY_RECORDER_MAX_EVENTS")
    recorder_flush_timeout: float = Field(default=2.0, gt=0, alias="RELAY_RECORDER_FLUSH_TIMEOUT")
    recorder_stop_timeout: float = Field(default=10.0, gt=0, alias="RELAY_RECORDER_STOP_TIMEOUT")

    # After a call (relay.services.postcall): outcomes, cost, analysis, webhook, e-mail.
    prices_path: Path | None = Field(default=None, alias="RELAY_PRICES")  # default data/prices.toml
    analysis_enabled: bool = Field(default=False, alias="RELAY_ANALYSIS")
    webhook_secret: str | None = Field(default=None, alias="RELAY_WEBHOOK_SECRET")
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, alias="RELAY_WEBHOOK_MAX_ATTEMPTS")
    smtp_url: str | None = Field(default=None, alias="RELAY_SMTP_URL")  # smtp://host:port
    email_from: str | None = Field(default=None, alias="RELAY_EMAIL_FROM")

    # Operations.
    admin_token: str | None = Field(default=None, alias="RELAY_ADMIN_TOKEN")
    host: str = Field(default="0.0.0.0", alias="RELAY_HOST")
    port: int = Field(default=8080, ge=1, le=65535, alias="RELAY_PORT")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="RELAY_LOG_LEVEL"
    )
    log_format: Literal["auto", "json", "console"] = Field(default="auto", alias="RELAY_LOG_FORMAT")

    # The ConversationRelay socket's limits (h4-protocol; README "Frames and limits").
    ws_idle_seconds: float = Field(default=300.0, ge=0, alias="RELAY_WS_IDLE_SECONDS")
    ws_max_frame_bytes: int = Field(
        default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024, alias="RELAY_WS_MAX_FRAME_BYTES"
    )
    ws_max_invalid_per_second: int = Field(
        default=2000, ge=0, alias="RELAY_WS_MAX_INVALID_PER_SECOND"
    )

    # Running for real: health, metrics, drain, admission, retention (README "Operations").
    metrics_token: str | None = Field(default=None, alias="RELAY_METRICS_TOKEN")
    ready_probe_seconds: float = Field(default=15.0, gt=0, alias="RELAY_READY_PROBE_SECONDS")
    recorder_backlog_limit: int = Field(default=50_000, ge=1, alias="RELAY_RECORDER_BACKLOG_LIMIT")
    drain_seconds: float = Field(default=120.0, ge=0, alias="RELAY_DRAIN_SECONDS")
    max_calls: int | None = Field(default=None, ge=0, alias="RELAY_MAX_CALLS")
    max_llm_concurrency: int | None = Field(default=None, ge=1, alias="RELAY_MAX_LLM_CONCURRENCY")
    rate_limit_per_second: float = Field(default=2.0, gt=0, alias="RELAY_RATE_LIMIT_PER_SECOND")
    rate_limit_burst: int = Field(default=20, ge=1, alias="RELAY_RATE_LIMIT_BURST")
    # Whose X-Forwarded-For / -Proto uvicorn believes (the per-source limits' key): the proxy's
    # addresses or networks, or "*" (anyone: only when nothing but the proxy can reach relay).
    # The default is uvicorn's own: a proxy on this host.
    forwarded_allow_ips: str = Field(default=LOCAL_PROXY, alias="RELAY_FORWARDED_ALLOW_IPS")
    retention_days: float | None = Field(default=None, gt=0, alias="RELAY_RETENTION_DAYS")
    mask_numbers_after_days: float | None = Field(
        default=None, gt=0, alias="RELAY_MASK_NUMBERS_AFTER_DAYS"
    )

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

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str) -> str:
        # uvicorn takes "*", or IP addresses and networks; anything else it keeps as a literal
        # matched against the peer's address as a string (meant for a unix socket's path,
        # whose peer it reports as no address at all: relay serve listens on TCP only), so a
        # typo would trust nobody without a word. A network with host bits set is one too.
        value = value.strip()
        if not value:
            return LOCAL_PROXY  # empty means unset, as for every setting
        if value == "*":
            return value
        entries = [entry.strip() for entry in value.split(",")]
        for entry in entries:
            if not entry:
                raise ValueError(
                    f"{value!r} has an empty entry (give addresses separated by commas)"
                )
            if entry == "*":
                raise ValueError("'*' stands alone: it trusts anyone, so no address goes with it")
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)
                else:
                    ipaddress.ip_address(entry)
            except ValueError as exc:
                if "has host bits set" in str(exc):
                    raise ValueError(
                        f"{entry!r} has host bits set (the network is "
                        f"{ipaddress.ip_network(entry, strict=False)})"
                    ) from None
                raise ValueError(
                    f"{entry!r} is not an IP address or network: give '*' or the proxy's "
                    "addresses or networks, separated by commas (10.0.0.5, 10.0.0.0/8)"
                ) from None
        return ",".join(entries)

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
    def prices(self) -> Path:
        """The price table: ``RELAY_PRICES`` or ``prices.toml`` in the data directory."""
        return self.prices_path or self.data_dir / "prices.toml"

    @property
    def knowledge_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def documents_dir(self) -> Path:
        """Where each agent's source documents live: ``<data dir>/knowledge/<collection>/``."""
        return self.data_dir / "knowledge"

    @property
    def recorder_spill_dir(self) -> Path:
        """Where a stop that could not reach the database keeps its records for the next start
        (relay.storage.spill): ``<data dir>/runtime/recorder-spill/``, a folder per database
        under it."""
        return self.data_dir / "runtime" / "recorder-spill"

    def llm_api_key(self) -> str:
        """The key to send, or a ConfigError when OpenAI itself is the server and none is set.

        The error names no command: the ``relay`` command adds how to run the one at hand with
        the scripted model (:mod:`relay.cli.main`)."""
        if self.openai_api_key:
            return self.openai_api_key
        if self.openai_base_url is None:
            raise ConfigError(
                "OPENAI_API_KEY is not set. Set it, or point OPENAI_BASE_URL at another "
                "OpenAI-compatible server (vLLM, Ollama, llama.cpp)."
            )
        return "not-needed"  # local servers ignore the key, but the header must be present


def load_settings(flags: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
    """Read the settings, turning validation errors into a ConfigError naming each variable.

    ``flags``: the command-line flag that gave each override (``{"RELAY_PORT": "--port"}``),
    named before the variable in the message (``--port / RELAY_PORT: ...``)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            info = Settings.model_fields.get(field)
            name = (info.alias if info and info.alias else field) or field
            flag = (flags or {}).get(name)
            problems.append(f"{flag} / {name}: {err['msg']}" if flag else f"{name}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc


#: ``RELAY_`` variables relay reads outside :class:`Settings` (the browser tests' Chromium and
#: screenshots); with ``RELAY_TEST_*`` (the test suite's own), never reported as unknown.
OTHER_VARIABLES = frozenset({"RELAY_CHROMIUM", "RELAY_SCREENSHOTS"})
PREFIX = "RELAY_"


def setting_names() -> frozenset[str]:
    """Every environment variable :class:`Settings` reads (each field's names)."""
    names: set[str] = set()
    for info in Settings.model_fields.values():
        if info.alias:
            names.add(info.alias)
        choices = getattr(info.validation_alias, "choices", None) or []
        names.update(choice for choice in choices if isinstance(choice, str))
    return frozenset(names)


def unknown_variables(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> list[tuple[str, str | None]]:
    """Each ``RELAY_`` variable of the environment (and of ``env_file``, the ``.env`` the
    settings read, when it exists) that relay does not know, with the nearest known name (or
    None): a misspelt setting is otherwise ignored without a word. Sorted, each once."""
    environ = os.environ if environ is None else environ
    given = set(environ)
    if env_file is None:
        configured = Settings.model_config.get("env_file")
        env_file = Path(configured) if isinstance(configured, str) else None
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values  # pydantic-settings reads .env with it

        given.update(dotenv_values(env_file))
    known = {name.upper() for name in setting_names() | OTHER_VARIABLES}  # not case-sensitive
    # Compared without the prefix, which every candidate shares (RELAY_ZZZ is near nothing).
    settings = {
        name.removeprefix(PREFIX): name for name in setting_names() if name.startswith(PREFIX)
    }
    unknown = []
    for name in sorted({name.upper() for name in given}):
        if not name.startswith(PREFIX) or name in known or name.startswith("RELAY_TEST_"):
            continue
        near = difflib.get_close_matches(name.removeprefix(PREFIX), sorted(settings), n=1)
        unknown.append((name, settings[near[0]] if near else None))
    return unknown
