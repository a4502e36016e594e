"""Evaluation scenarios: a caller's persona and goal against one agent, with expectations.

One TOML file per scenario (``prompts/evals/*.toml``)::

    name = "upright-quote"            # default: the file name
    agent = "piano-removals"
    persona = "Priya, friendly and brief, moving house."
    goal = "Get the price of moving an upright piano from Brunswick to Coburg."
    facts = ["The piano is an upright.", "Pick-up: Brunswick, ground floor, no steps."]
    turn_limit = 8                    # caller turns at most
    opening = "Hi, how much to move a piano?"   # optional: the caller's first words
    now = "2026-11-19T10:00:00+11:00" # optional: the agent's clock (dates in the facts hold)

    [expect]                          # deterministic checks, all optional
    tools = [{ name = "quote_piano_move", arguments = { piano_type = "(?i)upright" } }]
    not_tools = ["book_move"]         # tools that must not succeed
    booking = false                   # whether a booking must (true) or must not (false) exist
    outcomes = ["quoted"]             # outcomes that must all be recorded
    says = ['\\$\\d']                 # the agent says something matching each regex
    avoids = ["(?i)guarantee"]        # ...and nothing matching any of these
    handoff = false                   # the call is (not) handed to a person

    [rubric]                          # optional, judged by a model (--judge-url)
    criteria = ["The agent read the price breakdown before the total."]

A tool counts as called when it ran without an error (its result carries no ``error``), with
every argument pattern found (``re.search``) in the argument's value (JSON text when not a
string).

A file that cannot be right is a configuration error naming the file and the field: a regex
that does not compile, and, given the names that exist (:class:`Known`, what ``relay eval``
passes), an agent, a tool, a tool's argument or an outcome no one has, with the close names
(a typo in ``not_tools`` would be a check that can never fail, one in an argument's name a check
that can never pass). A tool relay has that the agent does not
list is no typo: expected, the run fails (the agent lost a tool it needs).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relay.errors import ConfigError
from relay.services.outcomes import OUTCOMES

if TYPE_CHECKING:
    from relay.tools import ToolRegistry


def _compiled(pattern: str, what: str = "") -> str:
    """``pattern``, if it compiles; a ValueError naming it (pydantic reports the field)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regex {pattern!r}{what}: {exc}") from exc
    return pattern


class ToolExpectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, str] = Field(default_factory=dict)

    @field_validator("arguments")
    @classmethod
    def _patterns(cls, arguments: dict[str, str]) -> dict[str, str]:
        for name, pattern in arguments.items():
            _compiled(pattern, f" for {name}")
        return arguments


class Expectations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tools: list[ToolExpectation] = Field(default_factory=list)
    not_tools: list[str] = Field(default_factory=list)
    booking: bool | None = None
    outcomes: list[str] = Field(default_factory=list)
    says: list[str] = Field(default_factory=list)
    avoids: list[str] = Field(default_factory=list)
    handoff: bool | None = None

    @field_validator("says", "avoids")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            _compiled(pattern)
        return patterns


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    criteria: list[str] = Field(default_factory=list)


