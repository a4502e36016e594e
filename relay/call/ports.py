"""The small ports a call talks to, and the bundle of shared objects the app hands every call.

``Retrieved`` (what a retriever returns) lives with the retrieval service and is re-exported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from relay.agents import AgentProfile, AgentRegistry
from relay.call.trouble import FailureCounter
from relay.llm.types import ChatModel
from relay.services.retrieval import NotReady, Retrieved
from relay.storage.db import Database
from relay.storage.recorder import Recorder
from relay.tools import ToolRegistry

__all__ = ["CallDependencies", "CallerDirectory", "NotReady", "Retrieved", "Retriever"]

#: After this long, a running tool earns a filler line (sent preemptible, so the answer replaces it).
FILLER_AFTER = 0.7
#: A pause this long ends keypad digit collection.
DIGIT_PAUSE = 3.0


class Retriever(Protocol):
    """Knowledge retrieval for a turn (see relay.services.retrieval)."""

    async def retrieve(self, agent: AgentProfile, query: str) -> Retrieved | None: ...


class CallerDirectory(Protocol):
    """Finds who is calling, at setup (see relay.services.customers)."""

    async def lookup(self, agent: AgentProfile, phone: str) -> Mapping[str, Any] | None: ...


@dataclass
class CallDependencies:
    """The shared objects every session uses, built once by the app."""

    agents: AgentRegistry
    llm: ChatModel
    recorder: Recorder
    db: Database
    http: httpx.AsyncClient
    tools: ToolRegistry
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per agent name
    retriever: Retriever | None = None
    directory: CallerDirectory | None = None
    model_override: str | None = None
    max_tool_rounds: int = 5
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    speech_seconds: Callable[[str], float] = lambda text: min(8.0, 0.5 + len(text) / 15.0)
    filler_after: float = FILLER_AFTER
    digit_pause: float = DIGIT_PAUSE
    #: LLM failures of every call in this process, by kind (``llm_failures.counts()``).
    llm_failures: FailureCounter = field(default_factory=FailureCounter)
    #: The session serving each live call, by CallSid (a late close of an older socket for the
    #: same call must not overwrite the live call's record).
    live: dict[str, object] = field(default_factory=dict)
