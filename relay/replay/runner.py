"""``relay replay``: run recorded calls again, against the agent as it is now, and show what changed.

The caller's side of each recording (setup, prompts, keypad presses, info and interrupts, in
order) is sent again over a real WebSocket, to the app run in-process (the default) or to a
running server (``--url``). Each frame waits for the agent to reach the point it had reached
when the frame was first received, measured in what the agent sent, not in time: the same
number of finished talk cycles, plus, for a barge-in, the same number of characters of the
answer being spoken. So an interrupt lands at the same point of the agent's speech. Between
frames that do not wait on the agent the caller keeps the recorded pauses, unless ``--fast``.

Each step waits for the agent at most ``--timeout`` seconds (:data:`DEFAULT_TIMEOUT`). A step
the agent reached by its own caller-silence timer (the recording's ``caller_silent`` events:
it asked whether the caller was still there, or said goodbye and ended the call) waits that
much longer: as long as the agent took then, with the ``silence_timeout`` of its profile now in
place of the recorded one (:func:`step_wait`). ``--fast`` shortens the caller's pauses, never
the agent's timers.

The console's supervisor commands (whisper, take over, end: ``supervisor`` events) are given
again in-process at the point they were applied, relative to the caller's frames and the
agent's talk cycles (in cassette mode also after the model requests made before them), the way
the console gives them: a pending command in the app's database that the worker's
:class:`~relay.call.supervisor.Supervisor` takes and applies to the session. Over ``--url``
they cannot be given (the server's console is not ours): that is reported as a problem.

Modes
    ``cassette`` (default): the model's recorded answers are served back, piece by piece as
    they were streamed, with recorded failures and answers cut off by an interruption, so the
    run is deterministic; the clock is pinned to the call's start and the recorded retrieval
    passages are handed back too. A request that no longer matches the recorded one (its
    messages or its tool names; the current-time line is ignored) is a divergence, shown as a
    diff. With ``--url`` the answers come from an OpenAI-compatible server started here, which
    the server under test must use as its ``OPENAI_BASE_URL``.
    ``live``: the configured model answers anew; wording may change, so only expectations,
    silences, failures and a different ending count as regressions.

The result is a turn-by-turn comparison of what the agent said, the tools it called (with
arguments and results), and how the call ended, with a summary line; the exit code is 1 when
anything regressed. ``--junit FILE`` writes one test case per recording.

In-process, each recording gets an app of its own with a fresh SQLite database (no state leaks
from one replay into the next), the clock pinned to the call's start, and no Twilio
credentials (nothing is texted or signed). Over ``--url`` the server is used as it is: its
clock, its database (the CallSid is made unique so no stored call is resumed) and its settings;
only what the caller sees (and, in cassette mode, what the model is asked) is compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
import websockets

from relay.agents import AgentRegistry
from relay.errors import ConfigError, RelayError
from relay.recordings.format import Recording, RecordingError, load_call
from relay.replay.cassette import (
    Cassette,
    CassetteDirectory,
    CassetteLLM,
    CassetteRetriever,
    cassette_app,
    known_caller,
    serve_asgi,
)
from relay.replay.compare import (
    Masker,
    compare_requests,
    compare_transcripts,
    history_changes,
    quoted,
    shorten,
    transcript,
)
from relay.replay.expectations import Mode, check_expectations, expectations_for, tool_calls_in
from relay.replay.report import Report, junit, render
from relay.replay.script import Progress, SessionScript, Step, caller_script, parse_frame
from relay.storage.console import COMMANDS, add_command
from relay.storage.db import Database
from relay.testing.simcall import SimulatedCall
from relay.web.app import Runtime, create_app

log = structlog.get_logger("relay.replay.runner")

#: How long the caller waits for the agent to reach a recorded point before giving up (more
#: when the agent got there by its own caller-silence timer: :func:`step_wait`).
DEFAULT_TIMEOUT = {"cassette": 10.0, "live": 30.0}
#: Live mode: this long without a frame after an answer means the agent is waiting for the caller.
LIVE_SETTLE = 1.0
#: Live mode, when the recorded call ended at this point: how much longer the caller waits for
#: the ``end`` frame. An agent without speaker events lets its last line play for as long as it
#: takes to say (up to 8 s, ``relay.web.app``'s estimate) before it sends ``end``.
LIVE_ENDING_SETTLE = LIVE_SETTLE + 8.0
DEFAULT_LLM_PORT = 8089
_TURN_STARTS = frozenset({"prompt", "dtmf", "interrupt"})
#: Supervisor commands after which the agent speaks (a whisper only adds a note).
_SPEAKING_COMMANDS = frozenset({"takeover", "end"})

#: Gives a supervisor step's command to the call, before ``deadline``; what went wrong, if anything.
Supervise = Callable[[Step, float], Awaitable[str | None]]


@dataclass
class Options:
    mode: Mode = "cassette"
    fast: bool = False
    url: str | None = None
    timeout: float | None = None
    ignore: list[str] = field(default_factory=list)
    llm_host: str = "127.0.0.1"
    llm_port: int = DEFAULT_LLM_PORT
    live_retrieval: bool = False
    save: Path | None = None

    @property
    def wait(self) -> float:
        return self.timeout if self.timeout is not None else DEFAULT_TIMEOUT[self.mode]


@dataclass
class _Run:
    """What one replay produced."""

    events: list[dict[str, Any]]  # the server's events (in-process) or the caller's view
    server_side: bool
    problems: list[str]
    replayed: Recording | None = None
    tool_calls: list[dict[str, Any]] | None = None


async def replay(
    recording: Recording,
    settings: Any,
    options: Options,
    *,
    tools: Any = None,
    holder: dict[str, Cassette] | None = None,
) -> Report:
    """Replay one recording and compare. ``settings`` configures the in-process app."""
    started = time.perf_counter()
    masker = Masker(
        [*recording.ignore, *options.ignore],
        redacted=bool(recording.header.get("redacted")),
        fillers=filler_lines(recording.events),
    )
    name = (
        Path(recording.source).name if recording.source.endswith(".jsonl") else recording.call_sid
    )
    report = Report(name=name, call_sid=recording.call_sid, mode=options.mode, recorded=recording)
    cassette = Cassette(recording, masker) if options.mode == "cassette" else None
    scripts = caller_script(recording)
    if options.url is None:
        run = await _run_in_process(recording, scripts, settings, options, cassette, tools)
    else:
        if cassette is not None:
            if holder is None:
                raise ConfigError(
                    "replaying over --url in cassette mode needs the recorded-LLM server"
                )
            holder["cassette"] = cassette
        run = await _run_remote(recording, scripts, settings, options)
        if cassette is not None:
            run.tool_calls = cassette.tool_calls
            if cassette.exchanges and cassette.served == 0:
                run.problems.append(
                    f"the server never asked the recorded LLM for an answer: start it with OPENAI_BASE_URL=http://{options.llm_host}:{options.llm_port}/v1"
                )
    _compare(report, recording, run, cassette, masker, options)
    report.seconds = time.perf_counter() - started
    return report


def _compare(
    report: Report,
    recording: Recording,
    run: _Run,
    cassette: Cassette | None,
    masker: Masker,
    options: Options,
) -> None:
    recorded_items = transcript(recording.events, masker)
    now_items = transcript(run.events, masker)
    report.lines, report.changes = compare_transcripts(
        recorded_items, now_items, server_side=run.server_side
    )
    report.problems.extend(run.problems)
    report.replayed = run.replayed
    if cassette is not None:
        report.divergences = cassette.divergences
        unused = cassette.unused
        if unused > 0 and not run.problems:
            report.problems.append(
                f"{unused} recorded LLM answer{'s were' if unused > 1 else ' was'} never asked for"
            )
    if run.replayed is not None and options.mode == "cassette":
        report.history = history_changes(recording, run.replayed, masker)
    tool_calls = (
        run.tool_calls
        if run.tool_calls is not None
        else (tool_calls_in(run.events) if run.server_side else None)
    )
    report.checked = check_expectations(
        expectations_for(recording.expect, options.mode), now_items, tool_calls
    )
    # What fails the replay.
    regressions = report.regressions
    regressions.extend(report.problems)
    regressions.extend(f"expectation failed: {f}" for f in report.checked.failed)
    if options.mode == "cassette":
        regressions.extend(
            f"LLM request {d.number} differs from the recording: {d.summary}"
            for d in report.divergences
        )
        if report.changes:
            regressions.append(
                f"{len(report.changes)} change{'s' if len(report.changes) != 1 else ''} in what the agent did"
            )
        regressions.extend(f"history: {h}" for h in report.history)
    else:
        old_ends = [i.key for i in recorded_items if i.kind == "end"]
        new_ends = [i.key for i in now_items if i.kind == "end"]
        if [_reason(k) for k in old_ends] != [_reason(k) for k in new_ends]:
            regressions.append(
                f"the call ends differently: {', '.join(_reason(k) for k in old_ends) or 'no end'} then, {', '.join(_reason(k) for k in new_ends) or 'no end'} now"
            )
        new_errors = sum(1 for i in now_items if i.kind == "error") - sum(
            1 for i in recorded_items if i.kind == "error"
        )
        if run.server_side and new_errors > 0:
            regressions.append(
                f"{new_errors} more LLM failure{'s' if new_errors > 1 else ''} than in the recording"
            )


def _reason(key: tuple[Any, ...]) -> str:
    try:
        return str(orjson.loads(key[1]).get("reasonCode", "end"))
    except (orjson.JSONDecodeError, AttributeError, IndexError):
        return "end"


def _replay_settings(settings: Any, options: Options, directory: Path) -> Any:
    update: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{directory / 'replay.db'}",
        # Nothing reaches Twilio from a replay, and the in-process socket is not signed.
        "twilio_auth_token": None,
        "twilio_account_sid": None,
        "public_url": None,
        "admin_token": None,
    }
    if options.mode == "cassette" and not options.live_retrieval:
        update["knowledge_enabled"] = False
    return settings.model_copy(update=update)


def filler_lines(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The filler lines said in a recorded call (its ``filler`` events)."""
    lines = []
    for event in events:
        if event.get("kind") == "filler":
            line = (event.get("data") or {}).get("line")
            if isinstance(line, str):
                lines.append(line)
    return lines


