"""``relay bench``: the latency relay adds to a call, and how many calls one process holds.

A ConversationRelay turn is timed from the moment the simulated Twilio side sends a final
``prompt`` to the moment the first ``text`` frame of the answer arrives. Two hops of that time
are not relay's to remove, so the same run also times them on their own:

(a) the WebSocket hop: the same client against a minimal echo server on the same stack
    (Starlette + uvicorn, started like ``relay serve``) that answers each prompt itself;
(b) the LLM hop: a warm client streaming the same kind of request (the agent's system prompt
    and the same amount of history) from the same fake LLM, timed to the first content delta.
    The client is the served transport's own (relay's aiohttp transport by default), so the
    hop is what relay's HTTP client costs; ``--baseline-client httpx`` times it with httpx.

(c) is relay itself: N concurrent simulated calls. What relay adds is (c) - (a) - (b), per
percentile. With one call the three are sampled in turn, never overlapping; with many calls the
baselines are sampled while the calls run, so the load on the machine is the same for all three.
With many calls the turns come in waves, and a machine that runs the calls, relay and the
fake LLM is loaded in the waves and idle between them, so the two ways of sampling the LLM
hop each lean one way at the tail (p95, p99):

- ``--baseline-sampling steady`` (the default): samples at a steady pace, about half of them
  between waves, where the fake LLM is on time; its lateness in the waves counts as relay's.
- ``--baseline-sampling turns``: a sample starts beside a share of the measured turns (about
  :data:`_TURN_SAMPLES` in all), so it meets the fake LLM in the state the turn met it; each
  such turn's (c) - (b) is printed too. But the samples are read by this loaded process's
  event loop, a task's wake-up later than (c)'s frames, which are timed as their bytes arrive.

The fake LLM also reports how late it wrote each first delta, by its own clock (``GET
/_scripted/lateness``), printed on its own line: the part of every client's first token
that is the fake LLM's.

By default everything runs on loopback in separate processes: the fake LLM (``relay
fake-llm``), the server (``relay serve`` with a throwaway data directory and a bench agent
with no tools and no knowledge, so the figure is the call path itself) and the echo server.
The client uses websockets' sans-I/O protocol on bare asyncio transports so that it can hold
a thousand calls in one process and timestamp frames as their bytes arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

import httpx
import orjson
from websockets import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from relay.agents import AgentProfile, load_profile
from relay.errors import LLMError
from relay.heap import settle_heap
from relay.llm.client import TRANSPORTS, Transport
from relay.llm.sse import SSEDecoder
from relay.llm.transport import AiohttpTransport
from relay.llm.types import ChatRequest
from relay.testing.bench_console import (
    UPLOAD_AFTER,
    Console,
    Editor,
    Followed,
    format_figures,
    format_upload,
)
from relay.testing.bench_serving import (
    all_done,
    copy_documents,
    gc_passes,
    index_rebuilds,
    lag_buckets,
    lag_quantiles,
    memory_per_call,
    percentile,
    reference_like,
    retrieval_share,
    settle_all,
    tree_cpu_seconds,
    wait_until_ready,
    worker_metrics,
)
from relay.web.socket import SocketLimits

BaselineClient = Literal["transport", "httpx"]
BaselineSampling = Literal["turns", "steady"]
T = TypeVar("T")

#: What the simulated callers say, in turn. The fake LLM echoes the first words back, so the
#: expected reply to each prompt is known before it is sent.
PROMPTS = (
    "Hi there, I need a quote to move an upright piano please.",
    "It is going from Brunswick to Geelong.",
    "There are about six steps at the front door and none at the other end.",
    "Next Tuesday would be ideal if you have a truck free.",
    "Is the piano insured while you are moving it?",
    "How long does a move like that usually take?",
    "Could you text me the quote please?",
    "What happens if I need to cancel the booking later on?",
    "Do you also tune pianos after a move?",
    "Great, that all sounds good to me.",
)
#: ``--new-words``: who each simulated caller is. A call's utterances are ``PROMPTS`` said by
#: "<name> from <suburb>.", a pair no other call of the run has (up to 1,600 calls), so no
#: worker has heard its words before and every searched turn embeds them, as with real callers.
NAMES = (
    "Sam", "Priya", "Tom", "Mei", "Jack", "Aisha", "Liam", "Sofia", "Noah", "Chloe", "Oscar",
    "Zara", "Hamish", "Ingrid", "Mateo", "Yuki", "Declan", "Amara", "Felix", "Nadia", "Rory",
    "Leila", "Callum", "Hana", "Ethan", "Ruby", "Kofi", "Elena", "Finn", "Tahlia", "Arjun",
    "Grace", "Marco", "Sienna", "Duc", "Willow", "Omar", "Freya", "Kai", "Maeve",
)  # fmt: skip
SUBURBS = (
    "Carlton", "Fitzroy", "Richmond", "Footscray", "Coburg", "Preston", "Northcote", "Kew",
    "Hawthorn", "Camberwell", "Box Hill", "Doncaster", "Ringwood", "Frankston", "Dandenong",
    "Sunshine", "Werribee", "Essendon", "Brighton", "Elwood", "St Kilda", "Prahran", "Malvern",
    "Caulfield", "Bentleigh", "Cheltenham", "Mentone", "Mordialloc", "Glen Waverley",
    "Mitcham", "Eltham", "Heidelberg", "Ivanhoe", "Bundoora", "Epping", "Craigieburn",
    "Sunbury", "Melton", "Altona", "Williamstown",
)  # fmt: skip


def new_words(prompt: str, call_index: int) -> str:
    """``prompt`` as said by call ``call_index``'s own caller (``--new-words``)."""
    pair = call_index % (len(NAMES) * len(SUBURBS))
    name, suburb = NAMES[pair % len(NAMES)], SUBURBS[pair // len(NAMES)]
    return f"{name} from {suburb}. {prompt}"


FROM_NUMBER = "+61412345678"
TO_NUMBER = "+61390001234"
_ECHO_FRAME = b'{"type":"text","token":"Got it.","last":true}'
_START_TIMEOUT = 60.0
_CONNECT_TIMEOUT = 15.0
_SETTLE_TIMEOUT = 30.0
_PROBE_PACE = 0.05  # seconds between baseline samples while many calls run
_LLM_SAMPLERS = 4
#: With many calls, about this many LLM-hop samples, each started with a measured turn (one
#: for each turn in smaller runs).
_TURN_SAMPLES = 300


# --- Options and report ------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    """What to run. The defaults are one call at a realistic pace."""

    calls: int = 1
    turns: int = 20
    history: int = 0
    warmup: int = 1
    token_delay: float = 0.03
    first_token_delay: float = 0.0
    reply_tokens: int = 20
    think: float = 1.0
    url: str | None = None
    llm_url: str | None = None
    transport: Transport = "aiohttp"
    baseline_client: BaselineClient = "transport"  # the served transport's own client
    #: With many calls, when the LLM hop is sampled: as turns start, or at a steady pace.
    baseline_sampling: BaselineSampling = "steady"
    connect_batch: int = 50
    reply_timeout: float = 30.0
    timeout: float | None = None  # the whole run; None estimates it from the rest
    knowledge: bool = True  # the bench agent searches the shipped documents, as served
    #: Interim transcripts (``prompt`` with ``last: false``, as with ``partialPrompts``) before
    #: each final one: this many growing prefixes 0.1 s apart, then 0.4 s to the final.
    partials: int = 0
    workers: int = 1  # `relay serve --workers N`
    #: Every call's utterances in words no other call says (see :func:`new_words`).
    new_words: bool = False
    #: Owners watching the console during the measured phase (:mod:`relay.testing.bench_console`).
    console: int = 0
    #: A document an editor uploads through the console during the measured phase.
    upload: Path | None = None
    #: The started server's database (``postgresql://…``) instead of a fresh SQLite file.
    database_url: str | None = None

    def __post_init__(self) -> None:
        if self.calls < 1 or self.turns < 1:
            raise ValueError("--calls and --turns must be at least 1")
        if self.history < 0 or self.warmup < 0 or self.reply_tokens < 1:
            raise ValueError("--history and --warmup must not be negative, --reply-tokens positive")
        if min(self.token_delay, self.first_token_delay, self.think) < 0:
            raise ValueError("delays must not be negative")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.console < 0:
            raise ValueError("--console must not be negative")
        if self.console and self.url is not None:
            raise ValueError("--console needs the server the bench starts (not --url)")
        if self.upload is not None:
            if self.url is not None or not self.knowledge:
                raise ValueError("--upload needs the server the bench starts, with knowledge on")
            if not self.upload.is_file():
                raise ValueError(f"--upload: no such file: {self.upload}")
        if self.database_url is not None:
            if self.url is not None:
                raise ValueError("--database-url is for the server the bench starts (not --url)")
            if not self.database_url.startswith(
                ("postgresql://", "postgres://", "postgresql+asyncpg://")
            ):
                raise ValueError(
                    "--database-url must be a postgresql:// URL (SQLite is the default)"
                )

    @property
    def unmeasured_turns(self) -> int:
        """Turns each call plays before it is measured: its history, or at least the warm-up."""
        return max(self.history, self.warmup)

    def estimated_seconds(self) -> float:
        reply = self.first_token_delay + self.token_delay * self.reply_tokens + 0.05
        reply += 0.1 * self.partials + 0.3 if self.partials else 0.0
        connect = self.calls / 100
        return connect + self.unmeasured_turns * reply + self.turns * (reply + 1.5 * self.think)


@dataclass
class Stats:
    """Percentiles of one set of samples, in milliseconds."""

    n: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = sorted(s * 1000 for s in seconds)
        if not ms:
            return cls(0, None, None, None, None, None)
        return cls(
            n=len(ms),
            p50=round(percentile(ms, 50), 3),
            p95=round(percentile(ms, 95), 3),
            p99=round(percentile(ms, 99), 3),
            mean=round(sum(ms) / len(ms), 3),
            max=round(ms[-1], 3),
        )


@dataclass
class BenchReport:
    """Everything one run measured. ``overhead_*`` is (c) - (a) - (b) at that percentile."""

    options: dict[str, Any]
    baseline_mode: str  # "interleaved" (one call) or "concurrent" (sampled while calls run)
    ws_hop: Stats
    llm_hop: Stats
    relay: Stats
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    overhead_p99_ms: float | None
    turns_measured: int
    turns_per_s: float
    errors: int
    frames_lost: int
    unexpected_frames: int
    unmeasured_errors: int
    rss_kb_no_calls: int | None
    rss_kb_idle_calls: int | None
    memory_per_call_kb: float | None
    by_history: list[dict[str, Any]]
    cpu_percent: dict[str, float]
    server_cpu_ms_per_turn: float | None
    measured_seconds: float
    error_samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Retrieval's share of the measured phase, per turn (bench_serving.retrieval_share).
    retrieval: dict[str, Any] = field(default_factory=dict)
    #: How long each measured call took to connect (``connect_batch`` at a time).
    connect: Stats | None = None
    connect_failures: int = 0
    #: Where a measured turn's time went inside relay, on its own clock (:func:`stages_of`).
    stages: dict[str, Stats] = field(default_factory=dict)
    #: How late the server's event loops ran during the measured phase (``lag_quantiles``).
    loop_lag: dict[str, Any] = field(default_factory=dict)
    #: How late the started fake LLM wrote each first delta in the measured phase, by its own
    #: clock (None when the bench did not start it).
    model_late: Stats | None = None
    #: (c) - (b) turn by turn, for the turns that had an LLM-hop sample started beside them
    #: (``--baseline-sampling turns``): the two requests met the fake LLM in the same state.
    paired: Stats | None = None
    #: Garbage-collector passes per generation (young, middle, full) during the measured phase,
    #: over the server's workers (a full pass stops a worker's every call while it runs).
    gc_passes: list[int] = field(default_factory=list)
    #: What the console's viewers did and saw (``--console``; bench_console.ConsoleFigures).
    console: dict[str, Any] = field(default_factory=dict)
    #: The editor's upload (``--upload``): file, bytes, status, chunks, seconds, index_rebuilds.
    upload: dict[str, Any] = field(default_factory=dict)
    #: The server's CPU over the measured calls' whole lives, per call: from before they
    #: connect until they have hung up and the server has stored them and finished their
    #: post-call work (their setup, every turn, the hang-up, the recorder, post-call analysis).
    server_cpu_ms_per_call: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2, default=str)  # paths


