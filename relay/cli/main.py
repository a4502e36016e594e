"""The ``relay`` command: serve, call, bench, knowledge, sessions, replay and more.

Only this module and ``relay.web.app`` read settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from relay.config import Settings, load_settings
from relay.errors import ConfigError, RelayError

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="A Twilio ConversationRelay phone agent."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the service (webhooks and the ConversationRelay WebSocket)"
    )
    serve.add_argument("--host", help="interface to listen on (RELAY_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (RELAY_PORT, default 8080)")
    serve.add_argument(
        "--fake-llm", action="store_true",
        help="answer with the built-in scripted model instead of a real LLM (for trying relay offline)",
    )  # fmt: skip
    serve.set_defaults(handler=_serve)

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

    fake = commands.add_parser(
        "fake-llm", help="run the scripted OpenAI-compatible streaming server"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8081)
    fake.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds between streamed tokens"
    )
    fake.add_argument(
        "--first-token-delay", type=float, default=0.0, help="seconds before the first token"
    )
    fake.add_argument("--reply-tokens", type=int, default=20, help="tokens per reply")
    fake.set_defaults(handler=_fake_llm)

    from relay.testing import bench

    bench.add_parser(commands)

    _subcommand_groups(commands)
    return parser


def _subcommand_groups(commands: Any) -> None:
    """Commands whose modules register themselves (knowledge, sessions, replay, business)."""
    from relay.cli import business as business_cli
    from relay.cli import knowledge as knowledge_cli
    from relay.cli import sessions as sessions_cli
    from relay.replay import runner as replay

    for module in (knowledge_cli, sessions_cli, replay, business_cli):
        module.add_parser(commands)


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, with command-line flags on top; logging configured."""
    from relay import logging as relay_logging

    settings = load_settings(**overrides)
    relay_logging.configure(settings.log_level, settings.log_format)
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from relay.web.app import create_app, preflight

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["RELAY_HOST"] = args.host
    if args.port:
        overrides["RELAY_PORT"] = args.port
    fake = None
    if args.fake_llm:
        from relay.testing import FakeLLMServer, ScriptedLLM, echo_reply

        fake = FakeLLMServer(ScriptedLLM(default=echo_reply))
        fake.__enter__()
        overrides["OPENAI_BASE_URL"] = fake.base_url
    try:
        settings = settings_from(args, **overrides)
        preflight(settings)  # fail now, naming the variable or file, not inside uvicorn
        app = create_app(settings)
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            proxy_headers=True,
            forwarded_allow_ips="*",
            ws_max_size=256 * 1024,
            ws_ping_interval=None,  # Twilio needs no keep-alive (notes, pitfall 8)
            log_config=None,
            access_log=False,
        )
    finally:
        if fake is not None:
            fake.__exit__(None, None, None)
    return 0


def _fake_llm(args: argparse.Namespace) -> int:
    from relay.testing import serve_fake_llm

    serve_fake_llm(
        args.host,
        args.port,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        reply_tokens=args.reply_tokens,
    )
    return 0


def _call(args: argparse.Namespace) -> int:
    from relay.cli.call import run_terminal_call

    return asyncio.run(run_terminal_call(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
