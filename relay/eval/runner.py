"""``relay eval``: scenarios played by a model caller against the real agent, then checked.

Each run starts the real app (uvicorn, the ConversationRelay WebSocket, the agent's real tools)
on a scratch SQLite database, with the agent's model from the usual settings
(``OPENAI_BASE_URL``...). The caller is another model (any OpenAI-compatible server,
``--caller-url``) told the scenario's persona, goal and facts; it talks to the agent turn by
turn over the WebSocket exactly as Twilio would, until it hangs up, the agent ends the call or
the turn limit is reached. Then the run is checked against the scenario's expectations (the
tools that ran, bookings, outcomes, words said or avoided) and, when a judge model is given,
its rubric. Webhooks, e-mail and SMS are off during an evaluation.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import select

from relay.config import Settings
from relay.eval.scenarios import Scenario
from relay.storage import repository
from relay.storage.models import Booking
from relay.storage.outcomes import get_analysis
from relay.testing.simcall import SimulatedCall, serve_in_process
from relay.tools import ToolRegistry
from relay.web.app import Runtime, create_app

HANGUP = "[HANGUP]"
#: The longest the agent may take over one reply before the run fails.
REPLY_TIMEOUT = 60.0


class ChatClient:
    """A minimal non-streaming OpenAI-compatible client (the caller and the judge)."""

    def __init__(
        self, http: httpx.AsyncClient, *, base_url: str, model: str, api_key: str = "not-needed"
    ) -> None:
        self.http = http
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(
            self.url,
            content=orjson.dumps({"model": self.model, "stream": False, **body}),
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Content-Type": "application/json",
            },
            timeout=120.0,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        message: dict[str, Any] = orjson.loads(response.content)["choices"][0]["message"]
        return message


def caller_instructions(scenario: Scenario, business: str) -> str:
    facts = "\n".join(f"- {fact}" for fact in scenario.facts) or "- (nothing in particular)"
    return (
        f"You are role-playing a person phoning {business}. Another AI answers the phone for "
        f"the business.\nWho you are: {scenario.persona}\nWhat you want from this call: "
        f"{scenario.goal}\nWhat you know (share it when it helps or when asked, in your own "
        f"words):\n{facts}\n\nSpeak as on the phone: one or two short sentences at a time, only "
        "the words you would say, no stage directions. Do not invent facts beyond these; if "
        "asked something you don't know, say so. When your goal is met or cannot be met, say "
        f"goodbye; when you have said goodbye, or want to hang up, answer exactly {HANGUP}."
    )


@dataclass
class RunResult:
    scenario: str
    agent: str
    run: int
    call_sid: str
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    passed_checks: list[str] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Observed:
    """What happened on one run's call."""

    agent_lines: list[str]
    tools: list[dict[str, Any]]  # every tool that ran: name, arguments (dict), ok
    bookings: int
    outcomes: list[str]
    handoff: bool


class _Clock:
    """The agent's clock: a scenario's ``now`` (moving on in real time), or the real time."""

    def __init__(self) -> None:
        self.start: datetime | None = None
        self._at = 0.0

    def set(self, start: datetime | None) -> None:
        self.start, self._at = start, time.monotonic()

    def __call__(self) -> datetime:
        if self.start is None:
            return datetime.now(UTC)
        from datetime import timedelta

        return self.start + timedelta(seconds=time.monotonic() - self._at)


def scratch_settings(settings: Settings, directory: Path) -> Settings:
    """The settings with a scratch database and nothing that reaches the outside world."""
    return settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{directory / 'eval.db'}",
            "twilio_account_sid": None,
            "twilio_auth_token": None,
            "smtp_url": None,
            "webhook_secret": None,
            "analysis_enabled": False,
            "public_url": None,
            "admin_token": None,
        }
    )


async def run_scenarios(
    settings: Settings,
    scenarios: Sequence[Scenario],
    *,
    caller: ChatClient,
    judge: ChatClient | None = None,
    runs: int = 1,
    tools: ToolRegistry | None = None,
    progress: Any = None,
) -> list[RunResult]:
    """Run every scenario ``runs`` times; returns one result per run."""
    clock = _Clock()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="relay-eval-") as scratch:

        def quiet(runtime: Runtime) -> None:
            if runtime.postcall is not None:
                runtime.postcall.outbox = None  # no webhooks from an evaluation

        app = create_app(
            scratch_settings(settings, Path(scratch)), tools=tools, now=clock, configure=quiet
        )
        async with serve_in_process(app) as base:
            runtime: Runtime = app.state.runtime
            await runtime.knowledge_ready()  # the first scenario's search not cold
            ws_url = base.replace("http://", "ws://", 1) + "/ws"
            for scenario in scenarios:
                for run in range(1, runs + 1):
                    clock.set(scenario.now)
                    result = await _run_one(runtime, ws_url, scenario, run, caller, judge)
                    results.append(result)
                    if progress is not None:
                        progress(result)
    return results


