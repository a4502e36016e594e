"""The optional post-call model pass: fills an agent's ``[analysis]`` fields from a transcript.

One non-streaming chat-completions request to any OpenAI-compatible server, forcing a single
function call whose JSON schema is built from the fields (text, enum, boolean, number), so the
answer is structured. It runs after the call ended, never on a call's hot path; a value of the
wrong type is dropped (None) rather than stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson

from relay.agents import AgentProfile, AnalysisField
from relay.errors import RelayError

FUNCTION: Final = "record_call_analysis"
_TYPES: Final = {"text": "string", "enum": "string", "boolean": "boolean", "number": "number"}


class AnalysisError(RelayError):
    """The analysis model could not be reached or gave no usable answer."""


@dataclass(frozen=True)
class Analysis:
    fields: dict[str, Any]
    model: str
    usage: Mapping[str, Any]


def schema(fields: Sequence[AnalysisField]) -> dict[str, Any]:
    """The function's JSON schema: every field required, nothing else allowed."""
    properties: dict[str, Any] = {}
    for item in fields:
        prop: dict[str, Any] = {"type": _TYPES[item.type]}
        if item.description:
            prop["description"] = item.description
        if item.type == "enum":
            prop["enum"] = list(item.values)
        properties[item.name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": [item.name for item in fields],
        "additionalProperties": False,
    }


def checked(fields: Sequence[AnalysisField], values: Mapping[str, Any]) -> dict[str, Any]:
    """Each field's value when it has the declared type, else None."""
    out: dict[str, Any] = {}
    for item in fields:
        value = values.get(item.name)
        if item.type == "text":
            ok = isinstance(value, str)
        elif item.type == "enum":
            ok = isinstance(value, str) and value in item.values
        elif item.type == "boolean":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        out[item.name] = value if ok else None
    return out


def transcript_text(turns: Sequence[Mapping[str, Any]]) -> str:
    """The conversation as the analysis model reads it: who said what, and tool results."""
    lines = []
    for turn in turns:
        role, content = turn.get("role"), (turn.get("content") or "").strip()
        if role == "user" and content:
            lines.append(f"Caller: {content}")
        elif role == "assistant":
            if content:
                lines.append(f"Agent: {content}")
            for call in turn.get("tool_calls") or []:
                function = call.get("function") or {}
                lines.append(f"(tool {function.get('name')} {function.get('arguments')})")
        elif role == "tool" and content:
            lines.append(f"(result of {turn.get('tool_name') or 'tool'}: {content[:400]})")
    return "\n".join(lines)


class Analyser:
    """Calls the analysis model. ``base_url`` ends in ``/v1`` (as for the call's model)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        default_model: str = "gpt-4o-mini",
        timeout: float = 60.0,
    ) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.default_model = default_model
        self.timeout = timeout

    async def analyse(
        self, agent: AgentProfile, turns: Sequence[Mapping[str, Any]], outcomes: Sequence[str]
    ) -> Analysis:
        fields = agent.analysis.all_fields()
        model = agent.analysis.model or agent.model or self.default_model
        instructions = (
            f"You review a finished phone call to {agent.business_name}, answered by an AI "
            f"agent. Fill in every field of {FUNCTION} from the transcript only; do not guess "
            "what was not said. " + agent.analysis.instructions
        ).strip()
        body = {
            "model": model,
            "temperature": 0,
            "stream": False,
            "messages": [
                {"role": "system", "content": instructions},
                {
                    "role": "user",
                    "content": f"Outcomes recorded: {', '.join(outcomes) or 'none'}.\n\n"
                    f"Transcript:\n{transcript_text(turns) or '(nothing was said)'}",
                },
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": FUNCTION,
                        "description": "Record the analysis of the call.",
                        "parameters": schema(fields),
                    },
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": FUNCTION}},
        }
        try:
            response = await self.http.post(
                self.url,
                content=orjson.dumps(body),
                headers={
                    "Authorization": f"Bearer {self.api_key}",
                    "Content-Type": "application/json",
                },
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise AnalysisError(f"analysis model unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise AnalysisError(f"analysis model answered HTTP {response.status_code}")
        try:
            payload = orjson.loads(response.content)
            message = payload["choices"][0]["message"]
            calls = message.get("tool_calls") or []
            raw = calls[0]["function"]["arguments"] if calls else message.get("content") or ""
            values = orjson.loads(raw)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise AnalysisError(f"analysis model gave no usable answer: {exc!r}") from exc
        if not isinstance(values, dict):
            raise AnalysisError("analysis model gave no usable answer: not an object")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        return Analysis(fields=checked(fields, values), model=model, usage=usage or {})
