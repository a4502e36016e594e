"""Fixtures for the business tools: a real SQLite database, the shipped agents and their data,
and a :class:`Phone` that calls tools the way a session does (validated arguments, the tool's
timeout, and the idempotency ledger for side effects)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from relay.agents import AgentProfile, AgentRegistry
from relay.storage.db import Database
from relay.tools import ToolContext, ToolRegistry, ToolResult, default_registry, invoke, ledger
from relay.tools.business import load_services

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
MEL = ZoneInfo("Australia/Melbourne")
#: Thursday 19 November 2026, 10 am in Melbourne (daylight saving: UTC+11).
NOW = datetime(2026, 11, 19, 10, 0, tzinfo=MEL)
CALLER = "+61412000111"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A fresh database: SQLite, then PostgreSQL (``database_url`` in tests/conftest.py)."""
    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="session")
def agents() -> AgentRegistry:
    return AgentRegistry.load(REPO / "prompts")


@pytest.fixture(scope="session")
def services(agents: AgentRegistry) -> dict[str, dict[str, Any]]:
    return {name: load_services(agent, DATA) for name, agent in agents.agents.items()}


@pytest.fixture(scope="session")
def registry() -> ToolRegistry:
    return default_registry()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@dataclass
class Phone:
    """One call to an agent: runs its tools as ``CallSession._call_tool`` does."""

    db: Database
    agent: AgentProfile
    services: Mapping[str, Any]
    http: httpx.AsyncClient
    registry: ToolRegistry
    caller: str = CALLER
    call_sid: str = "CA00000000000000000000000000000001"
    now: datetime = NOW
    extras: dict[str, Any] = field(default_factory=dict)

    async def __call__(self, tool_name: str, /, **arguments: Any) -> ToolResult:
        tool = self.registry.get(tool_name)
        assert tool is not None, tool_name
        assert tool_name in self.agent.tools, f"{self.agent.name} does not list {tool_name}"
        parsed = tool.parse(orjson.dumps(arguments).decode())
        ctx = ToolContext(
            call_sid=self.call_sid, agent=self.agent, caller=self.caller, db=self.db,
            http=self.http, now=lambda: self.now, services=self.services, extras=self.extras,
        )  # fmt: skip
        if tool.side_effect:
            key = tool.idempotency_key(self.call_sid, parsed)
            return await ledger.once(
                self.db, key, tool.name, self.call_sid, lambda: invoke(tool, ctx, parsed)
            )
        return await invoke(tool, ctx, parsed)

    def another(self, **changes: Any) -> Phone:
        """Another call (a different CallSid unless given), e.g. a second caller."""
        changes.setdefault("call_sid", self.call_sid[:-1] + str(int(self.call_sid[-1]) + 1))
        return replace(self, **changes)


@pytest.fixture
def phone(
    db: Database,
    agents: AgentRegistry,
    services: dict[str, dict[str, Any]],
    http: httpx.AsyncClient,
    registry: ToolRegistry,
) -> Callable[..., Phone]:
    """``phone("car-service")``: a call to that agent."""

    def make(agent: str = "piano-removals", **changes: Any) -> Phone:
        return Phone(db, agents.get(agent), services[agent], http, registry, **changes)

    return make
