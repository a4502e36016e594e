"""The request rules OpenAI's ``/v1/chat/completions`` enforces, for the scripted server.

:func:`check_chat_request` returns OpenAI's HTTP 400 body for the first rule a request breaks,
or ``None`` for a valid one. The scripted server (:mod:`relay.testing.scripted`) runs it on
every request, so every test that talks to it checks that relay only ever sends requests the
real service accepts. The messages and ``param`` paths are OpenAI's own wording (its typos
included) as its API answers them: the tool-message rules name ``messages.[i]`` (with a dot),
the schema checks ``messages[i]``. The checks cover what a client can get wrong:

- roles: ``system``, ``developer``, ``user``, ``assistant``, ``tool`` (and the legacy
  ``function``); ``messages`` a non-empty array of objects;
- content types: a string or an array of content parts of the kinds the role allows;
  ``null`` only for an assistant message with ``tool_calls``;
- order: an assistant message with ``tool_calls`` is followed by exactly one ``tool`` message
  per call id before any other message, and a ``tool`` message answers a call still waiting
  for its answer;
- tool calls: ``id``, ``type: "function"``, a function ``name`` and string ``arguments``;
- ``tools``: a non-empty array of ``{"type": "function", "function": {"name", "description"?,
  "parameters"?, "strict"?}}`` with names of at most 64 characters from ``[a-zA-Z0-9_-]`` and
  ``parameters`` an object schema;
- ``tool_choice``: ``none``, ``auto``, ``required`` or ``{"type": "function", "function":
  {"name"}}`` naming one of the tools, and only with ``tools``;
- ``stream`` a boolean, ``stream_options`` only when streaming.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

ROLES: Final = ("system", "assistant", "user", "function", "tool", "developer")
_PARTS: Final[Mapping[str, frozenset[str]]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text"}),
    "function": frozenset({"text"}),
}
_FUNCTION_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_CHOICES: Final = ("none", "auto", "required")


class Invalid(Exception):
    """A rule broken: OpenAI's message, ``param`` and ``code``."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


