"""Regenerate the recorded calls in this directory.

Each call is a real call through the app (``create_app`` under uvicorn, a ``SimulatedCall`` over
a real WebSocket) with the shipped piano agent, answered by :class:`relay.testing.scripted.ScriptedLLM`
over HTTP, with the clock pinned so that the requests do not change from run to run. The
calls are exported with ``relay.recordings.format`` and written here as ``NAME.jsonl``; the tests
replay them in cassette mode.

    python tests/sessions/record.py            # rewrite every recording
    python tests/sessions/record.py handoff    # just one
    python tests/sessions/record.py --bench    # time the replay of a 20-turn call (--fast)

The agent is the shipped piano agent as it is (``prompts/piano-removals.toml``, its business
data from ``data/``), so ``relay replay tests/sessions`` run from the repository root replays
them against the current agent. Run this again (and commit the files) whenever the agent's
prompt, its lines, its list of tools, the price list or the call path change on purpose: the
replay tests fail until then, which is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.config import load_settings
from relay.logging import configure as configure_logging
from relay.recordings.format import export_call
from relay.testing import Fail, FakeLLMServer, ScriptedLLM, Text, ToolCall, ToolCalls
from relay.testing.simcall import SimulatedCall, serve_in_process
from relay.web.app import Runtime, create_app

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: The pinned clock: Wednesday 11 March 2026, 9:30 in Melbourne.
NOW = datetime(2026, 3, 10, 22, 30, tzinfo=UTC)
CALLER = "+61412345678"
BUSINESS = "+61390001234"


def prompts_dir(scratch: Path) -> Path:
    """A prompts directory holding just the shipped piano agent, as it is.

    Only that agent: the others in ``prompts/`` play no part in these calls.
    """
    shipped = REPO / "prompts" / "piano-removals.toml"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / shipped.name).write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    return scratch


def settings(scratch: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "DATABASE_URL": f"sqlite:///{scratch / 'relay.db'}",
        "RELAY_PROMPTS_DIR": str(prompts_dir(scratch / "prompts")),
        "RELAY_DATA_DIR": str(REPO / "data"),
        "OPENAI_API_KEY": "test",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "RELAY_LLM_MAX_RETRIES": 1,
        "TWILIO_AUTH_TOKEN": None,
        "TWILIO_ACCOUNT_SID": None,
        "RELAY_PUBLIC_URL": None,
        "RELAY_LOG_LEVEL": "error",
        "RELAY_KNOWLEDGE": False,
    }
    values.update(overrides)
    return load_settings(**values)


def sid(prefix: str, name: str) -> str:
    return prefix + hashlib.sha256(name.encode()).hexdigest()[:32]


# == the calls ===========================================================================


async def quote(call: SimulatedCall, llm: ScriptedLLM) -> None:
    quote = ToolCall(
        "quote_piano_move",
        {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Geelong", "move_date": "2026-03-17"},
        id="call_quote_1",
    )  # fmt: skip
    llm.push(
        Text("Happy to help with that. Where is the piano now, where is it going, and when?"),
        ToolCalls([quote]),
    )
    llm.default = _read_the_quote
    await call.say("Hi, I'd like a quote to move an upright piano.")
    await call.say(
        "From Brunswick to Geelong next Tuesday, the seventeenth. Ground floor at both ends, no steps."
    )
    llm.default = None
    llm.push(
        ToolCalls([ToolCall("switch_language", {"language": "it-IT"}, id="call_lang_1")]),
        Text("Certo! Continuiamo in italiano. Il preventivo resta valido fino al dieci aprile."),
        ToolCalls([ToolCall("end_call", {"reason": "caller said goodbye"}, id="call_end_1")]),
    )
    await call.say("Could we carry on in Italian? My mother is listening.")
    await call.prompt("That's all for now, thanks, bye.")
    await call.reply()
    await call.info("agentSpeaking", "off")
    await call.reply()  # the end frame


def _read_the_quote(body: dict[str, Any]) -> Text:
    """The model reading out the total the quote tool gave (whatever the price list says)."""
    result = next(str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "tool")
    total = re.search(r"The total is (\$[\d,.]+)", result)
    amount = total.group(1) if total else "what the price list says"
    return Text(f"That comes to {amount} including GST. Would you like me to text you the quote?")


async def interruption(call: SimulatedCall, llm: ScriptedLLM) -> None:
    llm.push(
        Text("We cover all of Melbourne and regional Victoria, from Geelong and the Bellarine to Ballarat, "
             "Bendigo and the Mornington Peninsula, and we can often travel further for a grand piano."),
        Text("Yes, we go to Geelong every week."),
        Text("You're welcome. Bye for now!"),
    )  # fmt: skip
    llm.token_delay = 0.03  # still talking when the caller barges in
    await call.prompt("What areas do you cover?")
    tokens: list[str] = []
    while len(tokens) < 8:
        frame = await call.next_frame()
        assert frame is not None and frame["type"] == "text", frame
        tokens.append(frame["token"])
    heard = "".join(tokens[:5])  # Twilio has played a little less than it was sent
    await call.interrupt(heard, duration_ms=1400)
    llm.token_delay = 0.0
    while True:  # the cancelled answer's talk cycle is closed
        frame = await call.next_frame()
        if frame is not None and frame.get("last"):
            break
    await call.say("Sorry, do you go to Geelong?")
    await call.say("Great, thanks. Bye.")


async def handoff(call: SimulatedCall, llm: ScriptedLLM) -> None:
    llm.push(
        ToolCalls([ToolCall("transfer_to_person", {"reason": "caller asked for a person",
                                                   "summary": "Caller wants to talk about moving a grand piano to a second floor."},
                            id="call_transfer_1")]),
    )  # fmt: skip
    await call.prompt(
        "I've got a grand piano going up to a second floor. Can I talk to a real person please?"
    )
    await call.reply()
    await call.info("agentSpeaking", "off")
    await call.reply()


async def keypad(call: SimulatedCall, llm: ScriptedLLM) -> None:
    llm.push(Text("Hello! You're through to Keystone Piano Movers. How can I help?"))
    await call.say("Hello?")
    await call.dtmf("9")
    await call.reply()
    await call.dtmf("0")
    await call.reply()
    await call.info("agentSpeaking", "off")
    await call.reply()


async def llm_failure(call: SimulatedCall, llm: ScriptedLLM) -> None:
    llm.push(
        Fail(500),
        Fail(500),
        Text(
            "A baby grand from Richmond to Kew would be no trouble. When would you like it moved?"
        ),
    )
    await call.say("How much to move a baby grand from Richmond to Kew?")
    await call.say("I said, how much to move a baby grand from Richmond to Kew?")


Script = Callable[[SimulatedCall, ScriptedLLM], Awaitable[None]]
CALLS: dict[str, tuple[Script, dict[str, Any]]] = {
    "quote": (quote, {
        "notes": "A caller asks for a quote: the model calls quote_piano_move and reads the total, then "
                 "switches to Italian and ends the call.",
        "expect": {"tools": [{"name": "quote_piano_move", "arguments": {"piano_type": "(?i)upright",
                                                                        "pickup": "(?i)brunswick", "dropoff": "(?i)geelong"}},
                             {"name": "switch_language", "arguments": {"language": "(?i)^it"}},
                             {"name": "end_call", "arguments": {"reason": "(?i)goodbye"}}],
                   "says": [r"\$\d"], "end": "end-call", "avoids": ["(?i)guarantee"]},
    }),
    "interruption": (interruption, {
        "notes": "The caller barges in on a long answer after five tokens were played.",
        "expect": {"says": ["(?i)geelong"], "handoff": False},
    }),
    "handoff": (handoff, {
        "notes": "The caller asks for a person; the model calls transfer_to_person.",
        "expect": {"tools": [{"name": "transfer_to_person", "arguments": {"reason": "(?i)person"}}], "handoff": True},
    }),
    "keypad": (keypad, {
        "notes": "The caller presses 9 (menu) and then 0 (the office).",
        "expect": {"handoff": True, "says": ["(?i)press zero"]},
    }),
    "llm-failure": (llm_failure, {
        "notes": "The LLM answers HTTP 500 twice (RELAY_LLM_MAX_RETRIES=1): the agent apologises, then answers.",
        "expect": {"says": ["(?i)baby grand"], "cassette": {"says": ["(?i)snag"]}},
    }),
}  # fmt: skip


async def record(
    names: list[str],
    out_dir: Path,
    *,
    quiet: bool = False,
    calls: dict[str, tuple[Script, dict[str, Any]]] | None = None,
) -> list[Path]:
    """Make the calls named, one after the other on one app, and write their recordings.

    ``calls`` holds the scripts by name (default :data:`CALLS`, the committed recordings).
    """
    calls = CALLS if calls is None else calls
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        llm = ScriptedLLM()
        async with FakeLLMServer(llm) as fake:
            config = settings(scratch, OPENAI_BASE_URL=fake.base_url)
            runtimes: list[Runtime] = []
            app = create_app(config, now=lambda: NOW, configure=runtimes.append)
            async with serve_in_process(app) as base:
                url = base.replace("http://", "ws://") + "/ws"
                for name in names:
                    call = SimulatedCall(
                        url,
                        from_=CALLER,
                        to=BUSINESS,
                        call_sid=sid("CA", name),
                        session_id=sid("VX", name),
                    )
                    await call.connect()
                    await calls[name][0](call, llm)
                    await call.close()
                    while runtimes[0].active_sessions:  # noqa: ASYNC110 - a count, not an event
                        await asyncio.sleep(0.01)
                await runtimes[0].deps.recorder.flush()
                written = []
                for name in names:
                    recording = await export_call(
                        runtimes[0].deps.db, sid("CA", name), extra=calls[name][1]
                    )
                    path = out_dir / f"{name}.jsonl"
                    recording.write(path)
                    written.append(path)
                    if not quiet:
                        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                        print(
                            f"wrote {shown}: {len(recording.turns)} turns, {len(recording.events)} events"
                        )
    return written


# == the benchmark =======================================================================


async def record_long(out: Path, turns: int = 20) -> Path:
    """A call of ``turns`` caller turns, each answered with about twenty tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        llm = ScriptedLLM(
            default=lambda body: Text(
                f"Answer number {sum(1 for m in body['messages'] if m['role'] == 'user')}: "
                "we move upright and grand pianos across Melbourne every day of the week."
            )
        )
        async with FakeLLMServer(llm) as fake:
            runtimes: list[Runtime] = []
            app = create_app(
                settings(scratch, OPENAI_BASE_URL=fake.base_url),
                now=lambda: NOW,
                configure=runtimes.append,
            )
            async with serve_in_process(app) as base:
                call = SimulatedCall(
                    base.replace("http://", "ws://") + "/ws",
                    from_=CALLER,
                    to=BUSINESS,
                    call_sid=sid("CA", "long"),
                    session_id=sid("VX", "long"),
                )
                await call.connect()
                for i in range(turns):
                    await call.say(f"Question {i + 1}: do you move pianos on weekends?")
                await call.close()
                while runtimes[0].active_sessions:  # noqa: ASYNC110 - a count, not an event
                    await asyncio.sleep(0.01)
                (await export_call(runtimes[0].deps.db, call.call_sid)).write(out)
    return out


