"""Fuzz a running relay over real WebSockets: hostile frames between prompts, no call may be lost.

``python -m relay.testing.fuzzcall ws://127.0.0.1:8080/ws --calls 4 --frames 25000`` opens
``--calls`` concurrent calls; each sends ``--frames`` random frames (random bytes, nesting up to
3,000 deep, text frames up to 1.1 MB, random JSON and Twilio-like frames with wrong types),
and after every ``--every`` frames a prompt whose answer must arrive. Frames that would
legitimately change the call (a valid prompt, key, barge-in or second setup) are left out.
Prints one JSON summary line; exits 1 if a call was lost (no answer, or closed by the server).
Needs no hypothesis (plain ``random``, seeded), so it runs against any deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from relay.errors import ProtocolError
from relay.protocol import frames as protocol
from relay.testing.simcall import SimulatedCall

_KEYS = [
    "type",
    "voicePrompt",
    "digit",
    "name",
    "value",
    "last",
    "callSid",
    "customParameters",
    "ts",
]
_TYPES = ["setup", "prompt", "dtmf", "interrupt", "error", "info", "configUpdated", "mystery", ""]
_ACTING = (protocol.Prompt, protocol.Dtmf, protocol.Interrupt, protocol.Setup)


class FrameFuzzer:
    """Random hostile frames from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _json(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 4 or roll < 0.4:
            return rng.choice([None, True, 1, -1.5, 2**62, "x" * rng.randint(0, 50), "é\u2028"])
        if roll < 0.7:
            return [self._json(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(_KEYS): self._json(depth + 1) for _ in range(rng.randint(0, 4))}

    def raw(self) -> str | bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return rng.randbytes(rng.randint(0, 200))
        if roll < 0.2:
            depth = rng.randint(30, 3000)
            return '{"type":"info","value":' + "[" * depth + "]" * depth + "}"
        if roll < 0.22:
            return '{"type":"prompt","voicePrompt":"' + "a" * rng.randint(60_000, 1_100_000) + '"}'
        if roll < 0.5:
            return orjson.dumps(self._json()).decode()
        frame: dict[str, Any] = {"type": rng.choice(_TYPES)}
        for _ in range(rng.randint(0, 4)):
            frame[rng.choice(_KEYS)] = self._json(1)
        return orjson.dumps(frame).decode()

    def harmless(self) -> str | bytes:
        """A frame that must not change the call."""
        while True:
            raw = self.raw()
            try:
                frame = protocol.parse_inbound(raw)
            except ProtocolError:
                return raw
            if not isinstance(frame, _ACTING):
                return raw


async def fuzz_call(
    url: str, frames: int, every: int, seed: int, *, auth_token: str | None = None
) -> dict[str, Any]:
    fuzzer = FrameFuzzer(seed)
    call = SimulatedCall(url, auth_token=auth_token)
    await call.connect()
    sent = answered = 0
    lost: str | None = None
    try:
        while sent < frames and lost is None:
            for _ in range(min(every, frames - sent)):
                raw = fuzzer.harmless()
                await (call.send(raw) if isinstance(raw, str) else call._ws.send(raw))
                sent += 1
            reply = await call.say("Hello?", 30.0)
            if not reply.text:
                lost = f"no answer after {sent} frames"
            else:
                answered += 1
    except Exception as exc:  # the socket closed under us
        lost = f"{type(exc).__name__} after {sent} frames: {exc}"
    finally:
        await call.close()
    code = call._ws.close_code if call._ws is not None else None
    if lost is None and code not in (1000, None):
        lost = f"closed by the server with {code}"
    return {"call_sid": call.call_sid, "frames": sent, "answered": answered, "lost": lost}


async def run(
    url: str, calls: int, frames: int, every: int, seed: int, *, auth_token: str | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(fuzz_call(url, frames, every, seed + n, auth_token=auth_token) for n in range(calls))
    )
    return {
        "calls": calls,
        "frames": sum(r["frames"] for r in results),
        "prompts_answered": sum(r["answered"] for r in results),
        "lost": [r for r in results if r["lost"]],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.testing.fuzzcall")
    parser.add_argument("url", help="the relay's WebSocket URL, e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--frames", type=int, default=25_000, help="fuzzed frames per call")
    parser.add_argument("--every", type=int, default=500, help="a prompt after this many frames")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="sign the upgrades as Twilio would (default: TWILIO_AUTH_TOKEN)",
    )
    args = parser.parse_args(argv)
    summary = asyncio.run(
        run(args.url, args.calls, args.frames, args.every, args.seed, auth_token=args.auth_token)
    )
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 1 if summary["lost"] else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
