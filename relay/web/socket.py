"""The ConversationRelay WebSocket's transport rules: sizes, abuse and idle sockets.

The session (:mod:`relay.call.session`) records, logs and ignores every frame it cannot use; a
call goes on whatever Twilio (or anyone holding a valid signature) sends. Only abuse beyond
these stated limits closes the socket, each with one clear log line:

* a frame larger than ``RELAY_WS_MAX_FRAME_BYTES`` (default 4 MiB): closed with 1009. Frames up
  to that size reach the session, which refuses anything over 64 KiB as an invalid frame.
  uvicorn's own limit is set to twice ours (see :func:`uvicorn_ws_options`), so a frame between
  the two is refused here with our log line; a larger one is cut off by uvicorn (also 1009,
  logged here when the disconnect arrives) before it is buffered whole;
* invalid frames arriving faster than ``RELAY_WS_MAX_INVALID_PER_SECOND`` (default 2000) on
  average over a minute (a token bucket holding 60 seconds' worth: a burst of up to 120,000 is
  absorbed): closed with 1008 (policy violation). 0 turns the check off. Twilio itself never
  sends an invalid frame, so only a broken or hostile sender reaches this; one socket can push
  about 3,800 invalid frames a second through relay on a 2-core machine, so a sustained flood
  trips it within minutes while a fuzzer's 100,000 frames do not lose the call;
* nothing received or sent for ``RELAY_WS_IDLE_SECONDS`` (default 300 s; 0 turns it off):
  closed with 1001. Twilio sends no keep-alive and a quiet call can be silent for minutes
  (notes, pitfall 8), so the default is generous and time spent *sending* counts as activity.
  WebSocket pings stay off: Twilio is not documented to answer them. If Twilio still held the
  call, it requests the ``<Connect action>`` URL with ``SessionStatus=failed``, and relay
  answers with a fresh ``<ConversationRelay>`` that resumes the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from starlette.websockets import WebSocket, WebSocketState

log = structlog.get_logger("relay.web.socket")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
#: Invalid frames are averaged over this long (the token bucket holds this many seconds' worth).
INVALID_WINDOW_SECONDS = 60


class Session(Protocol):
    """What the socket needs of a call session."""

    close_code: int | None
    close_reason: str | None
    invalid_frames: int


@dataclass(frozen=True)
class SocketLimits:
    max_frame_bytes: int = 4 * 1024 * 1024
    max_invalid_per_second: int = 2000
    idle_seconds: float = 300.0

    @classmethod
    def from_settings(cls, settings: Any) -> SocketLimits:
        return cls(
            max_frame_bytes=settings.ws_max_frame_bytes,
            max_invalid_per_second=settings.ws_max_invalid_per_second,
            idle_seconds=settings.ws_idle_seconds,
        )


def uvicorn_ws_options(settings: Any) -> dict[str, Any]:
    """The uvicorn WebSocket options that go with these limits (``relay serve``, the bench)."""
    return {
        "ws_max_size": 2 * int(settings.ws_max_frame_bytes),
        "ws_ping_interval": None,  # Twilio needs no keep-alive (notes, pitfall 8)
    }


def frame_bytes(data: str | bytes, limit: int) -> int:
    """The frame's size in bytes; exact whenever it could matter against ``limit``."""
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


class RelaySocket:
    """One accepted ConversationRelay WebSocket: sends, and yields the frames it receives."""

    def __init__(self, websocket: WebSocket, limits: SocketLimits) -> None:
        self.websocket = websocket
        self.limits = limits
        self.last_activity = time.monotonic()
        self.close_reason: str | None = None

    async def send(self, text: str) -> None:
        await self.websocket.send_text(text)
        self.last_activity = time.monotonic()

    async def frames(self, session: Session) -> AsyncIterator[str | bytes]:
        """Frames as they arrive (text as ``str``, binary as ``bytes``) until the socket closes
        or a limit closes it."""
        limits = self.limits
        rate = limits.max_invalid_per_second
        capacity = rate * INVALID_WINDOW_SECONDS
        tokens, refilled, seen = float(capacity), time.monotonic(), session.invalid_frames
        while True:
            try:
                message = await self._receive()
            except TimeoutError:
                idle = time.monotonic() - self.last_activity
                log.warning(
                    "ws_closed_idle",
                    message=f"no frame received or sent for {idle:.0f} s "
                    f"(RELAY_WS_IDLE_SECONDS={limits.idle_seconds:g}): closing the socket",
                    idle_s=round(idle, 1),
                )
                await self._close(session, CLOSE_GOING_AWAY, "idle")
                return
            if message["type"] == "websocket.disconnect":
                session.close_code = message.get("code")
                if session.close_code == CLOSE_TOO_BIG:
                    self.close_reason = session.close_reason = "frame-too-large"
                    log.warning(
                        "ws_closed_frame_too_large",
                        message="a frame exceeded the server's WebSocket size limit "
                        f"({2 * limits.max_frame_bytes} bytes): the socket was closed (1009)",
                    )
                return
            self.last_activity = time.monotonic()
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes")
                if data is None:
                    continue
            size = frame_bytes(data, limits.max_frame_bytes)
            if size > limits.max_frame_bytes:
                log.warning(
                    "ws_closed_frame_too_large",
                    message=f"a frame of {size} bytes exceeds RELAY_WS_MAX_FRAME_BYTES="
                    f"{limits.max_frame_bytes}: closing the socket (1009)",
                    size=size,
                )
                await self._close(session, CLOSE_TOO_BIG, "frame-too-large")
                return
            yield data
            if rate and session.invalid_frames > seen:
                now = time.monotonic()
                tokens = min(capacity, tokens + (now - refilled) * rate)
                tokens -= session.invalid_frames - seen
                refilled, seen = now, session.invalid_frames
                if tokens < 0:
                    log.warning(
                        "ws_closed_invalid_frames",
                        message=f"invalid frames arrived faster than {rate} a second over "
                        f"{INVALID_WINDOW_SECONDS} s (RELAY_WS_MAX_INVALID_PER_SECOND): closing "
                        "the socket (1008)",
                        invalid_frames=session.invalid_frames,
                    )
                    await self._close(session, CLOSE_POLICY, "invalid-frames")
                    return

    async def _receive(self) -> Any:
        idle = self.limits.idle_seconds
        if not idle:
            return await self.websocket.receive()
        while True:
            remaining = self.last_activity + idle - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(remaining):
                    return await self.websocket.receive()
            except TimeoutError:
                continue  # something was sent meanwhile: wait out the rest

    async def _close(self, session: Session, code: int, reason: str) -> None:
        self.close_reason = session.close_reason = reason
        session.close_code = code
        if self.websocket.application_state is WebSocketState.CONNECTED:
            try:
                await self.websocket.close(code=code, reason=reason)
            except Exception as exc:  # already gone: nothing more to tell it
                log.info("ws_close_failed", error=repr(exc)[:200])