def _overhead(relay: float | None, ws: float | None, llm: float | None) -> float | None:
    if relay is None or ws is None or llm is None:
        return None
    return round(relay - ws - llm, 3)


# --- The expected replies ------------------------------------------------------------------------


class Expectations:
    """The fake LLM's reply to each prompt: deterministic, so every token can be checked."""

    def __init__(self, reply_tokens: int) -> None:
        # The same function ``relay fake-llm`` answers with.
        from relay.testing.scripted import _EchoOfLength

        self._reply = _EchoOfLength(reply_tokens)
        self._cache: dict[str, tuple[str, ...]] = {}

    def pieces(self, prompt: str) -> tuple[str, ...]:
        pieces = self._cache.get(prompt)
        if pieces is None:
            text = self._reply({"messages": [{"role": "user", "content": prompt}]})
            assert text.chunks is not None
            pieces = self._cache[prompt] = tuple(text.chunks)
        return pieces


def tokens_lost(expected: Sequence[str], received: str) -> int:
    """How many of the ``expected`` tokens did not arrive, in order, at the start of ``received``.

    Counted on the text rather than on frames, so a server that merged tokens into fewer
    frames would lose nothing.
    """
    said = 0
    for index, piece in enumerate(expected):
        if not received.startswith(piece, said):
            return len(expected) - index
        said += len(piece)
    return 0


# --- A lean WebSocket client ---------------------------------------------------------------------


class _Socket(asyncio.Protocol):
    """websockets' sans-I/O client on a bare asyncio transport; frames timestamped on arrival."""

    def __init__(self, url: str, on_text: Callable[[bytes, float], None]) -> None:
        self._ws = ClientProtocol(parse_uri(url), max_size=2**20)
        self._on_text = on_text
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._frame(event, at)
            elif isinstance(event, Response) and not self.opened.done():
                if self._ws.handshake_exc is not None:
                    self.opened.set_exception(
                        ConnectionError(f"handshake failed: {self._ws.handshake_exc}")
                    )
                else:
                    self.opened.set_result(None)
        self._flush()

    def _frame(self, frame: Frame, at: float) -> None:
        if frame.opcode is Opcode.TEXT or (frame.opcode is Opcode.CONT and self._fragments):
            if not frame.fin:
                self._fragments.append(bytes(frame.data))
                return
            data = bytes(frame.data)
            if self._fragments:
                data = b"".join((*self._fragments, data))
                self._fragments.clear()
            self._on_text(data, at)

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(f"connection lost before the handshake: {exc!r}")
            )
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_text(b"", time.perf_counter())  # wakes a waiting turn

    @property
    def is_open(self) -> bool:
        return self.opened.done() and not self.opened.exception() and not self.closed.done()

    def send_text(self, data: bytes) -> None:
        self._ws.send_text(data)
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._ws.data_to_send()
            return
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()

    async def close(self, grace: float = 5.0) -> None:
        if self._transport is None or self.closed.done():
            return
        with contextlib.suppress(Exception):
            self._ws.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), grace)
        except TimeoutError:
            self._transport.abort()


@dataclass
class TurnResult:
    first_s: float | None  # prompt sent -> first text frame
    text: str
    lasts: int
    closed: bool = False


class _Pending:
    __slots__ = ("done", "first", "lasts", "sent", "tokens")

    def __init__(self, sent: float, done: asyncio.Future[None]) -> None:
        self.sent = sent
        self.done = done
        self.first: float | None = None
        self.tokens: list[str] = []
        self.lasts = 0