def check_chat_request(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 error body for ``body``, or None when OpenAI would accept it."""
    try:
        _check(body)
    except Invalid as exc:
        return exc.body()
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _missing(param: str) -> Invalid:
    return Invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _wrong_type(param: str, expected: str, value: Any) -> Invalid:
    return Invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


def _check(body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
    if not messages:
        raise Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    if body.get("stream_options") is not None and stream is not True:
        raise Invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    names = _check_tools(body)
    _check_tool_choice(body, names)
    _check_messages(messages)


def _check_messages(messages: list[Any]) -> None:
    waiting: dict[str, int] = {}  # tool_call ids still owed an answer -> the assistant's index
    for index, message in enumerate(messages):
        at = f"messages[{index}]"  # the schema checks' paths; the tool rules use "messages.[i]"
        if not isinstance(message, dict):
            raise _wrong_type(at, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{at}.role")
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            raise Invalid(
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                f"{at}.role",
                "invalid_value",
            )
        if waiting and role != "tool":
            raise _unanswered(messages, waiting)
        _check_content(message, role, at)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                raise Invalid(
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                    "'tool_call_id'.",
                    f"messages.[{index}].tool_call_id",
                )
            if not isinstance(call_id, str):
                raise _wrong_type(f"{at}.tool_call_id", "a string", call_id)
            if call_id not in waiting:
                raise Invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            del waiting[call_id]
        elif role == "assistant" and message.get("tool_calls") is not None:
            for call_id in _check_tool_calls(message["tool_calls"], f"{at}.tool_calls"):
                waiting[call_id] = index
    if waiting:
        raise _unanswered(messages, waiting)


def _unanswered(messages: list[Any], waiting: dict[str, int]) -> Invalid:
    index = min(waiting.values())
    ids = ", ".join(waiting)
    return Invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: {ids}",
        f"messages.[{index}].role",
    )


def _check_content(message: Mapping[str, Any], role: str, at: str) -> None:
    param = f"{at}.content"
    if "content" not in message:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise _missing(param)
    content = message["content"]
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise Invalid(
            "Invalid value for 'content': expected a string, got null.", param, "invalid_value"
        )
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(param, "one of a string or array of objects", content)
    if not content and role != "assistant":
        raise Invalid(
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param,
            "empty_array",
        )
    allowed = _PARTS[role]
    for position, part in enumerate(content):
        part_at = f"{param}[{position}]"
        if not isinstance(part, dict):
            raise _wrong_type(part_at, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise _missing(f"{part_at}.type")
        if kind not in allowed:
            supported = ", ".join(f"'{k}'" for k in sorted(allowed))
            raise Invalid(
                f"Invalid value: '{kind}'. Supported values are: {supported}.",
                f"{part_at}.type",
                "invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            if "text" not in part:
                raise _missing(f"{part_at}.text")
            raise _wrong_type(f"{part_at}.text", "a string", part.get("text"))


def _check_tool_calls(calls: Any, at: str) -> list[str]:
    if not isinstance(calls, list):
        raise _wrong_type(at, "an array", calls)
    if not calls:
        raise Invalid(
            f"Invalid '{at}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            at,
            "empty_array",
        )
    ids: list[str] = []
    for position, call in enumerate(calls):
        call_at = f"{at}[{position}]"
        if not isinstance(call, dict):
            raise _wrong_type(call_at, "an object", call)
        for key in ("id", "type", "function"):
            if key not in call:
                raise _missing(f"{call_at}.{key}")
        if not isinstance(call["id"], str):
            raise _wrong_type(f"{call_at}.id", "a string", call["id"])
        if len(call["id"]) > 40:
            raise Invalid(
                f"Invalid '{call_at}.id': string too long. Expected a string with maximum "
                f"length 40, but got a string with length {len(call['id'])} instead.",
                f"{call_at}.id",
                "string_above_max_length",
            )
        if call["type"] != "function":
            raise Invalid(
                f"Invalid value: '{call['type']}'. Supported values are: 'function'.",
                f"{call_at}.type",
                "invalid_value",
            )
        function = call["function"]
        if not isinstance(function, dict):
            raise _wrong_type(f"{call_at}.function", "an object", function)
        for key in ("name", "arguments"):
            if key not in function:
                raise _missing(f"{call_at}.function.{key}")
            if not isinstance(function[key], str):
                raise _wrong_type(f"{call_at}.function.{key}", "a string", function[key])
        ids.append(call["id"])
    return ids


def _check_tools(body: Mapping[str, Any]) -> set[str]:
    tools = body.get("tools")
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _wrong_type("tools", "an array", tools)
    if not tools:
        raise Invalid(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "tools",
            "empty_array",
        )
    names: set[str] = set()
    for position, tool in enumerate(tools):
        at = f"tools[{position}]"
        if not isinstance(tool, dict):
            raise _wrong_type(at, "an object", tool)
        if tool.get("type") != "function":
            if "type" not in tool:
                raise _missing(f"{at}.type")
            raise Invalid(
                f"Invalid value: '{tool.get('type')}'. Supported values are: 'function'.",
                f"{at}.type",
                "invalid_value",
            )
        function = tool.get("function")
        if function is None:
            raise _missing(f"{at}.function")
        if not isinstance(function, dict):
            raise _wrong_type(f"{at}.function", "an object", function)
        name = function.get("name")
        if name is None:
            raise _missing(f"{at}.function.name")
        if not isinstance(name, str):
            raise _wrong_type(f"{at}.function.name", "a string", name)
        if not _FUNCTION_NAME.match(name):
            raise Invalid(
                f"Invalid '{at}.function.name': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"{at}.function.name",
                "invalid_value",
            )
        if len(name) > 64:
            raise Invalid(
                f"Invalid '{at}.function.name': string too long. Expected a string with maximum "
                f"length 64, but got a string with length {len(name)} instead.",
                f"{at}.function.name",
                "string_above_max_length",
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise _wrong_type(f"{at}.function.description", "a string", description)
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _wrong_type(f"{at}.function.strict", "a boolean", strict)
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise _wrong_type(f"{at}.function.parameters", "an object", parameters)
            kind = parameters.get("type")
            if kind != "object":
                raise Invalid(
                    f"Invalid schema for function '{name}': schema must be a JSON Schema of "
                    f"'type: \"object\"', got 'type: \"{kind}\"'.",
                    "tools",
                    "invalid_function_parameters",
                )
            properties = parameters.get("properties")
            if properties is not None and not isinstance(properties, dict):
                raise Invalid(
                    f"Invalid schema for function '{name}': 'properties' must be an object.",
                    "tools",
                    "invalid_function_parameters",
                )
        if name in names:
            raise Invalid(
                f"Invalid 'tools': duplicate function name '{name}'.", "tools", "invalid_value"
            )
        names.add(name)
    return names


def _check_tool_choice(body: Mapping[str, Any], names: set[str]) -> None:
    if "tool_choice" not in body or body["tool_choice"] is None:
        return
    choice = body["tool_choice"]
    if not names:
        raise Invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
        )
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise Invalid(
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            )
        return
    if not isinstance(choice, dict):
        raise _wrong_type("tool_choice", "one of a string or object", choice)
    if choice.get("type") != "function":
        raise Invalid(
            f"Invalid value: '{choice.get('type')}'. Supported values are: 'function'.",
            "tool_choice.type",
            "invalid_value",
        )
    function = choice.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _missing("tool_choice.function.name")
    if function["name"] not in names:
        raise Invalid(
            f"Invalid value for 'tool_choice': function '{function['name']}' is not among the "
            "functions in 'tools'.",
            "tool_choice",
            "invalid_value",
        )