async def _run_in_process(
    recording: Recording,
    scripts: list[SessionScript],
    settings: Any,
    options: Options,
    cassette: Cassette | None,
    tools: Any,
) -> _Run:
    problems: list[str] = []
    runtimes: list[Runtime] = []

    def configure(runtime: Runtime) -> None:
        runtimes.append(runtime)
        if cassette is not None:  # the fillers the agent may say now, if its model is slow
            cassette.masker.add_fillers(
                line
                for agent in runtime.deps.agents.agents.values()
                for line in (agent.filler_lines or ["One moment."])
            )
        if cassette is not None and not options.live_retrieval:
            runtime.deps.retriever = CassetteRetriever(cassette) if cassette.retrievals else None
        if cassette is not None and runtime.deps.directory is not None:
            # The replay's database is new: who the caller was is in the recording.
            told, customer, first = known_caller(recording)
            if told:
                runtime.deps.directory = CassetteDirectory(cassette, customer, max(first, 1))

    pinned = recording.started_at
    with tempfile.TemporaryDirectory(prefix="relay-replay-") as tmp:
        app_settings = _replay_settings(settings, options, Path(tmp))
        llm = CassetteLLM(cassette) if cassette is not None else None
        if llm is None:
            app_settings.llm_api_key()  # fail now, naming the variable
        app = create_app(
            app_settings, llm=llm, tools=tools, now=lambda: pinned, configure=configure
        )
        async with contextlib.AsyncExitStack() as stack:
            # The app's lifespan is run here rather than by uvicorn, which answers a failed
            # startup (a wrong prompts directory, a missing price list) with sys.exit.
            await stack.enter_async_context(app.router.lifespan_context(app))
            base = await stack.enter_async_context(serve_asgi(app, "127.0.0.1", 0))
            url = base.replace("http://", "ws://", 1) + "/ws"
            runtime = runtimes[0]
            await runtime.knowledge_ready()  # --live-retrieval: the first search not cold

            async def supervise(step: Step, deadline: float) -> str | None:
                return await give_command(runtime, recording.call_sid, step, cassette, deadline)

            for script in scripts:
                silence = silence_timeout(runtime.deps.agents, recording, script)
                problems.extend(
                    await _drive(
                        url, script, options, rewrite=None, supervise=supervise, silence=silence
                    )
                )
                await _settled(runtime, options.wait)
            await runtime.deps.recorder.flush()
            try:
                replayed = await load_call(runtime.deps.db, recording.call_sid)
            except RecordingError:
                replayed = Recording(
                    header={"format": "relay-recording", "version": 1, "call": dict(recording.call)}
                )
                problems.append("the replayed call left no record (did the setup frame fail?)")
    if options.save is not None:
        options.save.mkdir(parents=True, exist_ok=True)
        replayed.write(
            options.save / f"{Path(recording.source).stem or recording.call_sid}.replayed.jsonl"
        )
    return _Run(replayed.events, True, problems, replayed)


