"""Expectations (``expect`` in a recording): what a replay must see the agent do now."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from relay.replay.compare import Item, parse_arguments, quoted, shorten

Mode = Literal["cassette", "live"]


@dataclass
class Checked:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def expectations_for(expect: Mapping[str, Any], mode: Mode) -> dict[str, Any]:
    """The expectations that apply in ``mode``: the common ones plus its own section."""
    merged = {k: v for k, v in expect.items() if k not in ("cassette", "live")}
    for key, value in dict(expect.get(mode) or {}).items():
        if isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def check_expectations(
    expect: Mapping[str, Any], now: list[Item], tool_calls: list[dict[str, Any]] | None
) -> Checked:
    """Check ``expect`` against what the agent did now. ``tool_calls`` None: not observable."""
    result = Checked()
    said = [i.text for i in now if i.kind == "agent"]
    ends = [i.key[1] for i in now if i.kind == "end"]
    end_codes = [str(orjson.loads(k).get("reasonCode")) for k in ends if k.startswith("{")]

    def verdict(ok: bool, description: str) -> None:
        (result.passed if ok else result.failed).append(description)

    for pattern in expect.get("says") or []:
        verdict(
            any(re.search(pattern, s) for s in said),
            f"the agent says something matching /{pattern}/",
        )
    for pattern in expect.get("avoids") or []:
        hits = [s for s in said if re.search(pattern, s)]
        verdict(
            not hits,
            f"the agent never says anything matching /{pattern}/"
            + (f" (it said {quoted(shorten(hits[0], 120))})" if hits else ""),
        )
    if "handoff" in expect:
        happened = "live-agent-handoff" in end_codes
        wanted = bool(expect["handoff"])
        verdict(
            happened == wanted,
            "the call is handed to a person" if wanted else "the call is not handed to a person",
        )
    if expect.get("end"):
        verdict(
            str(expect["end"]) in end_codes,
            f"the call ends with reasonCode {expect['end']} (got {', '.join(end_codes) or 'no end frame'})",
        )
    for wanted_call in expect.get("tools") or []:
        name = wanted_call.get("name")
        patterns: dict[str, str] = dict(wanted_call.get("arguments") or {})
        description = f"{name} is called" + (
            " with " + ", ".join(f"{k}~/{v}/" for k, v in patterns.items()) if patterns else ""
        )
        if tool_calls is None:
            result.skipped.append(
                description + " (tool calls cannot be seen over --url in live mode)"
            )
            continue
        verdict(
            any(
                c.get("name") == name and _arguments_match(c.get("arguments"), patterns)
                for c in tool_calls
            ),
            description,
        )
    return result


def _arguments_match(raw: Any, patterns: Mapping[str, str]) -> bool:
    arguments = parse_arguments(raw)
    if not isinstance(arguments, dict):
        return not patterns
    for key, pattern in patterns.items():
        if key not in arguments:
            return False
        value = arguments[key]
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if not re.search(pattern, text):
            return False
    return True


def tool_calls_in(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e.get("data") or {}) for e in events if e.get("kind") == "tool_call"]