class Scenario(BaseModel):
    """One scenario file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    agent: str
    persona: str
    goal: str
    facts: list[str] = Field(default_factory=list)
    turn_limit: int = Field(default=10, ge=1, le=50)
    opening: str | None = None
    now: datetime | None = None
    caller_number: str = "+61412345678"
    expect: Expectations = Field(default_factory=Expectations)
    rubric: Rubric = Field(default_factory=Rubric)
    path: str = ""  # where it was read from (not in the file)

    @field_validator("now")
    @classmethod
    def _aware(cls, now: datetime | None) -> datetime | None:
        if now is not None and now.tzinfo is None:
            raise ValueError("now must carry its UTC offset, e.g. 2026-11-19T10:00:00+11:00")
        return now


@dataclass(frozen=True)
class Known:
    """The names a scenario may use: the agents that exist, each with the tools it lists,
    every tool relay has, the outcomes it records, and each tool's argument names (a tool
    not in ``arguments`` has its argument names unchecked)."""

    agents: Mapping[str, Collection[str]]
    tools: Collection[str]
    outcomes: Collection[str] = OUTCOMES
    arguments: Mapping[str, Collection[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, agents: Mapping[str, Collection[str]], registry: ToolRegistry) -> Known:
        """The names of ``agents`` (each with the tools it lists) and of ``registry``'s tools."""
        arguments: dict[str, Collection[str]] = {}
        for name in registry.names():
            tool = registry.get(name)
            if tool is not None:
                arguments[name] = sorted((tool.schema.get("properties") or {}).keys())
        return cls(agents=agents, tools=registry.names(), arguments=arguments)

    def problems(self, scenario: Scenario) -> list[str]:
        """Every name in ``scenario`` that does not exist, as ``field: problem``."""
        found: list[str] = []
        if scenario.agent not in self.agents:
            found.append(f"agent: {_unknown('agent', scenario.agent, sorted(self.agents))}")
        # Close tools: the agent's first (what the scenario most likely meant), then any.
        close = [sorted(self.agents.get(scenario.agent, ())), sorted(self.tools)]
        named = [(f"tools.{i}.name", t.name) for i, t in enumerate(scenario.expect.tools)]
        named += [(f"not_tools.{i}", name) for i, name in enumerate(scenario.expect.not_tools)]
        for field_name, name in named:
            if name not in self.tools:
                found.append(f"expect.{field_name}: {_unknown('tool', name, *close)}")
        for i, expected in enumerate(scenario.expect.tools):
            takes = self.arguments.get(expected.name)
            if takes is None:
                continue
            for argument in expected.arguments:
                if argument not in takes:
                    # A pattern on an argument the tool never has is a check that can never hold.
                    what = f"argument of {expected.name}"
                    problem = (
                        _unknown(what, argument, sorted(takes))
                        if takes
                        else (f"no {what} named {argument!r} ({expected.name} takes no arguments)")
                    )
                    found.append(f"expect.tools.{i}.arguments.{argument}: {problem}")
        for i, outcome in enumerate(scenario.expect.outcomes):
            if outcome not in self.outcomes:
                problem = _unknown("outcome", outcome, list(self.outcomes))
                found.append(f"expect.outcomes.{i}: {problem}")
        return found


def _unknown(kind: str, name: str, *candidates: list[str]) -> str:
    """``no tool named 'bok_move' (did you mean 'book_move'?)``: the close names of the first
    candidates that has some, else every name of the last."""
    for names in candidates:
        near = difflib.get_close_matches(name, names)
        if near:
            return f"no {kind} named {name!r} (did you mean {' or '.join(map(repr, near))}?)"
    return f"no {kind} named {name!r} (known: {', '.join(candidates[-1])})"


def load_scenario(path: Path, *, known: Known | None = None) -> Scenario:
    """Read one scenario file; with ``known``, every agent, tool and outcome it names must
    exist. Raises a ConfigError naming the file and each field that is wrong."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read scenario: {exc}") from exc
    raw.setdefault("name", path.stem)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid scenario: {problems}") from exc
    unknown = known.problems(scenario) if known is not None else []
    if unknown:
        raise ConfigError(f"{path}: invalid scenario: {'; '.join(unknown)}")
    return scenario.model_copy(update={"path": str(path)})


def load_scenarios(paths: list[Path], *, known: Known | None = None) -> list[Scenario]:
    """Scenario files, and every ``*.toml`` in the directories given, in name order (see
    :func:`load_scenario` for ``known``)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.toml")))
        else:
            files.append(path)
    if not files:
        raise ConfigError(f"no scenario files in {', '.join(str(p) for p in paths)}")
    return [load_scenario(f, known=known) for f in files]


def toml_string(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def draft_toml(scenario: dict[str, Any]) -> str:
    """A scenario file for ``relay eval --from-call`` (to be edited by a person)."""
    lines = [
        "# Drafted from a recorded call by `relay eval --from-call`: edit the persona, the goal",
        "# and the expectations before relying on it.",
        f"name = {toml_string(scenario['name'])}",
        f"agent = {toml_string(scenario['agent'])}",
        f"persona = {toml_string(scenario['persona'])}",
        f"goal = {toml_string(scenario['goal'])}",
        "facts = [" + ", ".join(toml_string(f) for f in scenario["facts"]) + "]",
        f"turn_limit = {scenario['turn_limit']}",
    ]
    if scenario.get("opening"):
        lines.append(f"opening = {toml_string(scenario['opening'])}")
    if scenario.get("now"):
        lines.append(f"now = {scenario['now']}")
    lines += ["", "[expect]"]
    tools = []
    for tool in scenario["tools"]:
        args = ", ".join(f"{k} = {toml_string(v)}" for k, v in tool["arguments"].items())
        tools.append(f"{{ name = {toml_string(tool['name'])}, arguments = {{ {args} }} }}")
    lines.append("tools = [" + ", ".join(tools) + "]")
    if scenario.get("outcomes"):
        lines.append("outcomes = [" + ", ".join(toml_string(o) for o in scenario["outcomes"]) + "]")
    if scenario.get("booking") is not None:
        lines.append(f"booking = {'true' if scenario['booking'] else 'false'}")
    return "\n".join(lines) + "\n"
