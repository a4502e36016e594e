"""``relay replay``: run recorded calls again, against the agent as it is now, and show what changed.

The caller's side of each recording (setup, prompts, keypad presses, info and interrupts, in
order) is sent again over a real WebSocket, to the app run in-process (the default) or to a
running server (``--url``). Each frame waits for the agent to reach the point it had reached
when the frame was first received, measured in what the agent sent, not in time: the same
number of finished talk cycles, plus, for a barge-in, the same number of characters of the
answer being spoken. So an interrupt lands at the same point of the agent's speech. Between
frames that do not wait on the agent the caller keeps the recorded pauses, unless ``--fast``.

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

import argparse
import asyncio
import contextlib
import difflib
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

import orjson
import structlog

from relay.agents import AgentProfile
from relay.call.session import Retrieved
from relay.errors import ConfigError, LLMError, RelayError
from relay.llm.client import ChatRequest, Done, LLMEvent, TextDelta, ToolCall
from relay.recordings.format import Recording, RecordingError, load_call

log = structlog.get_logger("relay.replay.runner")

Mode = Literal["cassette", "live"]

#: How long the caller waits for the agent to reach a recorded point before giving up.
DEFAULT_TIMEOUT = {"cassette": 10.0, "live": 30.0}
#: Live mode: this long without a frame after an answer means the agent is waiting for the caller.
LIVE_SETTLE = 1.0
DEFAULT_LLM_PORT = 8089
_TIME_LINE = re.compile(r"Current date and time: [^.\n]*\.")
_TURN_STARTS = frozenset({"prompt", "dtmf", "interrupt"})


# == the caller's script =================================================================


@dataclass(frozen=True)
class Point:
    """How far the agent had got: finished talk cycles and the open cycle's size."""

    cycles: int = 0  # talk cycles with words, closed by a last:true frame
    chars: int = 0  # characters sent in the cycle still open
    frames: int = 0  # text frames sent in the cycle still open
    ended: bool = False  # an end frame was sent

    @property
    def talking(self) -> bool:
        return self.frames > 0


