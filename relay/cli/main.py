"""The ``relay`` command: serve, call, bench, knowledge, sessions, replay and more.

Each command group lives in its own module (``relay.cli.serve``, ``relay.cli.call``...) with an
``add_parser``; the shared helpers are in :mod:`relay.cli.common`. Only the command line and
``relay.web.app`` read settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from relay.cli import business, call, knowledge, replay, serve, sessions, users, voices
from relay.cli import eval as eval_cli
from relay.cli.common import Handler
from relay.errors import ConfigError, RelayError
from relay.testing import bench

__all__ = ["build_parser", "main"]


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

    _subcommand_groups(commands)
    return parser


def _subcommand_groups(commands: Any) -> None:
    """Commands whose modules register themselves, one module per command group."""
    groups = (serve, call, bench, knowledge, sessions, replay, eval_cli, business, users, voices)
    for module in groups:
        module.add_parser(commands)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