def silence_timeout(
    agents: AgentRegistry | None, recording: Recording, script: SessionScript
) -> float | None:
    """The ``silence_timeout`` of the agent that answers the session now: the one its setup
    frame reaches (as the session resolves it), else the recorded agent. None when the agents
    cannot be known."""
    if agents is None:
        return None
    for step in script.steps:
        if step.kind == "setup":
            frame = parse_frame(step.raw)
            raw = frame.get("customParameters")
            parameters = (
                {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
            )
            return agents.resolve(parameters, str(frame.get("to") or "")).silence_timeout
    agent = agents.agents.get(str(recording.call.get("agent") or ""))
    return agent.silence_timeout if agent is not None else None


def step_wait(step: Step, wait: float, silence: float | None) -> float:
    """How long the caller waits for the agent to reach ``step``'s point: ``wait`` (``--timeout``
    or the mode's default), and, when the agent got there by its own caller-silence timer, as
    long again as it took in the recording, with ``silence`` (its ``silence_timeout`` now; None
    when unknown: the recorded one) in place of each recorded silence."""
    if not step.silences:
        return wait
    held = step.held
    if silence is not None:
        held += sum(silence - recorded for recorded in step.silences)
    return wait + max(0.0, held)


async def give_command(
    runtime: Runtime, call_sid: str, step: Step, cassette: Cassette | None, deadline: float
) -> str | None:
    """Give the step's recorded supervisor command to the call as the console gives it: a
    pending ``call_commands`` row, which the worker's supervisor takes and applies to the
    session (its poll is made here and now rather than on its next tick). In cassette mode the
    model requests the call had made before the command are waited for first, so that a
    whisper lands on the same side of a request as it did. Returns what went wrong."""
    command = step.command
    assert command is not None
    what = f"the supervisor's {command.kind}"
    supervisor = runtime.supervisor
    if supervisor is None:
        return f"{what} cannot be given: the app runs no supervisor"
    if command.kind not in COMMANDS:
        return f"{what} cannot be given: not a command this relay knows ({', '.join(COMMANDS)})"
    problem = None
    # The cassette counts requests as they are made; nothing signals it: poll.
    while cassette is not None and cassette.position < step.requests:
        if time.perf_counter() >= deadline:
            problem = f"{what} was given before LLM request {step.requests}, which never came"
            break
        await asyncio.sleep(0.002)
    applied = supervisor.applied
    await add_command(runtime.deps.db, call_sid, command.kind, command.argument, command.by)
    await supervisor.poll()
    # The worker's own poll may have taken it first (it is applied once either way): wait for
    # that poll to apply it. A call that is no longer in progress never takes it.
    while supervisor.applied == applied:
        if time.perf_counter() >= deadline:
            return f"{what} was never applied: the call was no longer in progress"
        await asyncio.sleep(0.002)
        await supervisor.poll()
    return problem


async def _settled(runtime: Any, limit: float) -> None:
    """Wait until the server side of every call has closed (and flushed its recording)."""
    deadline = time.perf_counter() + limit
    # The runtime keeps a count, not an event: poll it.
    while runtime.active_sessions and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.002)