def bench(rounds: int = 5) -> None:
    """Record a 20-turn call, then time ``relay replay FILE --fast`` (cassette mode) on it."""
    import os

    from relay.cli.main import main as relay_main

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        path = asyncio.run(record_long(scratch / "long.jsonl"))
        os.environ.update(
            RELAY_PROMPTS_DIR=str(prompts_dir(scratch / "prompts")),
            RELAY_DATA_DIR=str(REPO / "data"),
            RELAY_KNOWLEDGE="false",
        )
        times = []
        for _ in range(rounds + 1):
            started = time.perf_counter()
            code = relay_main(["replay", str(path), "--fast", "--quiet"])
            times.append(time.perf_counter() - started)
            if code != 0:
                raise SystemExit("the replay of the benchmark call regressed")
        cold, warm = times[0], sorted(times[1:])
        print(
            f"replay of a 20-turn recording, cassette mode, --fast: {warm[len(warm) // 2]:.3f} s "
            f"(median of {rounds}; best {warm[0]:.3f} s; {cold:.3f} s for the first one in this "
            "process, which also imports uvicorn, websockets and the migrations). Each figure is "
            "the whole replay: app start, the call over a real WebSocket, the comparison, app stop."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", choices=[*CALLS, []], help="the calls to record (default: all)"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--bench", action="store_true", help="time the replay of a 20-turn call instead"
    )
    args = parser.parse_args(argv)
    if args.bench:
        bench()
        return 0
    configure_logging("error")
    asyncio.run(record(args.names or list(CALLS), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
