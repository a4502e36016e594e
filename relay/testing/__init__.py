"""Test support that ships with relay: the scripted OpenAI-compatible server and the bench.

from relay.testing import FakeLLMServer, ScriptedLLM, Text, ToolCall, ToolCalls
"""

from relay.testing.scripted import (
    Break,
    Fail,
    FakeLLMServer,
    JSONBody,
    Malformed,
    NoDone,
    Redirect,
    Reply,
    ScriptedLLM,
    Stall,
    Text,
    ToolCall,
    ToolCalls,
    echo_reply,
    serve_fake_llm,
)

__all__ = [
    "Break",
    "Fail",
    "FakeLLMServer",
    "JSONBody",
    "Malformed",
    "NoDone",
    "Redirect",
    "Reply",
    "ScriptedLLM",
    "Stall",
    "Text",
    "ToolCall",
    "ToolCalls",
    "echo_reply",
    "serve_fake_llm",
]
