"""``relay eval``: run agent scenarios with a model playing the caller (see relay.eval).

    relay eval prompts/evals --caller-url http://127.0.0.1:8000/v1 --runs 3 --junit eval.xml
    relay eval --from-call CA0123... -o prompts/evals/new.toml

The agent's model is the usual one (``OPENAI_BASE_URL``, ``RELAY_LLM_MODEL``). Exit code 0 when
every scenario passed in at least ``--min-pass-rate`` of its runs, 1 otherwise, 2 for a
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.cli.common import settings_from
from relay.errors import ConfigError
from relay.eval.scenarios import Known, draft_toml, load_scenarios

DEFAULT_SCENARIOS = Path("prompts/evals")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval", help="test agents with scenarios played by a model caller (pass rates, JUnit)"
    )
    parser.add_argument(
        "scenarios", nargs="*", type=Path,
        help=f"scenario files or directories (default: {DEFAULT_SCENARIOS})",
    )  # fmt: skip
    parser.add_argument("--agent", help="only the scenarios of this agent")
    parser.add_argument("--scenario", help="only scenarios whose name matches this regex")
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario (default 1)")
    parser.add_argument(
        "--caller-url", help="the caller model's OpenAI-compatible base URL (default: the agent's)"
    )
    parser.add_argument("--caller-model", default=None, help="the caller's model name")
    parser.add_argument("--caller-key", default="not-needed", help="the caller server's API key")
    parser.add_argument("--judge-url", help="a judge model for the rubrics (default: none)")
    parser.add_argument("--judge-model", default=None, help="the judge's model name")
    parser.add_argument(
        "--min-pass-rate", type=float, default=1.0,
        help="each scenario must pass at least this share of its runs (default 1.0)",
    )  # fmt: skip
    parser.add_argument("--junit", type=Path, help="write JUnit XML here")
    parser.add_argument(
        "--from-call", metavar="CALLSID", help="draft a scenario from a recorded call"
    )
    parser.add_argument("-o", "--output", type=Path, help="with --from-call: the file to write")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show the service's log lines (by default only its errors, as relay replay)",
    )  # fmt: skip
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    if args.from_call:
        return asyncio.run(_draft(args))
    result: int = asyncio.run(_run(args))
    return result


async def _run(args: argparse.Namespace) -> int:
    # Imported here, not above: the runner loads the whole app (about half a second), which
    # ``--from-call`` and ``--help`` do not need. Not a cycle: relay.eval imports no CLI.
    import httpx

    from relay.agents import AgentRegistry
    from relay.eval.report import junit, summaries, text_report
    from relay.eval.runner import ChatClient, RunResult, run_scenarios
    from relay.tools import default_registry

    # The service's info lines (every call's start, turn and end) would bury the progress
    # lines: errors only, unless -v, as relay replay does.
    settings = settings_from(args) if args.verbose else settings_from(args, RELAY_LOG_LEVEL="error")
    # A scenario naming an agent, a tool or an outcome that does not exist (a typo) is an
    # error in the file, found before any run: the agents the app will load, its tools.
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    known = Known.of(
        {name: agent.tools for name, agent in agents.agents.items()}, default_registry()
    )
    scenarios = load_scenarios(args.scenarios or [DEFAULT_SCENARIOS], known=known)
    if args.agent:
        scenarios = [s for s in scenarios if s.agent == args.agent]
    if args.scenario:
        try:
            wanted = re.compile(args.scenario)
        except re.error as exc:
            raise ConfigError(f"--scenario: bad regex {args.scenario!r}: {exc}") from exc
        scenarios = [s for s in scenarios if wanted.search(s.name)]
    if not scenarios:
        raise ConfigError("no scenario matches --agent/--scenario")
    if args.runs < 1:
        raise ConfigError("--runs must be at least 1")
    model = settings.llm_model or "gpt-4o-mini"
    async with httpx.AsyncClient() as http:
        caller = ChatClient(
            http,
            base_url=args.caller_url or settings.llm_base_url,
            model=args.caller_model or model,
            api_key=args.caller_key if args.caller_url else settings.llm_api_key(),
        )
        judge = None
        if args.judge_url:
            judge = ChatClient(
                http, base_url=args.judge_url, model=args.judge_model or model,
                api_key=args.caller_key,
            )  # fmt: skip

        def progress(result: RunResult) -> None:
            mark = "ok  " if result.passed else "FAIL"
            print(f"{mark} {result.scenario} run {result.run}", file=sys.stderr)

        results = await run_scenarios(
            settings, scenarios, caller=caller, judge=judge, runs=args.runs, progress=progress
        )
    sys.stdout.write(text_report(results, min_rate=args.min_pass_rate))
    if args.junit:
        junit(results, args.junit)
    ok = all(s.rate >= args.min_pass_rate for s in summaries(results))
    return 0 if ok else 1


async def _draft(args: argparse.Namespace) -> int:
    from relay.services import costs, outcomes  # here, not above: only --from-call needs them
    from relay.storage import repository
    from relay.storage.db import Database

    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    db = Database(settings.database)
    await db.migrate()
    try:
        call, turns = await repository.call_history(db, args.from_call)
        if call is None:
            raise ConfigError(f"no call {args.from_call!r} in {settings.database}")
        events = await repository.call_events(db, args.from_call)
    finally:
        await db.close()
    said = [t.content.strip() for t in turns if t.role == "user" and t.content.strip()]
    event_rows = [{"kind": e.kind, "data": e.data} for e in events]
    found = outcomes.derive({"outcome": call.outcome, "status": call.status}, event_rows)
    tools = _tools_that_ran(event_rows)
    usage = costs.usage_of(event_rows)
    scenario = {
        "name": f"from-{call.call_sid[-8:]}",
        "agent": call.agent,
        "persona": "A caller like the one in the recorded call (edit me).",
        "goal": f"What the recorded caller wanted (edit me); the call ended {', '.join(found)}.",
        "facts": said,
        "turn_limit": max(3, len(said) + 2),
        "opening": said[0] if said else None,
        "now": _aware(call.started_at).isoformat(),
        "tools": tools,
        "outcomes": [o for o in found if o not in ("answered-only", "abandoned", "llm-failure")],
        "booking": "booked" in found or None,
    }
    text = draft_toml(scenario)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(
            f"Wrote {args.output} ({len(tools)} tool expectation(s), {usage['requests']} model requests in the call).",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _tools_that_ran(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools that ran without error, with their string arguments as exact patterns
    (:func:`_exactly`)."""
    from relay.eval.runner import _arguments
    from relay.replay.compare import REFERENCES

    arguments: dict[str, Any] = {}
    tools: list[dict[str, Any]] = []
    for event in events:
        data = event["data"] or {}
        if event["kind"] == "tool_call":
            arguments[str(data.get("id"))] = data.get("arguments")
        elif event["kind"] == "tool_result":
            result = data.get("data")
            if isinstance(result, dict) and "error" in result:
                continue
            args = _arguments(arguments.get(str(data.get("id"))))
            tools.append(
                {
                    "name": str(data.get("name")),
                    "arguments": {
                        k: _exactly(v, REFERENCES) for k, v in args.items() if isinstance(v, str)
                    },
                }
            )
    return tools


def _exactly(value: str, references: Sequence[str]) -> str:
    """A pattern for ``value`` exactly, in any case, except that a reference relay's tools
    make up at random (a quote id, a booking reference: ``references``, the ones replay
    ignores) matches any reference of its shape, since the next run makes up another:
    ``Q139943`` -> ``(?i)^(?:\\bQ\\d{6}\\b)$``."""
    shapes = re.compile("|".join(f"(?P<r{i}>{p})" for i, p in enumerate(references)))
    parts: list[str] = []
    at = 0
    for match in shapes.finditer(value):
        index = int(str(match.lastgroup)[1:])
        parts += [re.escape(value[at : match.start()]), f"(?:{references[index]})"]
        at = match.end()
    parts.append(re.escape(value[at:]))
    return "(?i)^" + "".join(parts) + "$"