async def _run_remote(
    recording: Recording, scripts: list[SessionScript], settings: Any, options: Options
) -> _Run:
    assert options.url is not None
    suffix = "-replay-" + uuid.uuid4().hex[:8]
    problems: list[str] = []
    view: list[dict[str, Any]] = []

    def rewrite(raw: str) -> str:
        # A fresh CallSid: the server's database may already hold the original call, and a
        # setup with a known CallSid would resume it.
        frame = parse_frame(raw)
        if frame.get("type") != "setup":
            return raw
        frame["callSid"] = str(frame.get("callSid") or recording.call_sid) + suffix
        frame["sessionId"] = str(frame.get("sessionId") or "VX") + suffix
        return orjson.dumps(frame).decode()

    agents = _profiles(settings)
    for number, script in enumerate(scripts):
        if number:
            await asyncio.sleep(0.3)  # let the server store the first session before resuming
        problems.extend(
            await _drive(
                options.url,
                script,
                options,
                rewrite=rewrite,
                view=view,
                settings=settings,
                silence=silence_timeout(agents, recording, script),
            )
        )
    return _Run(view, False, problems)


def _profiles(settings: Any) -> AgentRegistry | None:
    """The agent profiles of these settings (the server's, as far as can be known here)."""
    try:
        return AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    except (RelayError, OSError, ValueError, AttributeError):
        return None


