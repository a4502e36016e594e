"""A flood of forged webhooks while calls run: does it delay the live calls' replies?

``python -m relay.testing.flood`` starts ``relay fake-llm`` and ``relay serve`` as child
processes (knowledge off, a fresh data directory), then runs the same calls twice: once alone,
once while 2,000 forged ``POST /twiml`` (a wrong ``X-Twilio-Signature``) arrive as fast as
``--flood-concurrency`` connections send them (from a third process). Each call is a real WebSocket speaking
ConversationRelay frames; a turn's latency is from its final prompt to the first text frame
and to the ``last: true`` frame. Prints the figures as JSON.

Forged requests are answered 403, and 429 once their source has used its burst
(``RELAY_RATE_LIMIT_BURST``); signed webhooks are never throttled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from relay.testing.simcall import SimulatedCall

AUTH_TOKEN = "flood-bench-auth-token-0123456789"
RELAY = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]
PROMPTS = [
    "Hi, I need to move an upright piano next week.",
    "It is going from Carlton to Brunswick, ground floor to ground floor.",
    "How much would that cost roughly?",
    "Great, and do you also tune pianos after the move?",
]


@dataclass
class Phase:
    """One run of the calls: turn latencies, and what the flood got back (if any)."""

    first_frame_ms: list[float] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    incomplete: int = 0
    flood_statuses: Counter[int] = field(default_factory=Counter)
    flood_seconds: float | None = None
    server: dict[str, float] | None = None  # the server's own prompt → first frame histogram

    def summary(self) -> dict[str, Any]:
        return {
            "turns": len(self.first_frame_ms),
            "incomplete_replies": self.incomplete,
            "first_frame_ms": _stats(self.first_frame_ms),
            "server_first_frame_ms": self.server,
            "reply_ms": _stats(self.reply_ms),
            "flood": {
                "requests": sum(self.flood_statuses.values()),
                "statuses": {str(k): v for k, v in sorted(self.flood_statuses.items())},
                "seconds": round(self.flood_seconds, 2) if self.flood_seconds else None,
                "per_second": round(sum(self.flood_statuses.values()) / self.flood_seconds)
                if self.flood_seconds
                else None,
            },
        }


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": round(statistics.median(ordered), 1), "p99": pct(0.99), "max": ordered[-1]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _servers(args: argparse.Namespace) -> AsyncIterator[str]:
    """``relay fake-llm`` and ``relay serve``; yields the relay's ``host:port``."""
    llm_port, relay_port = _free_port(), _free_port()
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="relay-flood-") as tmp:
        shutil.copytree(args.data, tmp, dirs_exist_ok=True)  # the business tables tools read
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_"))
        }
        env.update(
            RELAY_DATA_DIR=tmp, TWILIO_AUTH_TOKEN=AUTH_TOKEN, RELAY_KNOWLEDGE="false",
            OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1", RELAY_LOG_LEVEL="warning",
            RELAY_LOG_FORMAT="json",
        )  # fmt: skip
        env.pop("DATABASE_URL", None)
        if args.prompts:
            env["RELAY_PROMPTS_DIR"] = str(args.prompts)
        try:
            model = ["--token-delay", str(args.token_delay), "--first-token-delay",
                     str(args.first_token_delay), "--reply-tokens", str(args.reply_tokens)]  # fmt: skip
            children.append(_spawn(["fake-llm", "--port", str(llm_port), *model], env))
            await _healthy(f"http://127.0.0.1:{llm_port}/healthz", children[-1])
            serve = ["serve", "--host", "127.0.0.1", "--port", str(relay_port)]
            children.append(_spawn(serve, env))
            await _healthy(f"http://127.0.0.1:{relay_port}/readyz", children[-1])
            yield f"127.0.0.1:{relay_port}"
        finally:
            for child in reversed(children):
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(30)
                if child.poll() is None:
                    child.kill()
                    child.wait()


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*RELAY, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _one_call(host: str, turns: int, pause: float, phase: Phase) -> None:
    call = SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN)
    await call.connect()
    try:
        for turn in range(turns):
            sent = time.perf_counter()
            reply = await call.say(PROMPTS[turn % len(PROMPTS)], timeout=30.0)
            done = reply.frames[-1] if reply.frames else None
            if reply.first_frame_s is None or done is None or not done.get("last"):
                phase.incomplete += 1
                continue
            phase.first_frame_ms.append(reply.first_frame_s * 1000)
            phase.reply_ms.append((done["_t"] - sent) * 1000)
            await asyncio.sleep(pause)
    finally:
        await call.close()