async def _run_one(
    runtime: Runtime,
    ws_url: str,
    scenario: Scenario,
    run: int,
    caller: ChatClient,
    judge: ChatClient | None,
) -> RunResult:
    agents = runtime.deps.agents
    if scenario.agent not in agents.agents:
        result = RunResult(scenario.name, scenario.agent, run, call_sid="")
        result.error = f"no agent named {scenario.agent!r}"
        result.failures.append(result.error)
        return result
    agent = agents.get(scenario.agent)
    call = SimulatedCall(
        ws_url,
        from_=scenario.caller_number,
        to=agent.numbers[0] if agent.numbers else "+61390000000",
        custom_parameters={"agent": agent.name},
    )
    result = RunResult(scenario.name, agent.name, run, call_sid=call.call_sid)
    started = time.perf_counter()
    transcript: list[tuple[str, str]] = []
    if agent.welcome_greeting:
        transcript.append(("agent", agent.welcome_greeting))
    handoff = False
    try:
        await call.connect()
        instructions = caller_instructions(scenario, agent.business_name)
        for turn in range(scenario.turn_limit):
            if turn == 0 and scenario.opening:
                line: str | None = scenario.opening
            else:
                line = await _caller_line(caller, instructions, transcript)
            if line is None:
                break
            transcript.append(("caller", line))
            reply = await call.say(line, timeout=REPLY_TIMEOUT)
            transcript.append(("agent", reply.text))
            if reply.end is not None:
                handoff = "live-agent-handoff" in str(reply.end.get("handoffData"))
                break
    except Exception as exc:  # the run fails, the evaluation goes on
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        await call.close()
    await _settled(runtime)
    result.transcript = transcript
    observed = await observe(runtime, call.call_sid, transcript, handoff)
    check(scenario, observed, result)
    if judge is not None and scenario.rubric.criteria:
        await judge_rubric(judge, scenario, transcript, result)
    if result.error:
        result.failures.insert(0, f"the run broke off: {result.error}")
    result.passed = not result.failures
    result.seconds = round(time.perf_counter() - started, 2)
    return result


async def _caller_line(
    caller: ChatClient, instructions: str, transcript: Sequence[tuple[str, str]]
) -> str | None:
    messages: list[dict[str, str]] = [{"role": "system", "content": instructions}]
    for speaker, text in transcript:
        role = "assistant" if speaker == "caller" else "user"
        messages.append({"role": role, "content": text or "(silence)"})
    if messages[-1]["role"] == "assistant":
        messages.append({"role": "user", "content": "(silence)"})
    message = await caller.complete({"messages": messages, "temperature": 0.7})
    line = str(message.get("content") or "").strip()
    if not line or HANGUP in line:
        return None
    return line


async def _settled(runtime: Runtime) -> None:
    """Wait until the call's session has closed and its post-call work is done."""
    for _ in range(500):
        if runtime.active_sessions == 0:
            break
        await asyncio.sleep(0.01)
    await runtime.deps.recorder.flush()
    if runtime.postcall is not None:
        await runtime.postcall.idle()


async def observe(
    runtime: Runtime, call_sid: str, transcript: Sequence[tuple[str, str]], handoff: bool
) -> Observed:
    db = runtime.deps.db
    events = await repository.call_events(db, call_sid)
    arguments: dict[str, Any] = {}
    tools: list[dict[str, Any]] = []
    for event in events:
        data = event.data or {}
        if event.kind == "tool_call":
            arguments[str(data.get("id"))] = data.get("arguments")
        elif event.kind == "tool_result":
            outcome = data.get("data")
            ok = not (isinstance(outcome, Mapping) and "error" in outcome)
            tools.append(
                {"name": data.get("name"), "arguments": _arguments(arguments.get(str(data.get("id")))),
                 "ok": ok}
            )  # fmt: skip
    async with db.session() as session:
        bookings = len(
            (
                await session.scalars(
                    select(Booking.id).where(
                        Booking.call_sid == call_sid, Booking.status == "booked"
                    )
                )
            ).all()
        )
    analysis = await get_analysis(db, call_sid)
    return Observed(
        agent_lines=[text for speaker, text in transcript[1:] if speaker == "agent"],
        tools=tools,
        bookings=bookings,
        outcomes=list(analysis.outcomes) if analysis is not None else [],
        handoff=handoff or (analysis is not None and "transferred" in analysis.outcomes),
    )


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return dict(raw) if isinstance(raw, Mapping) else {}