async def _drive(
    url: str,
    script: SessionScript,
    options: Options,
    *,
    rewrite: Callable[[str], str] | None,
    view: list[dict[str, Any]] | None = None,
    settings: Any = None,
    supervise: Supervise | None = None,
    silence: float | None = None,
) -> list[str]:
    """Play one session's caller side, and the supervisor's commands (``supervise``; None: they
    cannot be given). ``silence``: the agent's caller-silence timeout now (:func:`step_wait`).
    Returns what went wrong (timeouts, early close)."""
    problems: list[str] = []
    auth, signed = None, None
    if settings is not None and options.url is not None:
        auth = settings.twilio_auth_token
        if settings.public_url:
            signed = "wss://" + settings.public_url.split("://", 1)[1] + "/ws"
    call = SimulatedCall(url, auth_token=auth, signed_url=signed)
    try:
        await call.connect(setup=False)
    except (OSError, websockets.InvalidStatus, websockets.InvalidURI) as exc:
        return [f"cannot connect to {url}: {exc}"]
    progress = Progress()
    closed = False
    live = options.mode == "live"
    last_frame = time.perf_counter()
    answered_from = 0  # the agent's finished cycles when the caller last took a turn

    async def receive(deadline: float) -> bool:
        """Take one frame; False when the socket closed or the deadline passed."""
        nonlocal closed, last_frame
        try:
            frame = await call.next_frame(max(0.001, deadline - time.perf_counter()))
        except TimeoutError:
            return False
        if frame is None:
            closed = True
            return False
        frame.pop("_t", None)
        last_frame = time.perf_counter()
        progress.feed(frame)
        if view is not None:
            view.append({"kind": "frame_out", "data": {"raw": orjson.dumps(frame).decode()}})
        return True

    def answered() -> bool:
        """Live mode: the agent has answered the caller's last turn and stopped talking."""
        return live and (progress.cycles > answered_from or progress.ended) and not progress.frames

    try:
        for step in script.steps:
            limit = step_wait(step, options.wait, silence)
            deadline = time.perf_counter() + limit
            # The agent's own timers keep it quiet on purpose: not a sign it has answered.
            settle = (LIVE_ENDING_SETTLE if step.wait.ended else LIVE_SETTLE) + (
                limit - options.wait
            )
            while not closed and not progress.reached(step.wait):
                # A new answer can take another shape than the recorded one: once it has
                # been said and nothing more comes for a moment, the caller goes on.
                if answered() and time.perf_counter() - last_frame >= settle:
                    break
                wake = min(deadline, last_frame + settle) if answered() else deadline
                if not await receive(wake) and not closed and time.perf_counter() >= deadline:
                    problems.append(
                        f"timed out after {round(limit, 1):g}s waiting for the agent before {_describe(step)}"
                    )
                    break
            if closed:
                if step.kind != "hangup":
                    problems.append(f"the server closed the connection before {_describe(step)}")
                break
            if step.pause > 0 and not options.fast:
                await asyncio.sleep(step.pause)
            if step.command is not None:
                if supervise is None:
                    problems.append(
                        f"{_describe(step)} cannot be given over --url (the server's console is not this replay's): replay the call in-process"
                    )
                elif (problem := await supervise(step, deadline)) is not None:
                    problems.append(problem)
                if step.command.kind in _SPEAKING_COMMANDS:
                    answered_from = progress.cycles
                continue
            if step.raw is None:
                await call.close(step.close_code)
                break
            raw = rewrite(step.raw) if rewrite is not None else step.raw
            if live and step.kind == "interrupt":
                raw = _heard_now(raw, progress)
            try:
                await call.send(raw)
            except websockets.ConnectionClosed:
                closed = True
                problems.append(f"the server closed the connection before {_describe(step)}")
                break
            if step.kind in _TURN_STARTS:
                answered_from = progress.cycles
            if view is not None:
                view.append({"kind": "frame_in", "data": {"raw": raw}})
    finally:
        if not closed:
            with contextlib.suppress(Exception):
                await call.close()
        while await receive(time.perf_counter() + 0.5):  # what was already on its way
            pass
    return problems


