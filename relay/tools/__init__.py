"""Tools the model can call, and the registry that gives each agent its own set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relay.errors import ConfigError
from relay.tools.base import (
    CollectDigits,
    Hangup,
    SendDigits,
    SessionAction,
    SwitchLanguage,
    Tool,
    ToolContext,
    ToolResult,
    Transfer,
    invoke,
    tool,
)

__all__ = [
    "CollectDigits",
    "Hangup",
    "SendDigits",
    "SessionAction",
    "SwitchLanguage",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "ToolResult",
    "Transfer",
    "invoke",
    "tool",
]


class ToolRegistry:
    """Every tool this process knows, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._schemas: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self._tools:
            raise ValueError(f"two tools are named {t.name!r}")
        self._schemas.clear()
        self._tools[t.name] = t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def select(self, names: Iterable[str], *, agent: str) -> dict[str, Tool]:
        """The tools an agent lists, failing at start on a name that does not exist."""
        chosen: dict[str, Tool] = {}
        for name in names:
            t = self._tools.get(name)
            if t is None:
                raise ConfigError(
                    f"agent {agent!r} lists unknown tool {name!r} (known: {', '.join(self.names())})"
                )
            chosen[name] = t
        return chosen

    def schemas(self, tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
        """The JSON schemas of a selection, built once per selection and shared (read-only)."""
        key = tuple(tools)
        cached = self._schemas.get(key)
        if cached is None:
            cached = self._schemas[key] = [t.openai_schema() for t in tools.values()]
        return cached


def default_registry() -> ToolRegistry:
    """All the tools relay ships."""
    from relay.tools import business, calls

    return ToolRegistry([*calls.TOOLS, *business.TOOLS])
