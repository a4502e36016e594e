"""The exception hierarchy of relay.

Foreign errors (httpx, openai, SQLAlchemy, pydantic) are converted at the adapter that meets
them (``raise ... from exc``), so the rest of the service only handles these.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or invalid. The message names the variable."""


class ProtocolError(RelayError):
    """A ConversationRelay frame could not be parsed or failed validation."""

    def __init__(self, message: str, *, raw: str | bytes | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class LLMError(RelayError):
    """The language model could not produce (or finish) a reply.

    ``kind`` says what failed, as counted: ``connect``, ``timeout``, ``status``,
    ``malformed``, ``stream-broken`` or ``config``.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        kind: str = "stream-broken",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.kind = kind
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class FirstTokenTimeout(LLMError):
    """The model sent nothing within the first-token deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no first token within {seconds:.1f}s", retryable=True, kind="timeout")


class LLMConfigError(LLMError):
    """The LLM URL answers, but not with an event stream (a JSON body, a redirect): the base
    URL or a proxy in front of it is misconfigured. Never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, kind="config")


class ToolError(RelayError):
    """A tool failed. The message is shown to the model, so write it for the model."""


class StorageError(RelayError):
    """The database could not be reached or refused a write."""


class AgentNotFound(RelayError):
    """No agent profile matches the request."""
