"""The scripted server refuses what OpenAI refuses, with OpenAI's 400 body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from relay.testing import FakeLLMServer, ScriptedLLM, Text
from relay.testing.openai_rules import check_chat_request

CALL = {"id": "call_1", "type": "function", "function": {"name": "quote", "arguments": "{}"}}
TOOL = {
    "type": "function",
    "function": {
        "name": "quote",
        "description": "Price a move.",
        "parameters": {"type": "object", "properties": {"piano": {"type": "string"}}},
    },
}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": list(messages), "stream": True, **extra}


def error(message: str, param: str | None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


SYSTEM = {"role": "system", "content": "You are Kerry."}
USER = {"role": "user", "content": "How much?"}
CALLS = {"role": "assistant", "content": "", "tool_calls": [CALL]}
ANSWER = {"role": "tool", "content": "$544", "tool_call_id": "call_1"}


def test_a_valid_conversation_with_tools_passes() -> None:
    ok = body(
        SYSTEM,
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        ANSWER,
        {"role": "assistant", "content": [{"type": "text", "text": "It is $544."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
        tools=[TOOL],
        tool_choice="auto",
        stream_options={"include_usage": True},
    )
    assert check_chat_request(ok) is None
    named = {"type": "function", "function": {"name": "quote"}}
    assert check_chat_request(body(USER, tools=[TOOL], tool_choice=named)) is None


def test_a_user_message_between_a_tool_call_and_its_answer_is_refused() -> None:
    # The defect: the caller spoke while a tool ran, and the answer was appended after it.
    assert check_chat_request(body(SYSTEM, USER, CALLS, USER, ANSWER)) == error(
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        "call_1",
        "messages.[2].role",
    )


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [SYSTEM, USER, CALLS],
            error(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                "response messages: call_1",
                "messages.[2].role",
            ),
        ),
        (
            [SYSTEM, USER, ANSWER],
            error(
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.",
                "messages.[2].role",
            ),
        ),
        (
            [SYSTEM, USER, CALLS, ANSWER, ANSWER],  # one answer per call id, not two
            error(
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.",
                "messages.[4].role",
            ),
        ),
        (
            [SYSTEM, {"role": "robot", "content": "beep"}],
            error(
                "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
                "messages[1].role",
                "invalid_value",
            ),
        ),
        (
            [SYSTEM, {"role": "user", "content": None}],
            error(
                "Invalid value for 'content': expected a string, got null.",
                "messages[1].content",
                "invalid_value",
            ),
        ),
        (
            [SYSTEM, {"role": "user", "content": 42}],
            error(
                "Invalid type for 'messages[1].content': expected one of a string or array "
                "of objects, but got number instead.",
                "messages[1].content",
                "invalid_type",
            ),
        ),
        (
            [SYSTEM, {"role": "tool", "content": "x"}],
            error(
                "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                "'tool_call_id'.",
                "messages.[1].tool_call_id",
            ),
        ),
        (
            [{"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}],
            error(
                "Invalid value: 'image_url'. Supported values are: 'refusal', 'text'.",
                "messages[0].content[0].type",
                "invalid_value",
            ),
        ),
        (
            [
                {"role": "user", "content": "Quote?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c" * 41,
                            "type": "function",
                            "function": {"name": "quote", "arguments": "{}"},
                        },
                    ],
                },
            ],
            error(
                "Invalid 'messages[1].tool_calls[0].id': string too long. Expected a string with "
                "maximum length 40, but got a string with length 41 instead.",
                "messages[1].tool_calls[0].id",
                "string_above_max_length",
            ),
        ),
        (
            [],
            error(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
                "empty_array",
            ),
        ),
    ],
)
def test_histories_openai_refuses(messages: list[Any], expected: dict[str, Any]) -> None:
    assert check_chat_request(body(*messages)) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "get price"}}]},
            error(
                "Invalid 'tools[0].function.name': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                "tools[0].function.name",
                "invalid_value",
            ),
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "q", "parameters": {"type": "string"}},
                    }
                ]
            },
            error(
                "Invalid schema for function 'q': schema must be a JSON Schema of "
                "'type: \"object\"', got 'type: \"string\"'.",
                "tools",
                "invalid_function_parameters",
            ),
        ),
        (
            {"tools": []},
            error(
                "Invalid 'tools': empty array. Expected an array with minimum length 1, but "
                "got an empty array instead.",
                "tools",
                "empty_array",
            ),
        ),
        (
            {"tool_choice": "auto"},
            error(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                "are specified.",
                "tool_choice",
            ),
        ),
        (
            {"tools": [TOOL], "tool_choice": "always"},
            error(
                "Invalid value: 'always'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            ),
        ),
        (
            {"stream": False, "stream_options": {"include_usage": True}},
            error(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            ),
        ),
    ],
)
def test_requests_openai_refuses(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    assert check_chat_request(body(SYSTEM, USER, **extra)) == expected


async def test_the_server_answers_400_and_keeps_the_script_for_the_next_request() -> None:
    llm = ScriptedLLM([Text("Fine.")])
    async with FakeLLMServer(llm) as server, httpx.AsyncClient() as http:
        url = server.base_url + "/chat/completions"
        refused = await http.post(url, json=body(SYSTEM, USER, CALLS, USER, ANSWER))
        answered = await http.post(url, json={**body(SYSTEM, USER), "stream": False})

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages.[2].role"
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert answered.json()["choices"][0]["message"]["content"] == "Fine."
    assert [number for number, _ in llm.rejected] == [1]
    assert len(llm.requests) == 2


async def test_validation_can_be_turned_off() -> None:
    llm = ScriptedLLM([Text("Anything goes.")], validate=False)
    async with FakeLLMServer(llm) as server, httpx.AsyncClient() as http:
        response = await http.post(
            server.base_url + "/chat/completions",
            json={"model": "m", "messages": [ANSWER], "stream": False},
        )

    assert response.json()["choices"][0]["message"]["content"] == "Anything goes."
    assert llm.rejected == []
