"""The ``relay`` command: serve, call, bench, knowledge, sessions, replay and more.

Each command group lives in its own module (``relay.cli.serve``, ``relay.cli.call``...) with an
``add_parser``; the shared helpers are in :mod:`relay.cli.common`. Only the command line and
``relay.web.app`` read settings.

A group's module is imported only when its command runs: most of them pull in the database,
the web app or the bench at import (about two seconds together), which ``relay --help`` and
every other command would pay for. ``relay --help`` lists each command from :data:`COMMANDS`,
its name and one-line help, without importing any group (tests/cli/test_cli_startup.py checks
that the list says what the groups themselves register).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from relay.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from relay.cli.common import Handler

__all__ = ["COMMANDS", "build_parser", "main"]

#: Each command group, in ``relay --help`` order, with the commands its ``add_parser`` adds
#: (in that order) and their one-line help.
COMMANDS: dict[str, dict[str, str]] = {
    "serve": {
        "serve": "run the service (webhooks and the ConversationRelay WebSocket)",
        "fake-llm": "run the scripted OpenAI-compatible streaming server",
    },
    "call": {"call": "talk to an agent from the terminal, as a caller would"},
    "bench": {"bench": "measure the latency relay adds and the calls one process holds"},
    "knowledge": {"knowledge": "load and search the agents' knowledge documents"},
    "sessions": {"sessions": "list, show, export and import recorded calls"},
    "replay": {"replay": "replay recorded calls against the current agent and show what changed"},
    "eval": {"eval": "test agents with scenarios played by a model caller (pass rates, JUnit)"},
    "business": {
        "demo-data": "fill the database with demo customers, cars, bookings and quotes",
        "remind": "phone customers to confirm their appointments (Twilio outbound calls)",
        "business": "business set-up: calendar feed URLs",
    },
    "agents": {"agents": "check the agent profiles as relay serve does at start"},
    "users": {"users": "operator console users (relay users add/list/remove)"},
    "voices": {"voices": "list and preview ElevenLabs voices for the agents"},
}

#: Without ``OPENAI_API_KEY`` (:meth:`relay.config.Settings.llm_api_key`), how to run each
#: command offline, with the scripted model (``relay fake-llm`` serves it under ``/v1``).
_NO_KEY = "OPENAI_API_KEY is not set"
_OFFLINE_HINTS: dict[str, str] = {
    "serve": "To try relay offline, start it with `relay serve --fake-llm` "
    "(the built-in scripted model).",
    "call": "To talk to the built-in scripted model instead, run `relay call --fake-llm`.",
    "replay": "To replay live against the scripted model, start `relay fake-llm --port 8081` "
    "and set OPENAI_BASE_URL=http://127.0.0.1:8081/v1.",
    "eval": "To run the scenarios against the scripted model, start `relay fake-llm --port 8081` "
    "and set OPENAI_BASE_URL=http://127.0.0.1:8081/v1.",
    "sessions": "`relay sessions analyze --no-model` works out outcomes and cost without a model.",
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(arguments)
    parser = build_parser(() if command is None else (command,))
    args = parser.parse_args(arguments)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a reader gone is caught, rather than at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as exc:
        print(f"relay: configuration error: {_with_hint(exc, command)}", file=sys.stderr)
        return 2
    except RelayError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``relay`` parser. The groups of the commands in ``load`` are imported and add their
    commands with every option; the others are added by name and help only, all that
    ``relay --help`` shows. ``None`` imports every group: the whole tree."""
    parser = argparse.ArgumentParser(
        prog="relay", description="A Twilio ConversationRelay phone agent."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    _subcommand_groups(commands, load)
    return parser


def _subcommand_groups(commands: Any, load: Collection[str] | None) -> None:
    """Commands whose modules register themselves, one module per command group."""
    for group, listed in COMMANDS.items():
        if load is None or any(name in listed for name in load):
            _add_group(group, commands)
        else:
            for name, help_text in listed.items():
                commands.add_parser(name, help=help_text)


#: Each group's module, imported only when one of its commands runs (most are heavy).
_MODULES = {
    "serve": "relay.cli.serve",
    "call": "relay.cli.call",
    "bench": "relay.testing.bench",
    "knowledge": "relay.cli.knowledge",
    "sessions": "relay.cli.sessions",
    "replay": "relay.cli.replay",
    "eval": "relay.cli.eval",
    "business": "relay.cli.business",
    "agents": "relay.cli.agents",
    "users": "relay.cli.users",
    "voices": "relay.cli.voices",
}


def _add_group(group: str, commands: Any) -> None:
    """Import one group's module and let it add its commands."""
    importlib.import_module(_MODULES[group]).add_parser(commands)


def _command_in(arguments: Sequence[str]) -> str | None:
    """The command ``arguments`` name: the first that is not an option, as argparse reads it
    (the top-level parser has no option that takes a value)."""
    return next((arg for arg in arguments if not arg.startswith("-")), None)


#: The exit status of a command whose reader went away (``| head``): a shell's for SIGPIPE.
BROKEN_PIPE = 128 + 13


def _reader_gone() -> int:
    """The output's reader closed the pipe (``relay sessions list | head -2``): stop quietly,
    as a command killed by SIGPIPE does. What is still buffered for stdout goes to /dev/null,
    or Python's own flush at exit would fail again, with a message (Python's documentation,
    "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


def _with_hint(exc: ConfigError, command: str | None) -> str:
    """The error, with how to run ``command`` offline when the missing setting is the LLM key."""
    message = str(exc)
    hint = _OFFLINE_HINTS.get(command or "")
    if hint is None or not message.startswith(_NO_KEY):
        return message
    return f"{message} {hint}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
