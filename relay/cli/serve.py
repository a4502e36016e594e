"""``relay serve`` (the service) and ``relay fake-llm`` (the scripted model, for trying relay)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

from relay.cli.common import check_listen, settings_from
from relay.testing import FakeLLMServer, ScriptedLLM, echo_reply, serve_fake_llm

#: The flags of ``relay serve`` that stand for a setting, and its variable.
SERVE_FLAGS = {"--host": "RELAY_HOST", "--port": "RELAY_PORT", "--workers": "RELAY_WORKERS"}


def add_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the service (webhooks and the ConversationRelay WebSocket)"
    )
    serve.add_argument("--host", help="interface to listen on (RELAY_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (RELAY_PORT, default 8080)")
    serve.add_argument(
        "--workers", type=int,
        help="worker processes (RELAY_WORKERS, default 1); more than one runs a Chroma server",
    )  # fmt: skip
    serve.add_argument(
        "--fake-llm", action="store_true",
        help="answer with the built-in scripted model instead of a real LLM (for trying relay offline)",
    )  # fmt: skip
    serve.set_defaults(handler=_serve)

    fake = commands.add_parser(
        "fake-llm",
        help="run the scripted OpenAI-compatible streaming server",
        description="The scripted OpenAI-compatible streaming model, under /v1: point "
        "OPENAI_BASE_URL at http://HOST:PORT/v1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fake.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    fake.add_argument("--port", type=int, default=8081, help="port (0: any free port)")
    fake.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds between streamed tokens"
    )
    fake.add_argument(
        "--first-token-delay", type=float, default=0.0, help="seconds before the first token"
    )
    fake.add_argument("--reply-tokens", type=int, default=20, help="tokens per reply")
    fake.set_defaults(handler=_fake_llm)


def _serve(args: argparse.Namespace) -> int:
    # Imported here, not above: the app pulls in the whole service (about a second), which
    # every other command would pay for at start. Not a cycle: relay.web imports no CLI.
    from relay.heap import limit_malloc_arenas
    from relay.web.app import create_app, preflight
    from relay.web.socket import uvicorn_ws_options

    limit_malloc_arenas()  # before any thread starts (relay.heap); workers do it themselves

    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for flag, name in SERVE_FLAGS.items():  # 0 is a value too (refused: RELAY_PORT, RELAY_WORKERS)
        value = getattr(args, flag.removeprefix("--"), None)
        if value is not None:
            overrides[name] = value
            flags[name] = flag
    if args.fake_llm:  # its address once it runs; the settings are checked before it starts
        overrides["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    settings = settings_from(args, flags, **overrides)
    preflight(settings)  # fail now, naming the variable or file, not inside uvicorn
    # A port in use (or a host that is not this machine's) is one line naming the setting,
    # before migrations and start-up, whose lines would otherwise bury uvicorn's.
    check_listen(settings.host, settings.port)
    # Before uvicorn (and its workers): a database that cannot be reached or migrated is then
    # one line naming DATABASE_URL, not a traceback inside uvicorn's start-up.
    asyncio.run(_migrate(settings.database))
    fake = None
    if args.fake_llm:
        fake = FakeLLMServer(ScriptedLLM(default=echo_reply))
        fake.__enter__()
        overrides["OPENAI_BASE_URL"] = fake.base_url
        settings = settings.model_copy(update={"openai_base_url": fake.base_url})
    try:
        options: dict[str, Any] = dict(
            host=settings.host,
            port=settings.port,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,  # the proxy's address in production
            **uvicorn_ws_options(settings),  # frame limit, no pings: relay.web.socket
            log_config=None,
            access_log=False,
        )
        if settings.workers > 1:  # migrations once, a Chroma server, N processes
            from relay.cli.workers import serve_workers

            return serve_workers(settings, overrides, options)
        uvicorn.run(create_app(settings), **options)
    finally:
        if fake is not None:
            fake.__exit__(None, None, None)
    return 0


async def _migrate(url: str) -> None:
    """Bring the database to the newest schema, once, under the migration lock."""
    from relay.storage.db import Database

    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.close()


def _fake_llm(args: argparse.Namespace) -> int:
    settings_from(args)  # logging as relay serve's: RELAY_LOG_LEVEL, RELAY_LOG_FORMAT
    check_listen(args.host, args.port, host_names="--host", port_names="--port")
    serve_fake_llm(
        args.host,
        args.port,
        token_delay=args.token_delay,
        first_token_delay=args.first_token_delay,
        reply_tokens=args.reply_tokens,
    )
    return 0