class BenchCall:
    """One simulated Twilio leg: setup, then prompts, each answered until ``last: true``."""

    def __init__(self, url: str, index: int) -> None:
        self.url = url
        self.index = index
        self.history: list[tuple[str, str]] = []  # (prompt, reply) of every turn so far
        self.unexpected = 0
        self.connect_s: float | None = None
        self.call_sid = ""
        #: Set when a console viewer follows this call's transcript (``--console``).
        self.followed: Followed | None = None
        self._socket: _Socket | None = None
        self._pending: _Pending | None = None

    async def connect(self, *, setup: bool = True) -> None:
        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        self._socket = _Socket(self.url, self._on_text)
        sock = self._socket
        await asyncio.wait_for(
            loop.create_connection(lambda: sock, parts.hostname or "127.0.0.1", parts.port or 80),
            _CONNECT_TIMEOUT,
        )
        await asyncio.wait_for(asyncio.shield(sock.opened), _CONNECT_TIMEOUT)
        if setup:
            self.call_sid = f"CAbench{self.index:06d}{os.urandom(8).hex()}"
            sock.send_text(orjson.dumps({
                "type": "setup", "sessionId": f"VXbench{self.index:06d}{os.urandom(8).hex()}",
                "callSid": self.call_sid,
                "accountSid": "AC" + "0" * 32, "parentCallSid": "", "from": FROM_NUMBER,
                "to": TO_NUMBER, "forwardedFrom": "", "callType": "PSTN", "callerName": "",
                "direction": "inbound", "callStatus": "RINGING", "customParameters": {},
            }))  # fmt: skip

    async def timed_connect(self) -> None:
        """:meth:`connect`, keeping how long it took in ``connect_s`` (TCP, WebSocket
        handshake, setup frame written)."""
        started = time.perf_counter()
        await self.connect()
        self.connect_s = time.perf_counter() - started

    @property
    def is_open(self) -> bool:
        return self._socket is not None and self._socket.is_open

    def _on_text(self, data: bytes, at: float) -> None:
        pending = self._pending
        if not data:  # the connection closed
            if pending is not None and not pending.done.done():
                pending.done.set_result(None)
            return
        frame = orjson.loads(data)
        if pending is None or frame.get("type") != "text":
            self.unexpected += 1
            return
        if pending.first is None:
            pending.first = at
        pending.tokens.append(frame.get("token", ""))
        if frame.get("last"):
            pending.lasts += 1
            self._pending = None
            pending.done.set_result(None)

    async def speak_partials(self, prompt: str, count: int) -> None:
        """Interim transcripts of ``prompt`` as Twilio sends them with ``partialPrompts``:
        ``count`` growing prefixes (lower case, no punctuation), then the caller's pause."""
        sock = self._socket
        words = "".join(c if c.isalnum() or c in " '" else " " for c in prompt.lower()).split()
        for index in range(1, count + 1):
            if sock is None or not sock.is_open:
                return
            text = " ".join(words[: math.ceil(len(words) * index / count)])
            sock.send_text(orjson.dumps(
                {"type": "prompt", "voicePrompt": text, "lang": "en-AU", "last": False}
            ))  # fmt: skip
            await asyncio.sleep(0.1 if index < count else 0.4)

    async def turn(self, prompt: str, within: float) -> TurnResult:
        """Say ``prompt`` and wait ``within`` seconds at most for the whole reply."""
        sock = self._socket
        if sock is None or not sock.is_open:
            return TurnResult(None, "", 0, closed=True)
        pending = _Pending(0.0, asyncio.get_running_loop().create_future())
        self._pending = pending
        frame = orjson.dumps(
            {"type": "prompt", "voicePrompt": prompt, "lang": "en-AU", "last": True}
        )
        pending.sent = time.perf_counter()
        sock.send_text(frame)
        if self.followed is not None:
            self.followed.said(prompt, pending.sent)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pending.done), within)
        self._pending = None
        first = None if pending.first is None else pending.first - pending.sent
        return TurnResult(first, "".join(pending.tokens), pending.lasts, closed=not sock.is_open)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()


# --- The LLM hop ----------------------------------------------------------------------------------


class LLMProbe:
    """A warm client streaming the request relay would make, straight from the fake LLM.

    ``client`` set: relay's transport (the served one's client); else ``http``.
    """

    def __init__(
        self,
        base_url: str,
        agent: AgentProfile,
        http: httpx.AsyncClient,
        client: Any = None,
    ) -> None:
        self._http = http
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": "Bearer not-needed",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        self._agent = agent
        #: A trailing system message the size of relay's retrieved passages (knowledge on).
        self.reference: str | None = None

    def _request(self, history: Sequence[tuple[str, str]], prompt: str) -> ChatRequest:
        agent = self._agent
        now = datetime.now().astimezone().strftime("%A %d %B %Y, %H:%M")
        system = f"{agent.system_prompt}\n\nCurrent date and time: {now}. Caller ID: {FROM_NUMBER}."
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        if agent.welcome_greeting:
            messages.append({"role": "assistant", "content": agent.welcome_greeting})
        for said, answered in history:
            messages.append({"role": "user", "content": said})
            messages.append({"role": "assistant", "content": answered})
        messages.append({"role": "user", "content": prompt})
        if self.reference:
            messages.append({"role": "system", "content": self.reference})
        return ChatRequest(
            model=agent.model or "gpt-4o-mini", messages=messages,
            temperature=agent.temperature, max_tokens=agent.max_tokens,
        )  # fmt: skip

    async def sample(self, history: Sequence[tuple[str, str]], prompt: str) -> float:
        """Seconds from starting the request to the first content delta; drains the rest."""
        request = self._request(history, prompt)
        started = time.perf_counter()
        if self._client is not None:
            first = await self._sample_relay(self._client, orjson.dumps(request.body()))
        else:
            first = await self._sample_httpx(orjson.dumps(request.body()))
        if first is None:
            raise RuntimeError("the fake LLM streamed no content")
        return first - started

    async def _sample_httpx(self, body: bytes) -> float | None:
        http_request = self._http.build_request(
            "POST", self._url, content=body, headers=self._headers
        )
        response = await self._http.send(http_request, stream=True)
        first: float | None = None
        try:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if first is None and line.startswith("data:") and line != "data: [DONE]":
                    first = _first_content(line[5:])
        finally:
            await response.aclose()
        return first

    async def _sample_relay(self, client: Any, body: bytes) -> float | None:
        response = await client.post(self._url, self._headers, body, connect_timeout=5.0)
        first: float | None = None
        try:
            if response.status >= 400:
                raise RuntimeError(f"the fake LLM answered HTTP {response.status}")
            decoder = SSEDecoder()
            while data := await response.receive():
                for payload in decoder.feed(data):
                    if first is None and payload != b"[DONE]":
                        first = _first_content(payload)
        finally:
            response.close()
        return first


def _first_content(payload: bytes | str) -> float | None:
    """Now, if this chunk carries content; else None."""
    choices = orjson.loads(payload).get("choices") or [{}]
    return time.perf_counter() if (choices[0].get("delta") or {}).get("content") else None


