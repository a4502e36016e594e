"""The tool framework: typed async functions the model can call.

A tool is an ``async def`` whose first parameter is the :class:`ToolContext` and whose other
parameters are typed. Its JSON schema comes from the signature; its description and the
description of each parameter come from the docstring (Google style ``Args:``), which the model
reads, so write it for the model. Arguments are validated before the tool runs: a bad argument
becomes an error message for the model, never an exception in the call.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_type_hints

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from relay.errors import ToolError

if TYPE_CHECKING:
    import httpx

    from relay.agents import AgentProfile
    from relay.storage.db import Database


# -- what a tool can ask the session to do -------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """Hand the call to a person: speak ``line``, then ``end`` with handoff data."""

    reason: str
    summary: str
    line: str


@dataclass(frozen=True)
class Hangup:
    """Say goodbye, then end the session."""

    reason: str
    line: str


@dataclass(frozen=True)
class SwitchLanguage:
    code: str


@dataclass(frozen=True)
class SendDigits:
    digits: str


@dataclass(frozen=True)
class CollectDigits:
    """Collect keypad digits (ended by ``#`` or a pause) and hand them to the model."""

    purpose: str
    max_digits: int = 12


SessionAction = Transfer | Hangup | SwitchLanguage | SendDigits | CollectDigits


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns: content for the model, optionally an action for the session."""

    content: str
    action: SessionAction | None = None
    data: Mapping[str, Any] | None = None  # recorded, not shown to the model


@dataclass
class ToolContext:
    """Everything a tool may use. Built by the session for each tool call."""

    call_sid: str
    agent: AgentProfile
    caller: str
    db: Database
    http: httpx.AsyncClient
    now: Callable[[], datetime]
    services: Mapping[str, Any]
    tool_call_id: str = ""
    customer: Mapping[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


ToolFunction = Callable[..., Awaitable[ToolResult | str | Mapping[str, Any]]]


@dataclass(frozen=True)
class Tool:
    """A registered tool."""

    name: str
    description: str
    function: ToolFunction
    arguments: type[BaseModel]
    side_effect: bool = False
    timeout: float = 10.0
    schema: dict[str, Any] = field(default_factory=dict)

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.schema,
            },
        }

    def parse(self, raw: str) -> BaseModel:
        """Validate the model's JSON arguments. Raises ToolError with a message for the model."""
        try:
            data = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolError(
                f"The arguments for {self.name} were not valid JSON ({exc}). Call it again with a JSON object."
            ) from exc
        if not isinstance(data, dict):
            raise ToolError(f"The arguments for {self.name} must be a JSON object.")
        try:
            return self.arguments.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ToolError(
                f"Invalid arguments for {self.name}: {problems}. Fix them and call it again."
            ) from exc

    def idempotency_key(self, call_sid: str, arguments: BaseModel) -> str:
        canonical = orjson.dumps(arguments.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(f"{call_sid}\x00{self.name}\x00".encode() + canonical).hexdigest()
        return f"{self.name}:{digest[:40]}"


_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {param: description})."""
    doc = inspect.cleandoc(doc)
    if "\nArgs:" not in doc:
        return doc.strip(), {}
    head, _, rest = doc.partition("\nArgs:")
    params: dict[str, str] = {}
    current: str | None = None
    for line in rest.splitlines():
        if line.strip() and not line.startswith(" "):
            break  # another section
        match = _ARG_LINE.match(line)
        if match and line.startswith("    ") and not line.startswith("      "):
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current and line.strip():
            params[current] += " " + line.strip()
    return head.strip(), params


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def tool(
    *, name: str | None = None, side_effect: bool = False, timeout: float = 10.0
) -> Callable[[ToolFunction], Tool]:
    """Turn an async function into a :class:`Tool`."""

    def wrap(function: ToolFunction) -> Tool:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"tool {function.__name__} must be an async function")
        signature = inspect.signature(function)
        hints = get_type_hints(function)
        params = list(signature.parameters.values())
        if not params or params[0].name != "ctx":
            raise TypeError(f"tool {function.__name__} must take ctx: ToolContext first")
        description, docs = _parse_docstring(function.__doc__ or "")
        if not description:
            raise TypeError(f"tool {function.__name__} needs a docstring: the model reads it")
        fields: dict[str, Any] = {}
        for param in params[1:]:
            annotation = hints.get(param.name, str)
            default = ... if param.default is inspect.Parameter.empty else param.default
            from pydantic import Field

            fields[param.name] = (annotation, Field(default, description=docs.get(param.name)))
        model = create_model(f"{function.__name__}_args", __base__=_Args, **fields)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return Tool(
            name=name or function.__name__,
            description=description,
            function=function,
            arguments=model,
            side_effect=side_effect,
            timeout=timeout,
            schema=schema,
        )

    return wrap


async def invoke(tool_: Tool, ctx: ToolContext, arguments: BaseModel) -> ToolResult:
    """Run a tool with its timeout, converting every failure into a result for the model."""
    try:
        async with asyncio.timeout(tool_.timeout):
            result = await tool_.function(
                ctx, **{k: getattr(arguments, k) for k in type(arguments).model_fields}
            )
    except TimeoutError:
        return ToolResult(
            f"{tool_.name} took too long and was stopped. Tell the caller you could not finish that just now.",
            data={"error": "timeout"},
        )
    except ToolError as exc:
        return ToolResult(f"Error: {exc}", data={"error": str(exc)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broken tool must not break the turn
        structlog.get_logger("relay.tools").exception("tool_crashed", tool=tool_.name)
        return ToolResult(
            f"Error: {tool_.name} failed unexpectedly. Apologise and offer another way to help (take a message or a person).",
            data={"error": f"crashed: {exc!r}"},
        )
    if isinstance(result, ToolResult):
        return result
    if isinstance(result, str):
        return ToolResult(result)
    return ToolResult(orjson.dumps(result, default=str).decode(), data=result)