class Progress:
    """Follows the agent's outbound frames, in the order they were sent."""

    def __init__(self) -> None:
        self.cycles = 0
        self.chars = 0
        self.frames = 0
        self.ended = False
        self.text: list[str] = []  # the open cycle's words
        self.said = ""  # the last closed cycle's words

    def feed(self, frame: Mapping[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "text":
            token = str(frame.get("token") or "")
            self.chars += len(token)
            self.frames += 1
            self.text.append(token)
            if frame.get("last"):
                if self.chars:
                    self.cycles += 1
                    self.said = "".join(self.text)
                self.chars = self.frames = 0
                self.text = []
        elif kind == "end":
            self.ended = True

    def point(self) -> Point:
        return Point(self.cycles, self.chars, self.frames, self.ended)

    def heard(self, chars: int) -> str:
        """The first ``chars`` characters of what the agent is saying (or said last)."""
        return ("".join(self.text) if self.frames else self.said)[:chars]

    def reached(self, point: Point) -> bool:
        if self.ended:
            return True  # nothing more is coming
        if point.ended:
            return False
        if self.cycles > point.cycles:
            return True
        if self.cycles < point.cycles:
            return False
        return not point.talking or (self.chars >= point.chars and self.frames >= point.frames)


@dataclass(frozen=True)
class Step:
    """One thing the caller does: send ``raw`` (or hang up) once the agent reached ``wait``."""

    raw: str | None  # None: close the socket
    wait: Point
    pause: float  # the caller's recorded think time after the agent reached ``wait``
    kind: str
    close_code: int = 1000


@dataclass(frozen=True)
class SessionScript:
    session_id: str
    steps: tuple[Step, ...]


def _frame(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def caller_script(recording: Recording) -> list[SessionScript]:
    """What the caller did in each session, and the agent's progress before each action."""
    scripts = []
    for session, events in recording.session_events():
        if session is None:
            continue
        progress = Progress()
        steps: list[Step] = []
        last_in: float | None = None
        last_out: float | None = None
        for event in events:
            kind, data, t = event["kind"], event.get("data") or {}, float(event.get("t") or 0.0)
            if kind == "frame_out":
                progress.feed(_frame(data.get("raw")))
                last_out = t
            elif kind in ("frame_in", "frame_in_invalid", "session_end"):
                point = progress.point()
                anchor = max((x for x in (last_in, last_out) if x is not None), default=t)
                # Think time counts from whatever came last; a barge-in goes at once.
                pause = 0.0 if point.talking or last_in is None else max(0.0, t - anchor)
                if kind == "session_end":
                    code = data.get("close_code")
                    close = (
                        code
                        if isinstance(code, int)
                        and 1000 <= code < 5000
                        and code not in (1005, 1006)
                        else 1000
                    )
                    steps.append(Step(None, point, pause, "hangup", close))
                    break
                raw = data.get("raw")
                frame_type = str(_frame(raw).get("type") or "invalid")
                steps.append(Step(str(raw), point, pause, frame_type))
                last_in = t
        if not steps or steps[-1].raw is not None:
            steps.append(Step(None, progress.point(), 0.0, "hangup"))
        scripts.append(SessionScript(session["session_id"], tuple(steps)))
    return scripts


# == the recorded model answers ==========================================================


@dataclass
class Exchange:
    """One recorded LLM round: the request and the answer as it was streamed."""

    number: int
    body: dict[str, Any]
    pieces: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    attempts: int | None = None
    complete: bool = False
    answered: bool = False  # an llm_response event was recorded
    error: str | None = None  # the LLM failure that ended this round


@dataclass
class RecordedRetrieval:
    message: str
    provenance: list[dict[str, Any]]
    elapsed_ms: float
    error: str | None


def exchanges(recording: Recording) -> list[Exchange]:
    found: list[Exchange] = []
    for event in recording.events:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "llm_request":
            found.append(Exchange(len(found) + 1, dict(data.get("body") or {})))
        elif kind == "llm_response" and found:
            last = found[-1]
            last.pieces = [str(p) for p in data.get("pieces") or []]
            last.tool_calls = list(data.get("tool_calls") or [])
            last.finish_reason = data.get("finish_reason")
            last.attempts = data.get("attempts")
            last.complete = bool(data.get("complete"))
            last.answered = True
        elif kind == "llm_error" and found and found[-1].answered and not found[-1].complete:
            found[-1].error = str(data.get("error") or "LLM error")
    return found


def retrievals(recording: Recording) -> list[RecordedRetrieval]:
    """Each recorded retrieval with the passage message the next request carried."""
    found: list[RecordedRetrieval] = []
    pending: dict[str, Any] | None = None
    for event in recording.events:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "retrieval":
            if pending is not None:
                found.append(
                    RecordedRetrieval(
                        "", pending.get("provenance") or [], 0.0, pending.get("error")
                    )
                )
            pending = data
        elif kind == "llm_request" and pending is not None:
            messages = (data.get("body") or {}).get("messages") or []
            message = ""
            if len(messages) > 1 and messages[1].get("role") == "system":
                message = str(messages[1].get("content") or "")
            found.append(
                RecordedRetrieval(
                    message,
                    list(pending.get("provenance") or []),
                    float(pending.get("elapsed_ms") or 0.0),
                    pending.get("error"),
                )
            )
            pending = None
    if pending is not None:
        found.append(
            RecordedRetrieval("", list(pending.get("provenance") or []), 0.0, pending.get("error"))
        )
    return found


@dataclass(frozen=True)
class Divergence:
    """An LLM request that is not the one recorded."""

    number: int
    summary: str
    diff: str


class Masker:
    """Hides what must not count as a change: the time line and the ``ignore`` patterns."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        try:
            self.patterns = [re.compile(p) for p in patterns]
        except re.error as exc:
            raise RecordingError(f"bad ignore pattern: {exc}") from exc

    def __call__(self, text: str) -> str:
        text = _TIME_LINE.sub("Current date and time: (now).", text)
        for pattern in self.patterns:
            text = pattern.sub("<ignored>", text)
        return text


class Cassette:
    """Serves the recorded answers in order, noting every request that differs."""

    def __init__(self, recording: Recording, masker: Masker) -> None:
        self.exchanges = exchanges(recording)
        self.retrievals = retrievals(recording)
        self.masker = masker
        self.served = 0
        self.retrieved = 0
        self.divergences: list[Divergence] = []
        self.translations: dict[str, str] = {}  # ignored values: recorded -> now
        self.tool_calls: list[dict[str, Any]] = []  # as served, for expectations
        self._last_body: bytes | None = None
        self._last: Exchange | None = None

    def answer(self, body: Mapping[str, Any], *, retry_aware: bool = False) -> Exchange | None:
        """The recorded answer to the next request (None past the end of the recording)."""
        raw = orjson.dumps(body)
        if (
            retry_aware
            and self._last is not None
            and self._last.error is not None
            and raw == self._last_body
        ):
            return self._last  # the server retrying a failure we served
        self._last_body = raw
        self.served += 1
        if self.served > len(self.exchanges):
            self.divergences.append(
                Divergence(
                    self.served,
                    "an LLM request the recording does not have",
                    _render_request(body, self.masker),
                )
            )
            self._last = None
            return None
        recorded = self.exchanges[self.served - 1]
        self._learn(recorded.body, body)
        divergence = compare_requests(recorded.body, body, self._mask)
        if divergence is not None:
            self.divergences.append(Divergence(self.served, *divergence))
        self._last = recorded
        self.tool_calls.extend(self.calls(recorded))
        return recorded

    def _mask(self, text: str) -> str:
        return self.masker(text)

    def _learn(self, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        """Pair the ignored values (random ids...) of the two requests, message by message."""
        if not self.masker.patterns:
            return
        for old, new in zip(
            recorded.get("messages") or [], now.get("messages") or [], strict=False
        ):
            a, b = _message_text(old), _message_text(new)
            for pattern in self.masker.patterns:
                for x, y in zip(pattern.findall(a), pattern.findall(b), strict=False):
                    if isinstance(x, str) and isinstance(y, str) and x != y:
                        self.translations[x] = y

    def translate(self, text: str) -> str:
        for old, new in self.translations.items():
            text = text.replace(old, new)
        return text

    def pieces(self, exchange: Exchange) -> list[str]:
        if not self.translations:
            return exchange.pieces
        pieces = [self.translate(p) for p in exchange.pieces]
        if any(old in "".join(pieces) for old in self.translations):
            return [self.translate("".join(exchange.pieces))]  # a value split across pieces
        return pieces

    def calls(self, exchange: Exchange) -> list[dict[str, Any]]:
        return [
            {**c, "arguments": self.translate(str(c.get("arguments") or "{}"))}
            for c in exchange.tool_calls
        ]

    def retrieval(self) -> RecordedRetrieval | None:
        self.retrieved += 1
        if self.retrieved > len(self.retrievals):
            return None
        return self.retrievals[self.retrieved - 1]


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    text = (
        content
        if isinstance(content, str)
        else orjson.dumps(content).decode()
        if content is not None
        else ""
    )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += f"\n{function.get('name')}({function.get('arguments')})"
    return text


def _render_messages(
    messages: Sequence[Mapping[str, Any]], mask: Callable[[str], str]
) -> list[str]:
    lines: list[str] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        head = f"[{index}] {role}"
        if message.get("tool_call_id"):
            head += f" (answer to {message['tool_call_id']})"
        content = message.get("content")
        text = (
            content
            if isinstance(content, str)
            else ""
            if content is None
            else orjson.dumps(content).decode()
        )
        body = mask(text).split("\n") if text else [""]
        lines.append(f"{head}: {body[0]}")
        lines.extend(f"    {line}" for line in body[1:])
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(
                f"    calls {function.get('name')}({mask(str(function.get('arguments')))}) as {call.get('id')}"
            )
    return lines


def _tool_names(body: Mapping[str, Any]) -> list[str]:
    return sorted(str((t.get("function") or {}).get("name")) for t in body.get("tools") or [])


def _render_request(body: Mapping[str, Any], mask: Callable[[str], str]) -> str:
    lines = _render_messages(body.get("messages") or [], mask)
    lines.append(f"tools: {', '.join(_tool_names(body)) or 'none'}")
    return "\n".join(lines)


def compare_requests(
    recorded: Mapping[str, Any], now: Mapping[str, Any], mask: Callable[[str], str]
) -> tuple[str, str] | None:
    """(summary, diff) when the requests differ in their messages or tool names, else None."""
    problems: list[str] = []
    diff: list[str] = []
    old = _render_messages(recorded.get("messages") or [], mask)
    new = _render_messages(now.get("messages") or [], mask)
    if old != new:
        changed = sum(1 for a, b in zip(old, new, strict=False) if a != b) + abs(
            len(old) - len(new)
        )
        problems.append(f"messages differ ({changed} line{'s' if changed != 1 else ''})")
        diff.extend(
            line.rstrip("\n")
            for line in difflib.unified_diff(old, new, "recorded", "now", n=1, lineterm="")
        )
    old_tools, new_tools = _tool_names(recorded), _tool_names(now)
    if old_tools != new_tools:
        gone = sorted(set(old_tools) - set(new_tools))
        added = sorted(set(new_tools) - set(old_tools))
        problems.append("tools differ")
        if gone:
            diff.append(f"- tools no longer offered: {', '.join(gone)}")
        if added:
            diff.append(f"+ tools offered now: {', '.join(added)}")
    if not problems:
        return None
    return "; ".join(problems), "\n".join(diff)


class CassetteLLM:
    """A :class:`~relay.llm.client.ChatModel` that answers from a :class:`Cassette`."""

    def __init__(self, cassette: Cassette) -> None:
        self.cassette = cassette

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        body = {**request.body(), "messages": [dict(m) for m in request.messages]}
        exchange = self.cassette.answer(body)
        if exchange is None:
            raise LLMError(f"the recording has no answer for LLM request #{self.cassette.served}")
        for piece in self.cassette.pieces(exchange):
            yield TextDelta(piece)
        if exchange.error is not None:
            raise LLMError(exchange.error)
        if not exchange.complete:
            # Cut off in the recording (interrupted or superseded): still streaming, until the
            # caller does again what stopped it then.
            await asyncio.Event().wait()
        calls = tuple(
            ToolCall(str(c.get("id")), str(c.get("name")), str(c.get("arguments")))
            for c in self.cassette.calls(exchange)
        )
        reason = exchange.finish_reason or ("tool_calls" if calls else "stop")
        yield Done(reason, calls, attempts=exchange.attempts or 1)


class CassetteRetriever:
    """Hands back the recorded retrieval of each turn (the session's ``Retriever``)."""

    def __init__(self, cassette: Cassette) -> None:
        self.cassette = cassette

    async def retrieve(self, agent: AgentProfile, query: str) -> Retrieved | None:
        recorded = self.cassette.retrieval()
        if recorded is None:
            return None
        return Retrieved(
            message=recorded.message,
            provenance=recorded.provenance,
            elapsed_ms=recorded.elapsed_ms,
            error=recorded.error,
        )


# == the recorded model answers over HTTP (for --url) =====================================


def cassette_app(holder: dict[str, Cassette]) -> Any:
    """An OpenAI-compatible chat-completions server answering from ``holder["cassette"]``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(
                {"error": {"message": "the body is not JSON", "type": "invalid_request_error"}},
                status_code=400,
            )
        cassette = holder.get("cassette")
        if cassette is None:
            return JSONResponse(
                {"error": {"message": "no recording is being replayed", "type": "server_error"}},
                status_code=503,
            )
        exchange = cassette.answer(body, retry_aware=True)
        if exchange is None:
            message = f"the recording has no answer for LLM request #{cassette.served}"
            return JSONResponse(
                {"error": {"message": message, "type": "server_error"}}, status_code=500
            )
        if exchange.error is not None and not exchange.pieces:
            match = re.search(r"HTTP (\d{3})", exchange.error)
            status = int(match.group(1)) if match else 500
            return JSONResponse(
                {"error": {"message": exchange.error, "type": "server_error"}}, status_code=status
            )
        return StreamingResponse(
            _sse(cassette, exchange, str(body.get("model") or "replay")),
            media_type="text/event-stream",
        )

    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": "relay-replay", "object": "model", "created": 0, "owned_by": "relay"}
                ],
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
        ]
    )


async def _sse(cassette: Cassette, exchange: Exchange, model: str) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {"id": f"chatcmpl-replay-{exchange.number}", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in cassette.pieces(exchange):
        yield chunk({"content": piece})
    if exchange.error is not None:
        yield (
            b"data: "
            + orjson.dumps({"error": {"message": exchange.error, "type": "server_error"}})
            + b"\n\n"
        )
        return
    if not exchange.complete:
        await asyncio.Event().wait()  # still streaming when the caller cut in; ends on disconnect
    calls = cassette.calls(exchange)
    for index, call in enumerate(calls):
        function = {"name": call.get("name"), "arguments": call.get("arguments")}
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": call.get("id"), "type": "function", "function": function}
                ]
            }
        )
    yield chunk({}, exchange.finish_reason or ("tool_calls" if calls else "stop"))
    yield b"data: [DONE]\n\n"


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, host: str, port: int) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on this event loop; yields ``http://host:port``.

    Port 0 picks a free port. The app's lifespan is not run.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",  # the caller runs the app's lifespan, if it has one
        ws_ping_interval=None,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise ConfigError(f"cannot listen on {host}:{port}")
            await asyncio.sleep(0.005)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task


# == what was said: transcripts and their comparison =====================================


@dataclass
class Item:
    """One line of a call as the comparison sees it."""

    kind: str  # caller | agent | tool | end | language | digits | error
    text: str
    key: tuple[Any, ...] = ()
    server_side: bool = False  # only known from the server's own recording


def _handoff(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw}
    if not isinstance(data, dict):
        return {"raw": raw}
    data.pop("callSid", None)  # differs on purpose with --url
    return data


def _arguments(raw: Any) -> Any:
    try:
        return orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        return raw


def transcript(
    events: Iterable[Mapping[str, Any]], mask: Callable[[str], str] = lambda s: s
) -> list[Item]:
    """The call as items in order: caller actions, agent talk cycles, tools, the end."""
    items: list[Item] = []
    cycle: list[str] | None = None
    cycle_at = 0
    tools: dict[str, int] = {}

    def close_cycle() -> None:
        nonlocal cycle
        if cycle is not None:
            text = "".join(cycle)
            if text:
                items[cycle_at] = Item("agent", text, ("agent", mask(text)))
            else:
                items[cycle_at] = Item("skip", "")
            cycle = None

    for event in events:
        kind, data = event.get("kind"), event.get("data") or {}
        if kind in ("frame_in", "frame_in_invalid"):
            frame = _frame(data.get("raw"))
            ftype = frame.get("type")
            if ftype == "prompt" and frame.get("last", True):
                items.append(Item("caller", str(frame.get("voicePrompt", ""))))
            elif ftype == "dtmf":
                items.append(Item("caller", f"[presses {frame.get('digit')}]"))
            elif ftype == "interrupt":
                items.append(
                    Item(
                        "caller", f"[interrupts; heard {_q(frame.get('utteranceUntilInterrupt'))}]"
                    )
                )
        elif kind == "frame_out":
            frame = _frame(data.get("raw"))
            ftype = frame.get("type")
            if ftype == "text":
                if cycle is None:
                    cycle, cycle_at = [], len(items)
                    items.append(Item("skip", ""))
                cycle.append(str(frame.get("token") or ""))
                if frame.get("last"):
                    close_cycle()
            elif ftype == "end":
                handoff = _handoff(frame.get("handoffData"))
                reason = handoff.get("reasonCode", "end")
                items.append(
                    Item(
                        "end",
                        f"{reason} {orjson.dumps(handoff).decode()}",
                        ("end", mask(orjson.dumps(handoff, option=orjson.OPT_SORT_KEYS).decode())),
                    )
                )
            elif ftype == "language":
                code = frame.get("ttsLanguage") or frame.get("transcriptionLanguage")
                items.append(Item("language", f"switches to {code}", ("language", code)))
            elif ftype == "sendDigits":
                items.append(
                    Item(
                        "digits", f"presses {frame.get('digits')}", ("digits", frame.get("digits"))
                    )
                )
        elif kind == "tool_call":
            tools[str(data.get("id"))] = len(items)
            name, arguments = data.get("name"), str(data.get("arguments"))
            items.append(
                Item(
                    "tool",
                    f"{name}({arguments}) → (no result)",
                    ("tool", name, mask(arguments), None),
                    True,
                )
            )
        elif kind == "tool_result":
            at = tools.get(str(data.get("id")))
            content = str(data.get("content") or "")
            if at is not None:
                old = items[at]
                name, arguments = old.key[1], old.key[2]
                items[at] = Item(
                    "tool",
                    old.text.rsplit(" → ", 1)[0] + f" → {_q(content)}",
                    ("tool", name, arguments, mask(content)),
                    True,
                )
        elif kind == "llm_error":
            error = str(data.get("error") or "")
            items.append(Item("error", f"LLM failed: {_short(error, 160)}", ("error",), True))
    close_cycle()
    return [item for item in items if item.kind != "skip"]


def _q(text: Any) -> str:
    return '"' + str(text or "").replace("\n", " ") + '"'


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Line:
    mark: str  # " " caller, "=" same, "-" recorded only, "+" now only
    kind: str
    text: str


def _segments(items: list[Item]) -> list[tuple[Item | None, list[Item]]]:
    """The items split at each caller action: (the caller's item, what followed it)."""
    segments: list[tuple[Item | None, list[Item]]] = [(None, [])]
    for item in items:
        if item.kind == "caller":
            segments.append((item, []))
        else:
            segments[-1][1].append(item)
    return segments


def compare_transcripts(
    recorded: list[Item], now: list[Item], *, server_side: bool
) -> tuple[list[Line], list[tuple[Item | None, Item | None]]]:
    """A turn-by-turn listing and the changed pairs (recorded, now).

    Both sides carry the same caller actions (they were sent again), so the agent's items are
    compared caller turn by caller turn. Without the server's own record (``--url``), tool
    calls and LLM failures are left out on both sides.
    """

    def keep(item: Item) -> bool:
        return server_side or not item.server_side

    lines: list[Line] = []
    changes: list[tuple[Item | None, Item | None]] = []
    old_segments, new_segments = _segments(recorded), _segments(now)
    for index in range(max(len(old_segments), len(new_segments))):
        old_caller, old_items = old_segments[index] if index < len(old_segments) else (None, [])
        new_caller, new_items = new_segments[index] if index < len(new_segments) else (None, [])
        if old_caller is not None:
            lines.append(Line(" " if new_caller is not None else "-", "caller", old_caller.text))
        elif new_caller is not None:
            lines.append(Line("+", "caller", new_caller.text))
        old = [i for i in old_items if keep(i)]
        new = [i for i in new_items if keep(i)]
        matcher = difflib.SequenceMatcher(
            None, [i.key for i in old], [i.key for i in new], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                lines.extend(Line("=", i.kind, i.text) for i in old[i1:i2])
                continue
            lines.extend(Line("-", i.kind, i.text) for i in old[i1:i2])
            lines.extend(Line("+", i.kind, i.text) for i in new[j1:j2])
            olds, news = old[i1:i2], new[j1:j2]
            for n in range(max(len(olds), len(news))):
                changes.append(
                    (olds[n] if n < len(olds) else None, news[n] if n < len(news) else None)
                )
    return lines, changes


# == expectations ========================================================================


@dataclass
class Checked:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def expectations_for(expect: Mapping[str, Any], mode: Mode) -> dict[str, Any]:
    """The expectations that apply in ``mode``: the common ones plus its own section."""
    merged = {k: v for k, v in expect.items() if k not in ("cassette", "live")}
    for key, value in dict(expect.get(mode) or {}).items():
        if isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged


def check_expectations(
    expect: Mapping[str, Any], now: list[Item], tool_calls: list[dict[str, Any]] | None
) -> Checked:
    """Check ``expect`` against what the agent did now. ``tool_calls`` None: not observable."""
    result = Checked()
    said = [i.text for i in now if i.kind == "agent"]
    ends = [i.key[1] for i in now if i.kind == "end"]
    end_codes = [str(orjson.loads(k).get("reasonCode")) for k in ends if k.startswith("{")]

    def verdict(ok: bool, description: str) -> None:
        (result.passed if ok else result.failed).append(description)

    for pattern in expect.get("says") or []:
        verdict(
            any(re.search(pattern, s) for s in said),
            f"the agent says something matching /{pattern}/",
        )
    for pattern in expect.get("avoids") or []:
        hits = [s for s in said if re.search(pattern, s)]
        verdict(
            not hits,
            f"the agent never says anything matching /{pattern}/"
            + (f" (it said {_q(_short(hits[0], 120))})" if hits else ""),
        )
    if "handoff" in expect:
        happened = "live-agent-handoff" in end_codes
        wanted = bool(expect["handoff"])
        verdict(
            happened == wanted,
            "the call is handed to a person" if wanted else "the call is not handed to a person",
        )
    if expect.get("end"):
        verdict(
            str(expect["end"]) in end_codes,
            f"the call ends with reasonCode {expect['end']} (got {', '.join(end_codes) or 'no end frame'})",
        )
    for wanted_call in expect.get("tools") or []:
        name = wanted_call.get("name")
        patterns: dict[str, str] = dict(wanted_call.get("arguments") or {})
        description = f"{name} is called" + (
            " with " + ", ".join(f"{k}~/{v}/" for k, v in patterns.items()) if patterns else ""
        )
        if tool_calls is None:
            result.skipped.append(
                description + " (tool calls cannot be seen over --url in live mode)"
            )
            continue
        verdict(
            any(
                c.get("name") == name and _arguments_match(c.get("arguments"), patterns)
                for c in tool_calls
            ),
            description,
        )
    return result


def _arguments_match(raw: Any, patterns: Mapping[str, str]) -> bool:
    arguments = _arguments(raw)
    if not isinstance(arguments, dict):
        return not patterns
    for key, pattern in patterns.items():
        if key not in arguments:
            return False
        value = arguments[key]
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if not re.search(pattern, text):
            return False
    return True


def _tool_calls_in(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e.get("data") or {}) for e in events if e.get("kind") == "tool_call"]


# == running a replay ====================================================================


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
class Report:
    """The outcome of replaying one recording."""

    name: str
    call_sid: str
    mode: Mode
    lines: list[Line] = field(default_factory=list)
    changes: list[tuple[Item | None, Item | None]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # differences in the stored history
    checked: Checked = field(default_factory=Checked)
    problems: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recorded: Recording | None = None
    replayed: Recording | None = None  # in-process: what the server recorded now

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


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
    masker = Masker([*recording.ignore, *options.ignore])
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
        unused = len(cassette.exchanges) - cassette.served
        if unused > 0 and not run.problems:
            report.problems.append(
                f"{unused} recorded LLM answer{'s were' if unused > 1 else ' was'} never asked for"
            )
    if run.replayed is not None and options.mode == "cassette":
        report.history = _history_changes(recording, run.replayed, masker)
    tool_calls = (
        run.tool_calls
        if run.tool_calls is not None
        else (_tool_calls_in(run.events) if run.server_side else None)
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


def _history_changes(
    recorded: Recording, replayed: Recording, mask: Callable[[str], str]
) -> list[str]:
    """Differences between the stored conversation histories (what the model will be sent)."""

    def rows(recording: Recording) -> list[str]:
        out = []
        for turn in recording.turns:
            text = f"#{turn['seq']} {turn['role']}"
            if turn.get("tool_name"):
                text += f" {turn['tool_name']}"
            text += f": {_q(mask(str(turn.get('content') or '')))}"
            if turn.get("interrupted"):
                text += f" (interrupted; heard {_q(mask(str(turn.get('heard_text') or '')))})"
            if turn.get("superseded"):
                text += " (superseded)"
            out.append(text)
        return out

    old, new = rows(recorded), rows(replayed)
    if old == new:
        return []
    return [
        line
        for line in difflib.unified_diff(old, new, "recorded", "now", n=0, lineterm="")
        if line[:1] in "+-" and line[:3] not in ("---", "+++")
    ]


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


async def _run_in_process(
    recording: Recording,
    scripts: list[SessionScript],
    settings: Any,
    options: Options,
    cassette: Cassette | None,
    tools: Any,
) -> _Run:
    from relay.web.app import Runtime, create_app

    problems: list[str] = []
    runtimes: list[Runtime] = []

    def configure(runtime: Runtime) -> None:
        runtimes.append(runtime)
        if cassette is not None and not options.live_retrieval:
            runtime.deps.retriever = CassetteRetriever(cassette) if cassette.retrievals else None

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
            for script in scripts:
                problems.extend(await _drive(url, script, options, rewrite=None))
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
        frame = _frame(raw)
        if frame.get("type") != "setup":
            return raw
        frame["callSid"] = str(frame.get("callSid") or recording.call_sid) + suffix
        frame["sessionId"] = str(frame.get("sessionId") or "VX") + suffix
        return orjson.dumps(frame).decode()

    for number, script in enumerate(scripts):
        if number:
            await asyncio.sleep(0.3)  # let the server store the first session before resuming
        problems.extend(
            await _drive(
                options.url, script, options, rewrite=rewrite, view=view, settings=settings
            )
        )
    return _Run(view, False, problems)


async def _drive(
    url: str,
    script: SessionScript,
    options: Options,
    *,
    rewrite: Callable[[str], str] | None,
    view: list[dict[str, Any]] | None = None,
    settings: Any = None,
) -> list[str]:
    """Play one session's caller side. Returns what went wrong (timeouts, early close)."""
    import websockets

    from relay.cli.call import SimulatedCall

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
            deadline = time.perf_counter() + options.wait
            while not closed and not progress.reached(step.wait):
                # A new answer can take another shape than the recorded one: once it has
                # been said and nothing more comes for a moment, the caller goes on.
                if answered() and time.perf_counter() - last_frame >= LIVE_SETTLE:
                    break
                wake = min(deadline, last_frame + LIVE_SETTLE) if answered() else deadline
                if not await receive(wake) and not closed and time.perf_counter() >= deadline:
                    problems.append(
                        f"timed out after {options.wait:g}s waiting for the agent before the caller's {_describe(step)}"
                    )
                    break
            if closed:
                if step.raw is not None:
                    problems.append(
                        f"the server closed the connection before the caller's {_describe(step)}"
                    )
                break
            if step.pause > 0 and not options.fast:
                await asyncio.sleep(step.pause)
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
                problems.append(
                    f"the server closed the connection before the caller's {_describe(step)}"
                )
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
    frame = _frame(raw)
    heard = str(frame.get("utteranceUntilInterrupt") or "")
    frame["utteranceUntilInterrupt"] = progress.heard(len(heard))
    return orjson.dumps(frame).decode()


def _describe(step: Step) -> str:
    if step.raw is None:
        return "hang-up"
    frame = _frame(step.raw)
    if step.kind == "prompt":
        return f"prompt {_q(_short(str(frame.get('voicePrompt', '')), 60))}"
    if step.kind == "dtmf":
        return f"key press {frame.get('digit')}"
    if step.kind == "interrupt":
        return "interrupt"
    return f"{step.kind} frame"


# == output ==============================================================================

_LABELS = {
    "caller": "caller",
    "agent": "agent",
    "tool": "tool",
    "end": "end",
    "language": "language",
    "digits": "keys",
    "error": "error",
}


def render(report: Report, *, full: bool) -> str:
    """The report as text: the listing when asked or when something changed, then a verdict."""
    out: list[str] = []
    mode = report.mode
    title = report.name if report.name == report.call_sid else f"{report.name} · {report.call_sid}"
    title += f" · {mode}"
    if report.recorded is not None:
        title += f" · agent {report.recorded.call.get('agent')}"
    out.append(f"== {title}")
    show = full or report.failed or report.changes
    if show:
        for line in report.lines:
            label = _LABELS.get(line.kind, line.kind)
            mark = {" ": " ", "=": " ", "-": "-", "+": "+"}[line.mark]
            side = {"-": "(recorded) ", "+": "(now) "}.get(line.mark, "")
            out.append(f"  {mark} {label:<8} {side}{_short(line.text, 400)}")
    for divergence in report.divergences:
        out.append(
            f"  ! LLM request {divergence.number} differs from the recording: {divergence.summary}"
        )
        out.extend("      " + line for line in divergence.diff.splitlines()[:80])
    if report.history:
        out.append("  ! the stored history differs:")
        out.extend("      " + line for line in report.history[:40])
    for passed in report.checked.passed if show else []:
        out.append(f"  ✓ expected: {passed}")
    for failed in report.checked.failed:
        out.append(f"  ✗ expected: {failed}")
    for skipped in report.checked.skipped:
        out.append(f"  ? not checked: {skipped}")
    for problem in report.problems:
        out.append(f"  ! {problem}")
    if report.failed:
        out.append(f"  FAIL ({report.seconds:.2f} s): " + "; ".join(report.regressions[:5]))
    elif report.changes:
        out.append(
            f"  ok ({report.seconds:.2f} s): {len(report.changes)} change(s) in wording, none a regression in live mode"
        )
    else:
        out.append(f"  ok ({report.seconds:.2f} s): no differences")
    return "\n".join(out) + "\n"


def junit(reports: Sequence[Report], seconds: float) -> bytes:
    """JUnit XML: one test case per recording, failures carrying the listing."""
    failures = sum(1 for r in reports if r.failed)
    suites = ElementTree.Element(
        "testsuites", tests=str(len(reports)), failures=str(failures), time=f"{seconds:.3f}"
    )
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name="relay-replay",
        tests=str(len(reports)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{seconds:.3f}",
    )
    for report in reports:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"relay.replay.runner.{report.mode}",
            name=report.name,
            time=f"{report.seconds:.3f}",
        )
        if report.failed:
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=_short("; ".join(report.regressions), 500),
                type="regression",
            )
            failure.text = render(report, full=True)
        else:
            ElementTree.SubElement(case, "system-out").text = render(report, full=True)
    ElementTree.indent(suites)
    data: bytes = ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
    return data


# == the command =========================================================================


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "replay",
        help="replay recorded calls against the current agent and show what changed",
        description="Replay recorded calls (files, directories of *.jsonl, or CallSids from the database) "
        "and compare what the agent does now with what it did then. Exit code 1 on a regression.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="FILE|DIR|CALL",
        help="recording files, directories of them, or CallSids",
    )
    parser.add_argument(
        "--mode",
        choices=["cassette", "live"],
        default="cassette",
        help="cassette: recorded LLM answers (default); live: the configured LLM",
    )
    parser.add_argument(
        "--fast", action="store_true", help="do not keep the caller's recorded pauses"
    )
    parser.add_argument(
        "--url",
        help="replay against a running server's WebSocket, e.g. ws://127.0.0.1:8080/ws (default: in-process)",
    )
    parser.add_argument(
        "--llm-port",
        type=int,
        default=DEFAULT_LLM_PORT,
        help=f"with --url in cassette mode: port of the recorded-LLM server (default {DEFAULT_LLM_PORT})",
    )
    parser.add_argument(
        "--llm-host",
        default="127.0.0.1",
        help="with --url in cassette mode: interface of the recorded-LLM server",
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the agent at each step (default 10 cassette, 30 live)",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="REGEX",
        help="text to ignore when comparing (random ids...); repeatable",
    )
    parser.add_argument(
        "--live-retrieval",
        action="store_true",
        help="cassette mode: query the knowledge store instead of replaying the recorded passages",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="in-process: write what the server recorded during each replay here",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every recording's listing, and the service's warnings",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only failures and the summary line"
    )
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    code: int = asyncio.run(_main(args))
    return code


async def load_targets(targets: Sequence[str], settings: Any) -> list[Recording]:
    """Recordings from files, directories (``*.jsonl``, sorted) and CallSids in the database."""
    recordings, call_sids = read_files(targets)
    if call_sids:
        from relay.storage.db import Database

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


async def _main(args: argparse.Namespace) -> int:
    from relay.cli.main import settings_from

    settings = settings_from(args) if args.verbose else settings_from(args, RELAY_LOG_LEVEL="error")
    options = Options(
        mode=args.mode, fast=args.fast, url=args.url, timeout=args.timeout, ignore=list(args.ignore),
        llm_host=args.llm_host, llm_port=args.llm_port, live_retrieval=args.live_retrieval, save=args.save,
    )  # fmt: skip
    reports = await run_replays(
        await load_targets(args.targets, settings),
        settings,
        options,
        out=sys.stdout,
        verbose=args.verbose,
        quiet=args.quiet,
    )
    if args.junit is not None:
        args.junit.write_bytes(junit(reports, sum(r.seconds for r in reports)))
    return 1 if any(r.failed for r in reports) else 0


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
    "Cassette",
    "CassetteLLM",
    "CassetteRetriever",
    "Divergence",
    "Masker",
    "Options",
    "Report",
    "caller_script",
    "check_expectations",
    "compare_requests",
    "junit",
    "render",
    "replay",
    "run_replays",
    "transcript",
]