def _heard_now(raw: str, progress: Progress) -> str:
    """The interrupt frame, hearing as many characters of the new answer as were heard then."""
    frame = parse_frame(raw)
    heard = str(frame.get("utteranceUntilInterrupt") or "")
    frame["utteranceUntilInterrupt"] = progress.heard(len(heard))
    return orjson.dumps(frame).decode()


def _describe(step: Step) -> str:
    if step.command is not None:
        what = f"the supervisor's {step.command.kind}"
        return (
            f"{what} {quoted(shorten(step.command.argument, 60))}"
            if step.command.argument
            else what
        )
    if step.raw is None:
        return "the caller's hang-up"
    frame = parse_frame(step.raw)
    if step.kind == "prompt":
        return f"the caller's prompt {quoted(shorten(str(frame.get('voicePrompt', '')), 60))}"
    if step.kind == "dtmf":
        return f"the caller's key press {frame.get('digit')}"
    if step.kind == "interrupt":
        return "the caller's interrupt"
    return f"the caller's {step.kind} frame"


async def load_targets(targets: Sequence[str], settings: Any) -> list[Recording]:
    """Recordings from files, directories (``*.jsonl``, sorted) and CallSids in the database."""
    recordings, call_sids = read_files(targets)
    if call_sids:
        db = Database(settings.database)
        try:
            await db.migrate()
            for sid in call_sids:
                recordings.append(await load_call(db, sid))
        finally:
            await db.close()
    return recordings


def read_files(targets: Sequence[str]) -> tuple[list[Recording], list[str]]:
    """The recordings the targets name as files or directories, and the other targets."""
    recordings: list[Recording] = []
    call_sids: list[str] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            files = sorted(
                p for p in path.glob("*.jsonl") if not p.name.endswith(".replayed.jsonl")
            )
            if not files:
                raise RecordingError(f"{path}: no *.jsonl recordings")
            recordings.extend(Recording.read(p) for p in files)
        elif path.exists() or target.endswith(".jsonl"):
            recordings.append(Recording.read(path))
        else:
            call_sids.append(target)
    return recordings, call_sids


async def run_replays(
    recordings: Sequence[Recording],
    settings: Any,
    options: Options,
    *,
    out: Any = None,
    verbose: bool = False,
    quiet: bool = False,
    tools: Any = None,
) -> list[Report]:
    """Replay each recording in turn, printing each report and a summary line to ``out``."""
    started = time.perf_counter()
    reports: list[Report] = []
    async with contextlib.AsyncExitStack() as stack:
        holder: dict[str, Cassette] | None = None
        if options.url is not None and options.mode == "cassette":
            holder = {}
            base = await stack.enter_async_context(
                serve_asgi(cassette_app(holder), options.llm_host, options.llm_port)
            )
            if out is not None:
                out.write(
                    f"Serving the recorded LLM answers at {base}/v1: the server at {options.url} must use OPENAI_BASE_URL={base}/v1\n"
                )
        for recording in recordings:
            try:
                report = await replay(recording, settings, options, tools=tools, holder=holder)
            except RelayError:
                raise
            except Exception as exc:  # one broken recording must not hide the others
                log.exception("replay_failed", call_sid=recording.call_sid)
                report = Report(
                    name=Path(recording.source).name or recording.call_sid,
                    call_sid=recording.call_sid,
                    mode=options.mode,
                    recorded=recording,
                )
                report.problems.append(f"the replay itself failed: {exc!r}")
                report.regressions.extend(report.problems)
            reports.append(report)
            if out is not None and (not quiet or report.failed):
                out.write(render(report, full=verbose))
                out.flush()
    if out is not None:
        failed = sum(1 for r in reports if r.failed)
        seconds = time.perf_counter() - started
        out.write(
            f"replay: {len(reports)} recording{'s' if len(reports) != 1 else ''}, {len(reports) - failed} passed, "
            f"{failed} failed ({options.mode}{', fast' if options.fast else ''}{', ' + options.url if options.url else ''}; {seconds:.2f} s)\n"
        )
    return reports


__all__ = [
    "DEFAULT_LLM_PORT",
    "Cassette",
    "CassetteLLM",
    "CassetteRetriever",
    "Masker",
    "Options",
    "Report",
    "caller_script",
    "cassette_app",
    "check_expectations",
    "compare_requests",
    "compare_transcripts",
    "junit",
    "load_targets",
    "read_files",
    "render",
    "replay",
    "run_replays",
    "serve_asgi",
    "transcript",
]
