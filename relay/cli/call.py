"""``relay call``: talk to an agent from the terminal, as a caller would.

The Twilio side of the call is :class:`relay.testing.simcall.SimulatedCall`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import orjson
import websockets

from relay.agents import AgentRegistry
from relay.cli.common import settings_from
from relay.errors import ConfigError
from relay.testing import FakeLLMServer, ScriptedLLM, echo_reply
from relay.testing.simcall import SimulatedCall, serve_in_process

__all__ = ["add_parser", "run_terminal_call", "websocket_url"]


def add_parser(commands: Any) -> None:
    call = commands.add_parser("call", help="talk to an agent from the terminal, as a caller would")
    call.add_argument(
        "--url",
        help="a running server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws (default: run the app in-process)",
    )
    call.add_argument("--from", dest="from_", default="+61412345678", help="the caller's number")
    call.add_argument(
        "--to",
        default=None,
        help="the number called (picks the agent); default: the default agent's first number",
    )
    call.add_argument("--agent", help="the agent to talk to (overrides --to)")
    call.add_argument(
        "--fake-llm", action="store_true", help="in-process: use the built-in scripted model"
    )
    call.set_defaults(handler=_call)


def _call(args: argparse.Namespace) -> int:
    return asyncio.run(run_terminal_call(args))


async def run_terminal_call(args: argparse.Namespace) -> int:
    """``relay call``: type as the caller; the agent's tokens print as they stream."""
    overrides: dict[str, Any] = {}
    fake = None
    if args.url is None and args.fake_llm:
        fake = FakeLLMServer(ScriptedLLM(default=echo_reply))
        fake.__enter__()
        overrides["OPENAI_BASE_URL"] = fake.base_url
    try:
        settings = settings_from(args, RELAY_LOG_LEVEL="warning", **overrides)
        if args.url:
            return await _converse(args, settings, websocket_url(args.url))
        from relay.web.app import create_app, preflight

        preflight(settings)
        app = create_app(settings)
        async with serve_in_process(app) as base:
            await _knowledge_ready(app.state.runtime)
            return await _converse(
                args, settings, base.replace("http://", "ws://") + "/ws", http_base=base
            )
    finally:
        if fake is not None:
            fake.__exit__(None, None, None)


#: The WebSocket scheme of each HTTP one: ``--url http://host:8080/ws`` is taken as ``ws://``.
WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


def websocket_url(url: str) -> str:
    """``--url`` as a WebSocket URL: ``ws://`` or ``wss://`` as given; ``http://`` and
    ``https://`` turned into them, saying so; anything else a ConfigError."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("ws", "wss"):
        return url
    if sep and scheme.lower() in WEBSOCKET_SCHEMES:
        converted = f"{WEBSOCKET_SCHEMES[scheme.lower()]}://{rest}"
        print(f"relay call: {url} is not a WebSocket URL; using {converted}", file=sys.stderr)
        return converted
    raise ConfigError(
        f"--url {url}: use ws:// or wss:// (a running server's WebSocket, e.g. "
        "ws://127.0.0.1:8080/ws)"
    )


def _refusal(exc: Exception) -> str:
    """What an HTTP status refusing the WebSocket handshake means at a relay server."""
    if not isinstance(exc, websockets.InvalidStatus):
        return ""
    status = exc.response.status_code
    if status == 403:
        return (
            " (refused: the Twilio signature did not check out, so this side's "
            "TWILIO_AUTH_TOKEN and RELAY_PUBLIC_URL must be the server's; or nothing takes a "
            "WebSocket at this path: relay's is /ws)"
        )
    if status == 404:
        return " (nothing is served at this path: relay's WebSocket is /ws)"
    return ""


async def _knowledge_ready(runtime: Any) -> None:
    """Wait for the app's knowledge warm-up, so that the first question is grounded; say so
    when it takes a while (a first start loads the shipped documents)."""
    waiting = asyncio.ensure_future(runtime.knowledge_ready())
    done, _ = await asyncio.wait({waiting}, timeout=1.0)
    if not done:
        print("Loading the knowledge base (on a first start, the shipped documents too)...",
              file=sys.stderr, flush=True)  # fmt: skip
        await waiting


async def _converse(
    args: argparse.Namespace, settings: Any, url: str, http_base: str | None = None
) -> int:
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    agent = agents.get(args.agent) if args.agent else agents.for_number(args.to)
    to = args.to or (agent.numbers[0] if agent.numbers else "+10000000000")
    params = {"agent": agent.name} if args.agent else {}
    signed = None
    if settings.public_url:
        signed = "wss://" + settings.public_url.split("://", 1)[1] + "/ws"
    call = SimulatedCall(
        url,
        from_=args.from_,
        to=to,
        auth_token=settings.twilio_auth_token,
        signed_url=signed,
        custom_parameters=params,
    )
    out = sys.stdout
    try:
        await call.connect()
    except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
        print(f"relay call: cannot connect to {url}: {exc}{_refusal(exc)}", file=sys.stderr)
        return 1
    out.write(
        f"Connected to {agent.business_name} ({agent.name}) as {args.from_}. Commands: /interrupt, /dtmf N, /quit\n"
    )
    out.write(f"agent> {agent.welcome_greeting}\n")
    heard: list[str] = []
    speaking = asyncio.Event()
    ended = asyncio.Event()
    replied = asyncio.Event()  # the agent finished its latest reply (or ended the call)
    # Typed at a terminal, a line may barge in at any time; piped in (a script), each line
    # waits for the previous reply, as a caller would.
    scripted = not sys.stdin.isatty()

    async def printer() -> None:
        while True:
            frame = await call.next_frame(timeout=3600)
            if frame is None:
                out.write("\n[the call was closed]\n")
                ended.set()
                return
            kind = frame.get("type")
            if kind == "text":
                if not speaking.is_set():
                    out.write("agent> ")
                    speaking.set()
                heard.append(frame.get("token", ""))
                out.write(frame.get("token", ""))
                if frame.get("last"):
                    out.write("\n")
                    speaking.clear()
                    heard.clear()
                    replied.set()
                    # Twilio would report the end of playback with speaker events.
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await call.info("agentSpeaking", "off")
            elif kind == "end":
                out.write(f"\n[end] handoffData={frame.get('handoffData')}\n")
                ended.set()
                replied.set()
            else:
                out.write(
                    f"\n[{kind}] {orjson.dumps({k: v for k, v in frame.items() if k != '_t'}).decode()}\n"
                )
            out.flush()

    printing = asyncio.create_task(printer())
    loop = asyncio.get_running_loop()
    try:
        while not ended.is_set():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.rstrip("\n")
            if line in ("/quit", "/q"):
                break
            if line.startswith("/interrupt"):
                await call.interrupt("".join(heard))
                out.write("[interrupted]\n")
            elif line.startswith("/dtmf"):
                parts = line.split(maxsplit=1)
                for digit in parts[1].strip() if len(parts) > 1 else "":
                    await call.dtmf(digit)
            elif line.strip():
                replied.clear()
                await call.prompt(line)
                if scripted:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(replied.wait(), 60)
    finally:
        await call.close()
        printing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printing
    return 0