class Baselines:
    """Samples of (a) the WebSocket hop and (b) the LLM hop."""

    def __init__(self, echo: BenchCall, llm: LLMProbe, expectations: Expectations) -> None:
        self.echo = echo
        self.llm = llm
        self.expectations = expectations
        self.ws: list[float] = []
        self.llm_hop: list[float] = []
        self.llm_history: list[int] = []  # the history length of each LLM sample
        self.errors: list[str] = []
        self.turn_share = 0.0  # the share of turns that start an LLM sample (at_turn)
        self._pending: set[asyncio.Task[float | None]] = set()

    async def sample(
        self, history: Sequence[tuple[str, str]], prompt: str, *, keep: bool = True
    ) -> None:
        """One sample of each hop, one after the other."""
        await self.sample_ws(prompt, keep=keep)
        await self.sample_llm(history, prompt, keep=keep)

    async def sample_ws(self, prompt: str, *, keep: bool = True) -> None:
        result = await self.echo.turn(prompt, 10.0)
        if result.first_s is None or result.lasts != 1:
            self.errors.append(f"echo server: no reply (closed={result.closed})")
        elif keep:
            self.ws.append(result.first_s)

    async def sample_llm(
        self, history: Sequence[tuple[str, str]], prompt: str, *, keep: bool = True
    ) -> float | None:
        """The LLM hop in seconds (kept unless not ``keep``), or None if it failed."""
        try:
            hop = await self.llm.sample(history, prompt)
        except (httpx.HTTPError, LLMError, RuntimeError) as exc:
            self.errors.append(f"LLM hop: {exc!r}")
            return None
        if keep:
            self.llm_hop.append(hop)
            self.llm_history.append(len(history))
        return hop

    def at_turn(self, history: int) -> asyncio.Task[float | None] | None:
        """A measured turn with ``history`` turns before it starts: with probability
        :attr:`turn_share`, start an LLM sample with the same history beside it (returned)."""
        if self.turn_share <= 0 or random.random() >= self.turn_share:
            return None
        conversation = _conversation(history, self.expectations)
        task = asyncio.create_task(self.sample_llm(conversation, PROMPTS[history % len(PROMPTS)]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def settle(self) -> None:
        """Wait for the samples that :meth:`at_turn` started."""
        if self._pending:
            await asyncio.gather(*self._pending)

    async def run_alongside(
        self, stop: asyncio.Event, history_turns: int, turns: int, *, llm: bool = True
    ) -> None:
        """Sample the WebSocket hop, and the LLM hop unless not ``llm``, at a steady pace until
        ``stop``.

        A streamed reply takes as long as the fake LLM's pacing, so several LLM samplers run
        side by side to keep up with the echo sampler. Their history lengths span the calls'.
        """

        async def echo_sampler() -> None:
            index = 0
            while not stop.is_set():
                await self.sample_ws(PROMPTS[index % len(PROMPTS)])
                index += 1
                await _pause(stop)

        async def llm_sampler(offset: int) -> None:
            index = offset
            while not stop.is_set():
                extra = index % turns
                history = _conversation(history_turns + extra, self.expectations)
                await self.sample_llm(history, PROMPTS[(history_turns + extra) % len(PROMPTS)])
                index += _LLM_SAMPLERS
                await _pause(stop)

        samplers = range(_LLM_SAMPLERS if llm else 0)
        await asyncio.gather(echo_sampler(), *(llm_sampler(i) for i in samplers))


async def _pause(stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), random.uniform(0.5, 1.5) * _PROBE_PACE)


def _conversation(turns: int, expectations: Expectations) -> list[tuple[str, str]]:
    prompts = (PROMPTS[i % len(PROMPTS)] for i in range(turns))
    return [(p, "".join(expectations.pieces(p))) for p in prompts]


# --- The processes --------------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float | None:
        """CPU of the process and its descendants (the workers of ``--workers N``)."""
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _spawn(
    argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _reported(options: BenchOptions) -> dict[str, Any]:
    """The options for the report, with the database URL's password masked."""
    from sqlalchemy.engine import make_url

    reported = asdict(options)
    if options.database_url:
        url = make_url(options.database_url)
        reported["database_url"] = url.render_as_string(hide_password=True)
    return reported


def _database(options: BenchOptions, workdir: Path) -> Path | str | None:
    """Where the started server records the turns (None for a server of one's own)."""
    if options.url is not None:
        return None
    return options.database_url or workdir / "data" / "relay.db"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    health: str,
    http: httpx.AsyncClient,
) -> _Child:
    log_path = cwd / f"{name}.log"
    process = await asyncio.to_thread(_spawn, argv, env, cwd, log_path)
    child = _Child(name, process, log_path)
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{child.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(health, timeout=2.0)).status_code == 200:
                return child
        if time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(
                f"{name} did not answer {health} within {_START_TIMEOUT:.0f} s:\n{child.log_tail()}"
            )
        await asyncio.sleep(0.1)


def _bench_profile(directory: Path, *, knowledge: bool = True) -> Path:
    """The default agent with no tools or business tables; with its knowledge collection (the
    shipped documents) unless ``knowledge`` is false: the call path as served."""
    with _find_profile().open("rb") as fh:
        profile = tomllib.load(fh)
    profile.update(name="bench", tools=[], default=True)
    for key in ("data",) if knowledge else ("knowledge_collection", "data"):
        profile.pop(key, None)
    path = directory / "bench.toml"
    path.write_text(_toml(profile))
    load_profile(path)  # fail here, with the file named, rather than in the server
    return path


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer, enough for an agent profile (tomllib only reads)."""
    lines: list[str] = []
    nested: list[str] = []
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            nested.append(f"\n[{name}]\n" + _toml(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.extend(f"\n[[{name}]]\n" + _toml(item, name) for item in value)
        else:
            lines.append(f"{orjson.dumps(key).decode()} = {_toml_value(value)}")
    return "\n".join(lines) + "\n" + "".join(nested)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return orjson.dumps(str(value)).decode()  # a JSON string is a TOML basic string


def _find_profile() -> Path:
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "prompts" / "piano-removals.toml"
        if candidate.is_file():
            return candidate
    raise RuntimeError("cannot find prompts/piano-removals.toml to build the bench agent from")


def _child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "TWILIO_", "OPENAI_", "DATABASE_URL", "CHROMA_"))
    }
    env.update(extra)
    return env


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass
class _Targets:
    relay_ws: str
    relay_http: str
    llm_base: str
    echo_ws: str
    agent: AgentProfile
    children: dict[str, _Child]
    #: The started server's database: its SQLite file, or the ``--database-url``.
    database: Path | str | None = None
    admin_token: str = ""  # the started server's RELAY_ADMIN_TOKEN (``--console``)


@contextlib.asynccontextmanager
async def _targets(
    options: BenchOptions, http: httpx.AsyncClient, notes: list[str]
) -> AsyncIterator[_Targets]:
    """Start what ``options`` does not point at; stop all of it on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    children: dict[str, _Child] = {}
    admin_token = secrets.token_urlsafe(24) if options.console or options.upload else ""
    python = sys.executable
    try:
        prompts = workdir / "prompts"
        prompts.mkdir()
        agent = load_profile(_bench_profile(prompts, knowledge=options.knowledge))
        starting: list[Any] = []
        llm_base = options.llm_url
        if llm_base is None:
            port = _free_port()
            llm_base = f"http://127.0.0.1:{port}/v1"
            argv = [python, "-m", "relay", "fake-llm", "--host", "127.0.0.1", "--port", str(port),
                    "--token-delay", str(options.token_delay), "--first-token-delay", str(options.first_token_delay),
                    "--reply-tokens", str(options.reply_tokens)]  # fmt: skip
            starting.append(("fake-llm", argv, _child_env(), f"http://127.0.0.1:{port}/healthz"))
        echo_port = _free_port()
        argv = [python, "-m", "relay.testing.bench", "echo-server", "--port", str(echo_port)]
        starting.append(
            ("echo-server", argv, _child_env(), f"http://127.0.0.1:{echo_port}/healthz")
        )
        if options.url is None:
            port = _free_port()
            relay_ws = f"ws://127.0.0.1:{port}/ws"
            data = workdir / "data"
            data.mkdir()
            knowledge = options.knowledge and bool(agent.knowledge_collection)
            if knowledge:  # loaded at start, as a fresh install loads the shipped documents
                copy_documents(str(agent.knowledge_collection), data)
            env = _child_env(
                OPENAI_BASE_URL=llm_base, RELAY_DATA_DIR=str(data), RELAY_PROMPTS_DIR=str(prompts),
                RELAY_LOG_LEVEL="warning", RELAY_LLM_TRANSPORT=options.transport,
                RELAY_KNOWLEDGE=str(knowledge).lower(), RELAY_KNOWLEDGE_AUTOLOAD=str(knowledge).lower(),
            )  # fmt: skip
            if admin_token:  # the console is off until it has a way to sign in
                env["RELAY_ADMIN_TOKEN"] = admin_token
            if options.database_url is not None:
                env["DATABASE_URL"] = options.database_url
            argv = [python, "-m", "relay", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--workers", str(options.workers)]  # fmt: skip
            starting.append(("relay", argv, env, f"http://127.0.0.1:{port}/healthz"))
        else:
            relay_ws = options.url
            if options.llm_url is None:
                notes.append(
                    "--url without --llm-url: the LLM hop is timed on a fake LLM the server may not use"
                )
            notes.append(
                "--url: the server's agent, LLM and transport are its own; --transport is ignored"
            )
        started = await asyncio.gather(
            *(
                _start(name, argv, env=env, cwd=workdir, health=health, http=http)
                for name, argv, env, health in starting
            ),
            return_exceptions=True,
        )
        for result in started:
            if isinstance(result, _Child):
                children[result.name] = result
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        parts = urlsplit(relay_ws)
        scheme = "https" if parts.scheme == "wss" else "http"
        yield _Targets(
            relay_ws=relay_ws, relay_http=f"{scheme}://{parts.netloc}", llm_base=llm_base,
            echo_ws=f"ws://127.0.0.1:{echo_port}/ws", agent=agent, children=children,
            database=_database(options, workdir),
            admin_token=admin_token,
        )  # fmt: skip
    finally:
        # The server first, so that it is not left talking to a stopped LLM.
        for name in ("relay", "echo-server", "fake-llm"):
            if name in children:
                children[name].stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- The run --------------------------------------------------------------------------------------


@dataclass
class _Tally:
    first: list[float] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # the history length of each sample
    #: Turns that had an LLM-hop sample started beside them: (c) and the sample.
    beside: list[tuple[float, asyncio.Task[float | None]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    frames_lost: int = 0
    turns: int = 0


async def _metrics(http: httpx.AsyncClient, base: str) -> dict[str, Any] | None:
    try:
        response = await http.get(base + "/metrics.json", timeout=10.0)
        data: dict[str, Any] = response.json()
        return data if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def _settle(http: httpx.AsyncClient, base: str, active: int) -> dict[str, Any] | None:
    """Wait until the server holds ``active`` sessions and has stored what it was handed."""
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    metrics = await _metrics(http, base)
    while metrics is not None and time.monotonic() < deadline:
        if metrics.get("active_sessions") == active and not metrics.get("recorder_pending"):
            await asyncio.sleep(0.5)
            return await _metrics(http, base)
        await asyncio.sleep(0.1)
        metrics = await _metrics(http, base)
    return metrics


async def _connect_all(
    url: str, count: int, batch: int, errors: list[str], *, first: int = 0
) -> list[BenchCall]:
    calls: list[BenchCall] = []
    for indices in _batches(range(first, first + count), batch):
        group = [BenchCall(url, i) for i in indices]
        results = await asyncio.gather(*(c.timed_connect() for c in group), return_exceptions=True)
        for call, result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"call {call.index}: connect failed: {result!r}")
            else:
                calls.append(call)
    return calls


async def _play(
    call: BenchCall,
    turns: int,
    *,
    options: BenchOptions,
    expectations: Expectations,
    tally: _Tally,
    think: float,
    stagger: float = 0.0,
    baselines: Baselines | None = None,
    on_turn: Callable[[int], asyncio.Task[float | None] | None] | None = None,
) -> None:
    """Play ``turns`` turns on ``call``, checking every reply and timing the measured ones.

    ``baselines`` (one call) are sampled before each turn; ``on_turn`` is told the history
    length as each turn starts, and may return an LLM-hop sample started beside it."""
    if stagger > 0:
        await asyncio.sleep(random.uniform(0, stagger))
    for _ in range(turns):
        prompt = PROMPTS[(call.index + len(call.history)) % len(PROMPTS)]
        if options.new_words:
            prompt = new_words(prompt, call.index)
        if baselines is not None:
            await baselines.sample(call.history, prompt)
        expected = expectations.pieces(prompt)
        if options.partials:
            await call.speak_partials(prompt, options.partials)
        beside = on_turn(len(call.history)) if on_turn is not None else None
        result = await call.turn(prompt, options.reply_timeout)
        tally.turns += 1
        lost = tokens_lost(expected, result.text) + (0 if result.lasts else 1)
        tally.frames_lost += lost
        if result.closed and not result.lasts:
            tally.errors.append(f"call {call.index}: the connection closed")
            return
        if lost or result.lasts != 1 or result.first_s is None:
            tally.errors.append(
                f"call {call.index}: incomplete reply ({lost} lost, {result.lasts} last:true): {result.text[:80]!r}"
            )
        elif result.text != "".join(expected):
            tally.errors.append(f"call {call.index}: unexpected reply {result.text[:80]!r}")
        else:
            tally.first.append(result.first_s)
            tally.history.append(len(call.history))
            if beside is not None:
                tally.beside.append((result.first_s, beside))
        call.history.append((prompt, result.text))
        if think > 0:
            await asyncio.sleep(random.uniform(0.5, 1.5) * think)


async def _bench(options: BenchOptions) -> BenchReport:
    _raise_fd_limit(options.calls * 3 + 256)
    notes: list[str] = []
    expectations = Expectations(options.reply_tokens)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    client = _transport_client(options) if options.baseline_client == "transport" else None
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), limits=limits) as http,
        _targets(options, http, notes) as targets,
        contextlib.AsyncExitStack() as closing,
    ):
        if client is not None:
            closing.push_async_callback(client.aclose)
        knowledge = options.knowledge and bool(targets.agent.knowledge_collection)
        if knowledge and "relay" in targets.children:
            await wait_until_ready(http, targets.relay_http, options.workers)
        baselines = Baselines(
            BenchCall(targets.echo_ws, -1),
            LLMProbe(targets.llm_base, targets.agent, http, client),
            expectations,
        )
        if knowledge:
            baselines.llm.reference = reference_like(str(targets.agent.knowledge_collection))
        await baselines.echo.connect(setup=False)
        # Warm both hops; these samples are not kept. The LLM hop's run side by side: each
        # streams a whole reply (1.3 s at the load profile's pacing: 26 s one after another).
        for index in range(20):
            await baselines.sample_ws(PROMPTS[index % len(PROMPTS)], keep=False)
        await asyncio.gather(*(
            baselines.sample_llm([], PROMPTS[index % len(PROMPTS)], keep=False) for index in range(20)
        ))  # fmt: skip

        # Warm the server (imports, database, the LLM connection), then weigh it with no calls.
        warm = _Tally()
        # numbered after the measured calls: with --new-words, its words are none of theirs
        warm_calls = await _connect_all(targets.relay_ws, 1, 1, warm.errors, first=options.calls)
        for call in warm_calls:
            await _play(call, 3, options=options, expectations=expectations, tally=warm, think=0.0)
            await call.close()
        if warm.errors:
            raise RuntimeError("the warm-up call failed: " + "; ".join(warm.errors[:3]))
        workers = options.workers
        idle0 = await settle_all(http, targets.relay_http, workers, 0)

        tally = _Tally()
        cpu_lives = _cpu(targets.children)
        calls = await _connect_all(
            targets.relay_ws, options.calls, options.connect_batch, tally.errors
        )
        idle = await settle_all(http, targets.relay_http, workers, len(calls))
        rss0, rss, per_call = memory_per_call(idle0, idle, len(calls))
        if workers > 1:
            spread = sorted(int(d.get("active_sessions") or 0) for d in idle.values())
            notes.append(f"idle calls per worker: {spread} ({len(idle)} of {workers} answered)")
        if options.new_words and options.calls >= len(NAMES) * len(SUBURBS):
            notes.append(
                f"--new-words: {len(NAMES) * len(SUBURBS)} callers, so calls beyond that repeat words"
            )
        if per_call is not None and len(calls) < 50:
            notes.append("memory per call is only meaningful with many calls (RSS moves in pages)")

        unmeasured = _Tally()
        if options.unmeasured_turns:
            await asyncio.gather(*(
                _play(c, options.unmeasured_turns, options=options, expectations=expectations, tally=unmeasured,
                      think=0.0, stagger=min(1.0, options.think) if len(calls) > 1 else 0.0)
                for c in calls
            ))  # fmt: skip

        interleaved = len(calls) == 1
        with_turns = not interleaved and options.baseline_sampling == "turns"
        if with_turns:
            measured_turns = len(calls) * options.turns
            baselines.turn_share = min(1.0, _TURN_SAMPLES / measured_turns)
        stop = asyncio.Event()
        alongside = None
        if not interleaved:
            alongside = asyncio.create_task(
                baselines.run_alongside(
                    stop, options.unmeasured_turns, options.turns, llm=not with_turns
                )
            )
        console = None
        if options.console:
            picked = calls[:: max(1, len(calls) // options.console)][: options.console]
            followed = [Followed(call.call_sid) for call in picked]
            for call, one in zip(picked, followed, strict=True):
                call.followed = one
            console = Console(targets.relay_http, targets.admin_token, followed)
            closing.push_async_callback(console.aclose)
            await console.start()
        uploading = None
        if options.upload is not None:
            editor = Editor(targets.relay_http, targets.admin_token)
            closing.push_async_callback(editor.aclose)
            await editor.sign_in()
            document = options.upload.read_bytes()
        served_before = await worker_metrics(http, targets.relay_http, workers)
        lag_before = await lag_buckets(http, targets.relay_http)
        cpu_before = _cpu(targets.children)
        # The load generator's own full collections (a thousand calls' frames and results)
        # would be timed as relay's latency: what the run holds so far is frozen first.
        settle_heap()
        started, started_wall = time.perf_counter(), time.time()
        if options.upload is not None:
            uploading = asyncio.create_task(
                editor.upload(options.upload.name, document, targets.agent.name, UPLOAD_AFTER)
            )
        try:
            await asyncio.gather(*(
                _play(c, options.turns, options=options, expectations=expectations, tally=tally, think=options.think,
                      stagger=options.think if len(calls) > 1 else 0.0, baselines=baselines if interleaved else None,
                      on_turn=baselines.at_turn if with_turns else None)
                for c in calls
            ))  # fmt: skip
        finally:
            elapsed = time.perf_counter() - started
            ended_wall = time.time()
            stop.set()
            if alongside is not None:
                await alongside
            await baselines.settle()
        watched = asdict(await console.stop()) if console is not None else {}
        uploaded = await uploading if uploading is not None else {}
        paired = None
        if with_turns:
            paired = Stats.of([
                first - hop for first, sample in tally.beside if (hop := sample.result()) is not None
            ])  # fmt: skip
        model_late = None
        if "fake-llm" in targets.children:
            model_late = await model_lateness(http, targets.llm_base, started_wall, ended_wall)
        served_after = await worker_metrics(http, targets.relay_http, workers)
        if uploaded:
            uploaded["index_rebuilds"] = index_rebuilds(served_before, served_after)
        lag = lag_quantiles(lag_before, await lag_buckets(http, targets.relay_http), (0.5, 0.99))
        used = {
            name: after - cpu_before[name]
            for name, after in _cpu(targets.children).items()
            if name in cpu_before
        }
        cpu = {name: round(seconds / elapsed * 100, 1) for name, seconds in used.items()}
        server_cpu = used.get("relay")
        per_turn = None  # 0 is a measurement too (a short phase within one clock tick)
        if server_cpu is not None and tally.turns:
            per_turn = round(server_cpu * 1000 / tally.turns, 2)
        unexpected = sum(c.unexpected for c in calls)
        for group in _batches(calls, options.connect_batch):
            await asyncio.gather(*(c.close() for c in group))
        await baselines.echo.close()
        cpu_per_call = None
        if calls and "relay" in cpu_lives:
            settled = await settle_all(http, targets.relay_http, workers, 0, timeout=120.0)
            if settled and all_done(settled):
                lives = _cpu(targets.children)["relay"] - cpu_lives["relay"]
                cpu_per_call = round(lives * 1000 / len(calls), 2)
            else:
                notes.append("the server had not finished the calls' work after 120 s")
        stages: dict[str, Stats] = {}
        if targets.database is not None:
            stages = await stages_of(targets.database, started, started + elapsed, tally.turns)

    ws, llm, relay = Stats.of(baselines.ws), Stats.of(baselines.llm_hop), Stats.of(tally.first)
    errors = tally.errors + baselines.errors
    if unexpected:
        errors.append(f"{unexpected} frames arrived outside any turn")
    return BenchReport(
        options=_reported(options),
        baseline_mode="interleaved" if interleaved else "concurrent",
        ws_hop=ws, llm_hop=llm, relay=relay,
        overhead_p50_ms=_overhead(relay.p50, ws.p50, llm.p50),
        overhead_p95_ms=_overhead(relay.p95, ws.p95, llm.p95),
        overhead_p99_ms=_overhead(relay.p99, ws.p99, llm.p99),
        turns_measured=tally.turns,
        turns_per_s=round(tally.turns / elapsed, 1) if elapsed > 0 else 0.0,
        errors=len(tally.errors) + len(baselines.errors) + (1 if unexpected else 0),
        frames_lost=tally.frames_lost,
        unexpected_frames=unexpected,
        unmeasured_errors=len(unmeasured.errors),
        rss_kb_no_calls=rss0, rss_kb_idle_calls=rss, memory_per_call_kb=per_call,
        by_history=_by_history(tally, baselines, ws),
        cpu_percent=cpu,
        server_cpu_ms_per_turn=per_turn,
        server_cpu_ms_per_call=cpu_per_call,
        measured_seconds=round(elapsed, 2),
        error_samples=(errors + unmeasured.errors)[:10],
        notes=notes,
        retrieval=retrieval_share(served_before, served_after, tally.turns) if knowledge else {},
        connect=Stats.of([c.connect_s for c in calls if c.connect_s is not None]),
        connect_failures=options.calls - len(calls),
        stages=stages,
        loop_lag=lag,
        model_late=model_late,
        paired=paired,
        gc_passes=gc_passes(served_before, served_after),
        console=watched,
        upload=uploaded,
    )  # fmt: skip


async def model_lateness(
    http: httpx.AsyncClient, llm_base: str, since: float, until: float
) -> Stats | None:
    """How late the fake LLM at ``llm_base`` wrote the first deltas of the replies it began
    between ``since`` and ``until`` (``time.time()``), by its own clock; None if it cannot say.
    """
    try:
        response = await http.get(
            f"{llm_base}/_scripted/lateness", params={"since": since, "until": until}
        )
        response.raise_for_status()
        late = response.json()["first_token_late_s"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return Stats.of([seconds for seconds in late if isinstance(seconds, int | float)])


#: The stages of :func:`stages_of`, in the order a turn goes through them.
STAGES = (
    "prompt -> passages ready",
    "prompt -> model request",
    "model request -> 1st token",
    "1st token -> 1st frame sent",
)


async def stages_of(database: Path | str, start: float, end: float, turns: int) -> dict[str, Stats]:
    """Where the measured turns' time went inside relay, from the timings each turn records
    (``turns`` rows; ``time.perf_counter``, which on Linux is one clock for every process):
    the wait for the passages (retrieval, and the event loop's queue before it), the request
    sent, the model's first token (the model's own time plus the queue), the first text frame
    written to the socket. Turns whose first frame went out between ``start`` and ``end``;
    waits up to 5 s for the recorder to write ``turns`` of them. ``database`` is a SQLite file
    or a PostgreSQL URL. Empty when not on Linux."""
    if not sys.platform.startswith("linux"):
        return {}

    async def read() -> list[tuple[Any, ...]]:
        if isinstance(database, Path):
            return await _turn_timings_sqlite(database, start, end)
        return await _turn_timings_postgres(database, start, end)

    deadline = time.monotonic() + 5
    rows = await read()
    while len(rows) < turns and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        rows = await read()
    samples: dict[str, list[float]] = {name: [] for name in STAGES}
    for passages, request, token, frame, frame_ms in rows:
        prompt = frame - frame_ms / 1000
        if passages is not None:
            samples[STAGES[0]].append(passages - prompt)
        if request is not None:
            samples[STAGES[1]].append(request - prompt)
            if token is not None:
                samples[STAGES[2]].append(token - request)
        if token is not None:
            samples[STAGES[3]].append(frame - token)
    return {name: Stats.of(values) for name, values in samples.items() if values}


_TURN_TIMINGS = (
    "SELECT retrieval_done_at, llm_request_at, first_token_at, first_frame_at, first_frame_ms "
    "FROM turns WHERE role = 'assistant' AND first_frame_ms IS NOT NULL "
    "AND first_frame_at BETWEEN {} AND {}"
)


async def _turn_timings_sqlite(database: Path, start: float, end: float) -> list[tuple[Any, ...]]:
    import sqlite3

    def read() -> list[tuple[Any, ...]]:
        if not database.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return db.execute(_TURN_TIMINGS.format("?", "?"), (start, end)).fetchall()

    return await asyncio.to_thread(read)


async def _turn_timings_postgres(url: str, start: float, end: float) -> list[tuple[Any, ...]]:
    import asyncpg

    from relay.testing.postgres import asyncpg_dsn

    db = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [tuple(r) for r in await db.fetch(_TURN_TIMINGS.format("$1", "$2"), start, end)]
    finally:
        await db.close()


def _transport_client(options: BenchOptions) -> Any:
    """The HTTP client of the served transport, as relay's OpenAIChat makes it."""
    if options.transport == "lean":
        from relay.llm.http1 import LeanTransport

        return LeanTransport()
    return AiohttpTransport()


def _by_history(tally: _Tally, baselines: Baselines, ws: Stats) -> list[dict[str, Any]]:
    """p50s by history length (five bands), to show whether the overhead grows with it."""
    if not tally.history or max(tally.history) - min(tally.history) < 10:
        return []
    low, high = min(tally.history), max(tally.history)
    width = math.ceil((high - low + 1) / 5)
    bands = []
    for start in range(low, high + 1, width):
        end = start + width - 1

        def within(lengths: list[int], values: list[float]) -> list[float]:
            return [v for n, v in zip(lengths, values, strict=True) if start <= n <= end]  # noqa: B023

        relay = Stats.of(within(tally.history, tally.first))
        llm = Stats.of(within(baselines.llm_history, baselines.llm_hop))
        bands.append(
            {
                "history": f"{start}-{end}",
                "n": relay.n,
                "relay_p50_ms": relay.p50,
                "llm_hop_p50_ms": llm.p50,
                "overhead_p50_ms": _overhead(relay.p50, ws.p50, llm.p50),
            }
        )
    return bands


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _cpu(children: dict[str, _Child]) -> dict[str, float]:
    seconds = {"bench client": time.process_time()}
    for name, child in children.items():
        used = child.cpu_seconds()
        if used is not None:
            seconds[name] = used
    return seconds


def run(options: BenchOptions) -> BenchReport:
    """Run the benchmark (starting and stopping what it needs) and return its report."""
    timeout = (
        options.timeout if options.timeout is not None else 180 + 3 * options.estimated_seconds()
    )

    async def bounded() -> BenchReport:
        async with asyncio.timeout(timeout):
            return await _bench(options)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(bounded())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # the loop `relay serve` runs on, so the client keeps pace


# --- Output ---------------------------------------------------------------------------------------


def format_report(report: BenchReport) -> str:
    """The report as a table for a terminal."""
    o = report.options
    lines = [
        f"relay bench: {o['calls']} call(s) x {o['turns']} measured turns after "
        f"{report_history(o)} unmeasured; fake LLM {o['reply_tokens']} tokens, "
        f"{o['token_delay']} s apart (first after {o['first_token_delay']} s); "
        f"think {o['think']} s; transport {o['transport']}; workers {o.get('workers', 1)}; "
        f"knowledge {'on' if o.get('knowledge', True) else 'off'}"
        f"{', new words each call' if o.get('new_words') else ''}; "
        f"{'database PostgreSQL; ' if o.get('database_url') else ''}"
        f"LLM-hop baseline client {_baseline_name(o)}",
        "",
        f"{'prompt -> first text frame, ms':<40}"
        + "".join(f"{h:>10}" for h in ("p50", "p95", "p99", "mean", "max"))
        + f"{'n':>8}",
    ]
    rows = (
        ("(a) WebSocket hop (echo server)", report.ws_hop),
        (f"(b) LLM hop (warm {_baseline_name(o)}, 1st delta)", report.llm_hop),
        ("(c) relay", report.relay),
    )
    for label, stats in rows:
        cells = (stats.p50, stats.p95, stats.p99, stats.mean, stats.max)
        lines.append(f"{label:<40}" + "".join(map(_ms, cells)) + f"{stats.n:>8}")
    overheads = (report.overhead_p50_ms, report.overhead_p95_ms, report.overhead_p99_ms)
    lines.append(f"{'app overhead (c - a - b)':<40}" + "".join(map(_ms, overheads)))
    paired = report.paired
    if paired is not None and paired.n:
        cells = (paired.p50, paired.p95, paired.p99, paired.mean, paired.max)
        lines.append(f"{'(c) - (b), each turn beside its own (b)':<40}" + "".join(map(_ms, cells))
                     + f"{paired.n:>8}")  # fmt: skip
    late = report.model_late
    if late is not None and late.n:
        cells = (late.p50, late.p95, late.p99, late.mean, late.max)
        lines.append(f"{'fake LLM 1st delta late (its own clock)':<40}" + "".join(map(_ms, cells))
                     + f"{late.n:>8}")  # fmt: skip
    lines.append("")
    mode = report.baseline_mode
    if mode == "concurrent":
        mode += ", LLM hop " + (
            "as turns start" if o.get("baseline_sampling", "steady") == "turns" else "steadily"
        )
    lines.append(
        f"baselines sampled {mode}; measured phase {report.measured_seconds} s: "
        f"{report.turns_measured} turns, {report.turns_per_s} turns/s"
    )
    lines.append(
        f"errors {report.errors}, frames lost {report.frames_lost}, "
        f"unmeasured-turn errors {report.unmeasured_errors}"
    )
    if report.connect is not None and report.connect.n:
        c = report.connect
        lines.append(
            f"connect ({o['connect_batch']} at a time), ms: p50 {_ms(c.p50).strip()}, "
            f"p95 {_ms(c.p95).strip()}, p99 {_ms(c.p99).strip()}, max {_ms(c.max).strip()}; "
            f"{report.connect_failures} failed"
        )
    if report.memory_per_call_kb is not None:
        lines.append(
            f"server memory: {report.rss_kb_no_calls} KB with no calls, "
            f"{report.rss_kb_idle_calls} KB with {o['calls']} idle: "
            f"{report.memory_per_call_kb} KB per call"
        )
    if report.by_history:
        lines.append("")
        lines.append(
            f"{'by history length (turns)':<26}{'n':>6}{'relay p50':>12}{'LLM hop p50':>13}{'overhead p50':>14}"
        )
        for band in report.by_history:
            relay, llm, overhead = (
                _ms(band[k]) for k in ("relay_p50_ms", "llm_hop_p50_ms", "overhead_p50_ms")
            )
            lines.append(f"{band['history']:<26}{band['n']:>6}{relay:>12}{llm:>13}{overhead:>14}")
        lines.append("")
    if report.stages:
        lines.append(f"{'inside relay (its own clock), ms':<40}" + "".join(
            f"{h:>10}" for h in ("p50", "p95", "p99", "mean", "max")) + f"{'n':>8}")  # fmt: skip
        for label, stats in report.stages.items():
            cells = (stats.p50, stats.p95, stats.p99, stats.mean, stats.max)
            lines.append(f"{label:<40}" + "".join(map(_ms, cells)) + f"{stats.n:>8}")
        lines.append("")
    lag = report.loop_lag
    if lag.get("samples"):
        lines.append(
            f"event loop lag during the measured phase (relay_event_loop_lag_seconds, "
            f"{lag['samples']} samples over the workers): p50 <= {lag.get('p50_ms')} ms, "
            f"p99 <= {lag.get('p99_ms')} ms"
        )
    if report.gc_passes:
        young, *older = report.gc_passes
        lines.append(
            f"garbage collections during the measured phase (all workers): {young} young, "
            + ", ".join(f"{n} {name}" for n, name in zip(older, ("middle", "full"), strict=False))
        )
    if report.cpu_percent:
        usage = ", ".join(f"{k} {v}%" for k, v in report.cpu_percent.items())
        lines.append(f"cpu during the measured phase (100% = one core): {usage}")
    if report.server_cpu_ms_per_turn is not None:
        lines.append(f"server cpu per turn: {report.server_cpu_ms_per_turn} ms")
    if report.server_cpu_ms_per_call is not None:
        lines.append(
            f"server cpu per call, connect to post-call work done: {report.server_cpu_ms_per_call} ms"
        )
    r = report.retrieval
    if r.get("turns"):
        lines.append(
            f"retrieval (knowledge on, {r['workers_seen']} worker(s)): {r['cpu_ms_per_turn']} ms cpu "
            f"and {r['wall_ms_per_turn']} ms wall per turn; {r['searched']} searched, "
            f"{r['skipped']} skipped, {r['query_embeddings']} query embeddings"
            + (
                f" ({r['embed_cpu_ms_per_embedding']} ms cpu each)"
                if r["query_embeddings"] and "embed_cpu_ms_per_embedding" in r
                else ""
            )
            + f", {r['query_cache_hits']} cached vectors, {r['prefetched']} prefetched from "
            f"partial transcripts, {r['failures']} failures"
            + (f" ({r['shed']} shed under load)" if r.get("shed") else "")
        )
    elif not o.get("knowledge", True):
        lines.append("retrieval: off (--no-knowledge)")
    if report.console:
        lines.append(format_figures(report.console))
    if report.upload:
        lines.append(format_upload(report.upload))
    lines.extend(f"note: {note}" for note in report.notes)
    lines.extend(f"error: {sample}" for sample in report.error_samples)
    return "\n".join(lines)


def report_history(options: dict[str, Any]) -> int:
    return max(int(options["history"]), int(options["warmup"]))


def _baseline_name(options: dict[str, Any]) -> str:
    client = options.get("baseline_client", "httpx")
    return str(options.get("transport")) if client == "transport" else str(client)


def _ms(value: float | None) -> str:
    if value is None:
        return f"{'-':>10}"
    return f"{value:>10.3f}" if abs(value) < 10_000 else f"{value:>10.0f}"


# --- The command ----------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="measure the latency relay adds and the calls one process holds",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )  # fmt: skip
    bench.add_argument(
        "--calls", type=int, default=1, help="concurrent simulated calls (default 1)"
    )
    bench.add_argument("--turns", type=int, default=20, help="measured turns per call (default 20)")
    bench.add_argument(
        "--history", type=int, default=0, help="unmeasured turns each call plays first (default 0)"
    )
    bench.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="at least this many unmeasured turns per call (default 1)",
    )
    bench.add_argument(
        "--token-delay",
        type=float,
        default=0.03,
        help="fake LLM: seconds between tokens (default 0.03)",
    )
    bench.add_argument(
        "--first-token-delay",
        type=float,
        default=0.0,
        help="fake LLM: seconds before the first token",
    )
    bench.add_argument(
        "--reply-tokens", type=int, default=20, help="fake LLM: tokens per reply (default 20)"
    )
    bench.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="seconds between a reply and the next prompt, randomised +-50%% (default 1)",
    )
    bench.add_argument("--url", help="a running server's WebSocket URL (default: start one)")
    bench.add_argument(
        "--llm-url",
        help="the fake LLM's base URL, e.g. http://127.0.0.1:8081/v1 (default: start one)",
    )
    bench.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="aiohttp",
        help="the started server's LLM transport (default aiohttp)",
    )
    bench.add_argument(
        "--baseline-client",
        choices=("transport", "httpx"),
        default="transport",
        help="the warm client that times the LLM hop (b): the served transport's own "
        "(default) or httpx",
    )
    bench.add_argument(
        "--baseline-sampling",
        choices=("steady", "turns"),
        default="steady",
        help="with many calls, when the LLM hop (b) is sampled: at a steady pace (default), or "
        "beside a share of the measured turns as they start, with each such turn's (c) - (b)",
    )
    bench.add_argument(
        "--connect-batch", type=int, default=50, help="calls connected at once (default 50)"
    )
    bench.add_argument(
        "--timeout", type=float, help="give up after this many seconds (default: estimated)"
    )
    bench.add_argument("--json", type=Path, help="also write the report to this file as JSON")
    bench.add_argument(
        "--no-knowledge",
        action="store_true",
        help="the bench agent without its knowledge collection (default: the shipped documents "
        "loaded and searched every turn, as served)",
    )
    bench.add_argument(
        "--workers", type=int, default=1, help="worker processes of the started server (default 1)"
    )
    bench.add_argument(
        "--partials",
        type=int,
        default=0,
        help="interim transcripts (prompt last:false) sent before each final one, 0.1 s apart "
        "then 0.4 s to the final (default 0; the agent needs partial_prompts for Twilio to send "
        "them)",
    )
    bench.add_argument(
        "--new-words",
        action="store_true",
        help="each call's caller says its own name and suburb in every utterance, so no worker "
        "has heard a turn's words before (up to 1,600 calls of up to ten turns) and every "
        "searched turn embeds them (default: ten questions shared by all calls, embedded once "
        "per worker)",
    )
    bench.add_argument(
        "--console",
        type=int,
        default=0,
        metavar="N",
        help="N owners watch the console during the measured phase, as its live pages do: the "
        "live list refreshed every second, and one call's transcript followed as it is said "
        "(default 0; a started server only)",
    )
    bench.add_argument(
        "--upload",
        type=Path,
        metavar="FILE",
        help="an editor uploads FILE to the bench agent's knowledge through the console, "
        f"{UPLOAD_AFTER:g} s into the measured phase (a started server with knowledge on)",
    )
    bench.add_argument(
        "--database-url",
        metavar="URL",
        help="the started server records to this PostgreSQL database (postgresql://…) instead "
        "of a fresh SQLite file, and the stage timings are read from it (default: SQLite)",
    )
    bench.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    try:
        options = BenchOptions(
            calls=args.calls, turns=args.turns, history=args.history, warmup=args.warmup,
            token_delay=args.token_delay, first_token_delay=args.first_token_delay,
            reply_tokens=args.reply_tokens, think=args.think, url=args.url, llm_url=args.llm_url,
            transport=args.transport, baseline_client=args.baseline_client,
            baseline_sampling=args.baseline_sampling, connect_batch=max(1, args.connect_batch), timeout=args.timeout,
            knowledge=not args.no_knowledge, workers=args.workers, partials=max(0, args.partials),
            new_words=args.new_words, console=args.console, upload=args.upload,
            database_url=args.database_url,
        )  # fmt: skip
    except ValueError as exc:
        print(f"relay bench: {exc}", file=sys.stderr)
        return 2
    try:
        report = run(options)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"relay bench: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json is not None:
        args.json.write_bytes(report.to_json())
    return 0 if report.errors == 0 and report.frames_lost == 0 else 1


# --- The echo server (run as ``python -m relay.testing.bench echo-server``) -------------------------------


def echo_app() -> Any:
    """A ConversationRelay server that answers every final prompt itself, with one text frame."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    reply = _ECHO_FRAME.decode()

    async def conversation(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            frame = orjson.loads(text)
            if frame.get("type") == "prompt" and frame.get("last", True):
                await websocket.send_text(reply)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[WebSocketRoute("/ws", conversation), Route("/healthz", health)])


def _echo_main(argv: Sequence[str]) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m relay.testing.bench")
    parser.add_argument("command", choices=("echo-server",))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settle_heap()  # as relay serve's workers do
    # The same uvicorn settings as `relay serve`, so the two differ only in the app.
    uvicorn.run(
        echo_app(), host=args.host, port=args.port, proxy_headers=True, forwarded_allow_ips="*",
        ws_max_size=2 * SocketLimits().max_frame_bytes, ws_ping_interval=None,  # relay.web.socket
        log_config=None, access_log=False,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(_echo_main(sys.argv[1:]))
