"""The ConversationRelay WebSocket's transport rules: sizes, abuse and idle sockets.

The session (:mod:`relay.call.session`) records, logs and ignores every frame it cannot use; a
call goes on whatever Twilio (or anyone holding a valid signature) sends. Only abuse beyond
these stated limits closes the socket, each with one clear log line:

* a frame larger than ``RELAY_WS_MAX_FRAME_BYTES`` (default 4 MiB): closed with 1009. Frames up
  to that size reach the session, which refuses anything over 64 KiB as an invalid frame.
  uvicorn's own limit is set to twice ours (see :func:`uvicorn_ws_options`), so a frame between
  the two is refused here with our log line; a larger one is cut off by uvicorn (also 1009,
  logged here when the disconnect arrives) before it is buffered whole. Either way the refused
  frame is recorded as a ``frame_in_invalid`` event (:func:`too_large_record`) and the call's
  outcome is ``frame-too-large`` (unless it had already ended otherwise);
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
import re
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
#: How a call ends when relay closed its socket for a frame over the limit.
OUTCOME_TOO_LARGE = "frame-too-large"
#: Invalid frames are averaged over this long (the token bucket holds this many seconds' worth).
INVALID_WINDOW_SECONDS = 60


class Session(Protocol):
    """What the socket needs of a call session."""

    close_code: int | None
    close_reason: str | None
    invalid_frames: int
    outcome: str | None

    def event(self, kind: str, data: dict[str, Any], t: float | None = None) -> None: ...


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


#: The reason websockets gives when it refuses a frame (``PayloadTooBig``): "frame with 17825800
#: bytes exceeds limit of 16777216 bytes" (no size when a compressed frame inflates beyond it).
_TOO_BIG = re.compile(
    r"(?:with (?P<size>\d+) bytes )?(?:after reading (?P<read>\d+) bytes )?"
    r"exceeds limit of (?P<limit>\d+) bytes"
)


def too_large_record(
    data: str | bytes | None, *, limit: int, reason: str | None = None
) -> dict[str, Any]:
    """The ``frame_in_invalid`` record of a frame refused for its size: like any invalid frame's
    (:func:`relay.protocol.frames.record_of`) when relay refused it itself (``data``), with the
    ``limit`` and the close code. When uvicorn refused it (``data`` is None) relay never saw the
    frame: ``raw`` is empty, ``size`` is the frame's length as the protocol library reported it
    in the close ``reason`` (absent when it did not say), and ``error`` is that reason."""
    if data is not None:
        # Here, not at the top: ``relay serve``'s parent process imports this module for
        # :func:`uvicorn_ws_options` and should not pay for the frames' models (pydantic).
        from relay.protocol import frames as protocol

        record = protocol.record_of(data)
        record["error"] = (
            f"frame of {record['size']} bytes exceeds RELAY_WS_MAX_FRAME_BYTES={limit}: "
            f"the socket was closed ({CLOSE_TOO_BIG})"
        )
        record["limit"] = limit
    else:
        record = {"raw": "", "truncated": True, "limit": limit}
        match = _TOO_BIG.search(reason or "")
        if match is not None:
            if match["size"] is not None:
                record["size"] = int(match["size"]) + int(match["read"] or 0)
            record["limit"] = int(match["limit"])
        record["error"] = (
            f"the server's WebSocket limit refused the frame ({reason or 'no reason given'}): "
            f"the socket was closed ({CLOSE_TOO_BIG})"
        )
    record["close_code"] = CLOSE_TOO_BIG
    return record


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
                    reason = message.get("reason")
                    record = too_large_record(None, limit=2 * limits.max_frame_bytes, reason=reason)
                    log.warning(
                        "ws_closed_frame_too_large",
                        message="a frame exceeded the server's WebSocket size limit "
                        f"({record['limit']} bytes): the socket was closed (1009)",
                        reason=reason,
                    )
                    self._refused(session, record)
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
                self._refused(session, too_large_record(data, limit=limits.max_frame_bytes))
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

    @staticmethod
    def _refused(session: Session, record: dict[str, Any]) -> None:
        """Record a frame refused for its size, and end the call for that reason."""
        session.invalid_frames += 1
        session.event("frame_in_invalid", record)
        if session.outcome is None:
            session.outcome = OUTCOME_TOO_LARGE

    async def _close(self, session: Session, code: int, reason: str) -> None:
        self.close_reason = session.close_reason = reason
        session.close_code = code
        if self.websocket.application_state is WebSocketState.CONNECTED:
            try:
                await self.websocket.close(code=code, reason=reason)
            except Exception as exc:  # already gone: nothing more to tell it
                log.info("ws_close_failed", error=repr(exc)[:200])
