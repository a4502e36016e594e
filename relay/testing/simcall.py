"""A simulated Twilio side of a call: what ``relay call``, ``relay replay``, the bench and tests use.

:class:`SimulatedCall` speaks ConversationRelay to a server over a real WebSocket, signing
the upgrade like Twilio when an auth token is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
import websockets
from twilio.request_validator import RequestValidator


def new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` and ``params``."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params or {})))


@dataclass
class Reply:
    """What the agent said for one prompt."""

    text: str
    frames: list[dict[str, Any]]
    first_frame_s: float | None  # seconds from the prompt to the first text frame
    end: dict[str, Any] | None = None


@dataclass
class SimulatedCall:
    """One call, driven frame by frame."""

    url: str
    from_: str = "+61412345678"
    to: str = "+61390001234"
    auth_token: str | None = None
    signed_url: str | None = None  # the wss:// URL the signature covers (default: url as wss)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    session_id: str = field(default_factory=lambda: new_sid("VX"))
    direction: str = "inbound"
    frames: list[dict[str, Any]] = field(default_factory=list)
    _ws: Any = None
    _inbox: asyncio.Queue[dict[str, Any] | None] | None = None
    _reader: asyncio.Task[None] | None = None

    async def connect(self, *, setup: bool = True) -> None:
        headers = {}
        if self.auth_token:
            target = self.signed_url or self.url.replace("ws://", "wss://", 1)
            headers["X-Twilio-Signature"] = sign(self.auth_token, target)
        self._ws = await websockets.connect(
            self.url, additional_headers=headers, max_size=2**20, ping_interval=None
        )
        self._inbox = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        if setup:
            await self.send_setup()

    async def _read(self) -> None:
        assert self._inbox is not None
        try:
            async for raw in self._ws:
                frame = orjson.loads(raw)
                frame["_t"] = time.perf_counter()
                self.frames.append(frame)
                await self._inbox.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._inbox.put(None)

    async def send(self, frame: Mapping[str, Any] | str) -> None:
        await self._ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def send_setup(self, **extra: Any) -> None:
        await self.send({
            "type": "setup", "sessionId": self.session_id, "callSid": self.call_sid,
            "accountSid": "AC" + "0" * 32, "parentCallSid": "", "from": self.from_, "to": self.to,
            "forwardedFrom": "", "callType": "PSTN", "callerName": "", "direction": self.direction,
            "callStatus": "RINGING", "customParameters": self.custom_parameters, **extra,
        })  # fmt: skip

    async def prompt(self, text: str, *, lang: str = "en-AU", last: bool = True) -> None:
        await self.send({"type": "prompt", "voicePrompt": text, "lang": lang, "last": last})

    async def interrupt(self, heard: str, duration_ms: int = 1200) -> None:
        await self.send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": heard,
                "durationUntilInterruptMs": duration_ms,
            }
        )

    async def dtmf(self, digit: str) -> None:
        await self.send({"type": "dtmf", "digit": digit})

    async def info(self, name: str, value: str) -> None:
        await self.send({"type": "info", "name": name, "value": value})

    async def next_frame(self, timeout: float = 10.0) -> dict[str, Any] | None:
        assert self._inbox is not None
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def until_closed(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The frames still to come, until the other side closes the socket."""
        frames = []
        while (frame := await self.next_frame(timeout)) is not None:
            frames.append(frame)
        return frames

    async def reply(self, timeout: float = 15.0, *, sent_at: float | None = None) -> Reply:
        """Collect frames until a ``text`` frame with ``last: true`` (or ``end``, or close)."""
        sent_at = time.perf_counter() if sent_at is None else sent_at
        frames: list[dict[str, Any]] = []
        first: float | None = None
        deadline = time.perf_counter() + timeout
        while True:
            frame = await self.next_frame(max(0.01, deadline - time.perf_counter()))
            if frame is None:
                break
            frames.append(frame)
            if frame.get("type") == "text" and first is None:
                first = frame["_t"] - sent_at
            if frame.get("type") == "end":
                return Reply(_text(frames), frames, first, end=frame)
            if frame.get("type") == "text" and frame.get("last"):
                break
        return Reply(_text(frames), frames, first)

    async def say(self, text: str, timeout: float = 15.0) -> Reply:
        """Send a final prompt and wait for the whole reply."""
        sent = time.perf_counter()
        await self.prompt(text)
        return await self.reply(timeout, sent_at=sent)

    async def close(self, code: int = 1000) -> None:
        if self._ws is not None:
            await self._ws.close(code=code)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    async def drop(self) -> None:
        """Drop the connection abruptly, as a network failure would (no close handshake)."""
        if self._ws is not None:
            self._ws.transport.abort()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    async def __aenter__(self) -> SimulatedCall:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _text(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("token", "") for f in frames if f.get("type") == "text")


@contextlib.asynccontextmanager
async def serve_in_process(app: Any, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run ``app`` under a real uvicorn in this event loop; yields ``http://host:port``."""
    config = uvicorn.Config(
        app,
        host=host,
        port=0,
        log_config=None,
        access_log=False,
        ws_ping_interval=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