async def _flood(host: str, count: int, concurrency: int, phase: Phase) -> None:
    """``count`` forged webhooks over ``concurrency`` keep-alive connections, written as raw
    HTTP/1.1 so that the sender is not the bottleneck (an attacker's script would not be)."""
    form = (
        "AccountSid=AC" + "0" * 32 + "&From=%2B61400000000&To=%2B61390001234"
        "&CallStatus=ringing&Direction=inbound&ApiVersion=2010-04-01&CallSid=CAforged{:024d}"
    )
    numbers = iter(range(count))
    address, port = host.rsplit(":", 1)

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(address, int(port))
        try:
            for number in numbers:
                body = form.format(number).encode()
                writer.write(
                    b"POST /twiml HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"X-Twilio-Signature: Zm9yZ2VkIHNpZ25hdHVyZQ==\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                phase.flood_statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            phase.flood_statuses[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    phase.flood_seconds = time.perf_counter() - started


async def _flood_process(host: str, args: argparse.Namespace, phase: Phase) -> None:
    """The flood from its own process, so that it does not slow down the calls' client (whose
    event loop time-stamps the frames) any more than it slows down the server."""
    code = (
        "import asyncio, json, sys; from relay.testing import flood; p = flood.Phase(); "
        f"asyncio.run(flood._flood({host!r}, {args.flood}, {args.flood_concurrency}, p)); "
        "json.dump({'statuses': dict(p.flood_statuses), 'seconds': p.flood_seconds}, sys.stdout)"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    result = orjson.loads(out)
    phase.flood_statuses.update({int(k): v for k, v in result["statuses"].items()})
    phase.flood_seconds = result["seconds"]


async def _first_frame_histogram(host: str) -> dict[float, float]:
    """The server's ``relay_first_frame_seconds`` buckets (cumulative counts by upper bound)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{host}/metrics")).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "relay_first_frame_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    buckets[-1.0] = buckets.get(-1.0, 0.0) + sample.value
    return buckets


def _server_figures(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Mean and bucket-bound p50/p99 of what the server measured during one phase."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return {}

    def bound(q: float) -> float:
        return next(b for b in sorted(k for k in delta if k >= 0) if delta[b] >= q * total)

    return {
        "mean": round(delta.get(-1.0, 0.0) / total * 1000, 2),
        "p50_at_most": bound(0.5) * 1000,
        "p99_at_most": bound(0.99) * 1000,
    }


async def _phase(host: str, args: argparse.Namespace, flood: bool) -> Phase:
    phase = Phase()
    before = await _first_frame_histogram(host)
    calls = [_one_call(host, args.turns, args.pause, phase) for _ in range(args.calls)]
    if flood:
        await asyncio.gather(*calls, _flood_process(host, args, phase))
    else:
        await asyncio.gather(*calls)
    phase.server = _server_figures(before, await _first_frame_histogram(host))
    return phase


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with _servers(args) as host:
        await _phase(host, args, flood=False)  # warm-up: connections, caches, the database file
        quiet = await _phase(host, args, flood=False)
        flooded = await _phase(host, args, flood=True)
    return {
        "setup": {
            "calls": args.calls, "turns_per_call": args.turns, "pause_s": args.pause,
            "forged_requests": args.flood, "flood_concurrency": args.flood_concurrency,
            "model": {"first_token_delay_s": args.first_token_delay,
                      "token_delay_s": args.token_delay, "reply_tokens": args.reply_tokens},
            "cpus": os.cpu_count(),
        },
        "without_flood": quiet.summary(),
        "with_flood": flooded.summary(),
    }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m relay.testing.flood", description=__doc__)
    p.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    p.add_argument("--turns", type=int, default=8, help="turns per call (default 8)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between a call's turns")
    p.add_argument("--flood", type=int, default=2000, help="forged /twiml requests (2000)")
    p.add_argument("--flood-concurrency", type=int, default=50, help="connections sending them")
    p.add_argument("--first-token-delay", type=float, default=0.05)
    p.add_argument("--token-delay", type=float, default=0.01)
    p.add_argument("--reply-tokens", type=int, default=10)
    p.add_argument("--prompts", type=Path, help="agent profiles directory (default: prompts/)")
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="business tables to copy (default: data/)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