def _matches(value: Any, pattern: str) -> bool:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return re.search(pattern, text) is not None


def check(scenario: Scenario, observed: Observed, result: RunResult) -> None:
    """The scenario's deterministic expectations, each a passed check or a failure."""
    expect = scenario.expect

    def verdict(ok: bool, description: str) -> None:
        (result.passed_checks if ok else result.failures).append(description)

    ran = [t for t in observed.tools if t["ok"]]
    for wanted in expect.tools:
        found = any(
            t["name"] == wanted.name
            and all(
                key in t["arguments"] and _matches(t["arguments"][key], pattern)
                for key, pattern in wanted.arguments.items()
            )
            for t in ran
        )
        shown = ", ".join(f"{k}~/{v}/" for k, v in wanted.arguments.items())
        tried = [t for t in observed.tools if t["name"] == wanted.name]
        detail = "" if found else (
            f" (tried: {orjson.dumps(tried[-1]['arguments']).decode()}, ok={tried[-1]['ok']})"
            if tried else " (never called)"
        )  # fmt: skip
        verdict(found, f"{wanted.name}({shown}) ran without error{detail}")
    for name in expect.not_tools:
        verdict(not any(t["name"] == name for t in ran), f"{name} did not run")
    if expect.booking is not None:
        verdict(
            (observed.bookings > 0) == expect.booking,
            f"a booking {'exists' if expect.booking else 'does not exist'} "
            f"(bookings: {observed.bookings})",
        )
    for outcome in expect.outcomes:
        verdict(
            outcome in observed.outcomes,
            f"outcome {outcome} recorded (outcomes: {', '.join(observed.outcomes) or 'none'})",
        )
    for pattern in expect.says:
        verdict(
            any(re.search(pattern, line) for line in observed.agent_lines),
            f"the agent says something matching /{pattern}/",
        )
    for pattern in expect.avoids:
        hits = [line for line in observed.agent_lines if re.search(pattern, line)]
        verdict(
            not hits,
            f"the agent never says anything matching /{pattern}/"
            + (f" (it said {hits[0][:120]!r})" if hits else ""),
        )
    if expect.handoff is not None:
        verdict(
            observed.handoff == expect.handoff,
            f"the call is {'' if expect.handoff else 'not '}handed to a person",
        )


async def judge_rubric(
    judge: ChatClient, scenario: Scenario, transcript: Sequence[tuple[str, str]], result: RunResult
) -> None:
    """Ask the judge model whether each rubric criterion holds (a forced function call)."""
    criteria = scenario.rubric.criteria
    properties = {
        f"c{i}": {"type": "boolean", "description": text} for i, text in enumerate(criteria, 1)
    }
    text = "\n".join(f"{'Caller' if s == 'caller' else 'Agent'}: {t}" for s, t in transcript)
    try:
        message = await judge.complete(
            {
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": "You judge a phone call between a caller and "
                     "an AI agent. For each criterion answer true only if the transcript clearly "
                     "shows it holds."},
                    {"role": "user", "content": f"Transcript:\n{text}"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "verdicts", "description": "Whether each criterion holds.",
                    "parameters": {"type": "object", "properties": properties,
                                   "required": list(properties), "additionalProperties": False}}}],
                "tool_choice": {"type": "function", "function": {"name": "verdicts"}},
            }
        )  # fmt: skip
        calls = message.get("tool_calls") or []
        values = orjson.loads(calls[0]["function"]["arguments"]) if calls else {}
    except (RuntimeError, httpx.HTTPError, orjson.JSONDecodeError, KeyError, IndexError) as exc:
        result.failures.append(f"the judge gave no verdict: {exc}")
        return
    for i, criterion in enumerate(criteria, 1):
        ok = values.get(f"c{i}") is True
        (result.passed_checks if ok else result.failures).append(f"rubric: {criterion}")
