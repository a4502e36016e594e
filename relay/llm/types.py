"""What a call session and the LLM client say to each other: requests, events, the seam.

Nothing here does I/O. :class:`ChatModel` is the seam a session streams from; the real one is
:class:`relay.llm.client.OpenAIChat`, tests and replay plug in their own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from relay.agents import LLMLimits


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The client's time limits, in seconds. ``None`` here means "the client's setting".

    ``connect``: a connection (TCP and TLS, or a free slot in the pool).
    ``first_token``: one attempt's wait for the model's first content or tool-call delta
    (status line and headers included).
    ``read``: the longest pause between two pieces of a reply once it has started.
    ``turn``: the whole turn's budget for getting a reply started: every attempt, back-off
    and ``Retry-After`` wait before the first token fits in it. It is never shorter than
    ``first_token`` (a turn always gets at least one full first-token wait).
    """

    connect: float | None = None
    first_token: float | None = None
    read: float | None = None
    turn: float | None = None

    @classmethod
    def of(cls, limits: LLMLimits) -> Timeouts:
        """An agent's ``[llm]`` table as request timeouts (unset values: the settings)."""
        return cls(
            limits.connect_timeout, limits.first_token_timeout, limits.read_timeout,
            limits.turn_timeout,
        )  # fmt: skip

    def over(self, defaults: Timeouts) -> Timeouts:
        """These values where set, ``defaults`` elsewhere."""
        return Timeouts(
            connect=self.connect if self.connect is not None else defaults.connect,
            first_token=self.first_token if self.first_token is not None else defaults.first_token,
            read=self.read if self.read is not None else defaults.read,
            turn=self.turn if self.turn is not None else defaults.turn,
        )


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat-completions request.

    ``timeouts`` overrides the client's settings for this request (an agent's own limits);
    ``deadline`` (a ``time.perf_counter()`` value) is when the reply must have started at the
    latest, whatever the timeouts say (the session's budget for the turn). Usage is asked
    for with ``stream_options.include_usage`` unless ``include_usage`` is false.
    """

    model: str
    messages: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    timeouts: Timeouts | None = None
    deadline: float | None = None
    include_usage: bool = True
    #: "auto" (the default, not sent), "none", "required" or {"type": "function", "function":
    #: {"name": ...}} (a guard's re-ask requires the quote tool, issue 15).
    tool_choice: str | dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages, "stream": True}
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.tools:
            body["tools"] = self.tools
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply, exactly as the model sent it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, assembled from its streamed deltas."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used, as the server reported them (or estimated: ``estimated``).

    ``cached_tokens`` is the part of the prompt the server read from its prompt cache
    (``usage.prompt_tokens_details.cached_tokens``; 0 when it says nothing).
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's shape (what recordings store), plus ``estimated``."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "estimated": self.estimated,
        }

    @classmethod
    def from_wire(cls, usage: Mapping[str, Any]) -> Usage | None:
        """From an OpenAI ``usage`` object; None when it has no token counts."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
        if not isinstance(cached, int):
            cached = usage.get("cached_tokens")  # some servers put it at the top level
        return cls(prompt, completion, cached if isinstance(cached, int) else 0)

    @classmethod
    def estimate(cls, request: ChatRequest, text: str, tool_calls: Sequence[ToolCall]) -> Usage:
        """A local count for servers that report none: about 4 characters per token.

        The model's own tokenizer is not at hand, so this is the usual rule of thumb for
        English with BPE tokenizers (a few per cent off either way), plus 4 tokens of
        framing per message as OpenAI counts them. Marked ``estimated``.
        """
        prompt = sum(4 + _chars(m.get("content")) // 4 for m in request.messages)
        if request.tools:
            prompt += len(orjson.dumps(list(request.tools))) // 4
        completion = math.ceil(len(text) / 4)
        for call in tool_calls:
            completion += math.ceil((len(call.name) + len(call.arguments)) / 4) + 3
        return cls(prompt + 3, completion, 0, estimated=True)


def _chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return 0


@dataclass(frozen=True, slots=True)
class Done:
    """The stream finished normally."""

    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    attempts: int = 1
    usage: Usage | None = None


LLMEvent = TextDelta | Done


class ChatModel(Protocol):
    """What a call session needs from a language model."""

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        """Stream the reply. Raises :class:`~relay.errors.LLMError`; never anything else."""
        ...
