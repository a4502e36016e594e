"""Tools the model can call, and the registry that gives each agent its own set."""

from __future__ import annotations

from collections.abc import Iterable

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
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if t.name in self._tools:
            raise ValueError(f"two tools are named {t.name!r}")
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


def default_registry() -> ToolRegistry:
    """All the tools relay ships."""
    from relay.tools import calls

    registry = ToolRegistry(calls.TOOLS)
    try:
        from relay.tools import business
    except ImportError:  # pragma: no cover - the business tools are part of the package
        return registry
    for t in business.TOOLS:
        registry.add(t)
    return registry
