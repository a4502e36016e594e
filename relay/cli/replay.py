"""``relay replay``: the command line of :mod:`relay.replay` (see there for what it does)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from relay.cli.common import check_listen, settings_from

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "replay",
        help="replay recorded calls against the current agent and show what changed",
        description="Replay recorded calls (files, directories of *.jsonl, or CallSids from the database) "
        "and compare what the agent does now with what it did then. Exit code 1 on a regression.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="FILE|DIR|CALL",
        help="recording files, directories of them, or CallSids",
    )
    parser.add_argument(
        "--mode",
        choices=["cassette", "live"],
        default="cassette",
        help="cassette: recorded LLM answers (default); live: the configured LLM",
    )
    parser.add_argument(
        "--fast", action="store_true", help="do not keep the caller's recorded pauses"
    )
    parser.add_argument(
        "--url",
        help="replay against a running server's WebSocket, e.g. ws://127.0.0.1:8080/ws (default: in-process)",
    )
    parser.add_argument(
        "--llm-port",
        type=int,
        default=None,
        help="with --url in cassette mode: port of the recorded-LLM server (default 8089)",
    )
    parser.add_argument(
        "--llm-host",
        default="127.0.0.1",
        help="with --url in cassette mode: interface of the recorded-LLM server",
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the agent at each step (default 10 cassette, 30 live); a step "
        "held up by the agent's caller-silence timer waits that timer as well",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="REGEX",
        help="text to ignore when comparing (random ids...); repeatable",
    )
    parser.add_argument(
        "--live-retrieval",
        action="store_true",
        help="cassette mode: query the knowledge store instead of replaying the recorded passages",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="in-process: write what the server recorded during each replay here",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every recording's listing, and the service's warnings",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only failures and the summary line"
    )
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    code: int = asyncio.run(_main(args))
    return code


async def _main(args: argparse.Namespace) -> int:
    # Imported here, not above: the runner loads the whole app (about a second), which every
    # other command would pay for at start. Not a cycle: relay.replay imports no CLI.
    from relay.replay.runner import DEFAULT_LLM_PORT, Options, junit, load_targets, run_replays

    settings = settings_from(args) if args.verbose else settings_from(args, RELAY_LOG_LEVEL="error")
    _check_paths(args.targets)
    llm_port = args.llm_port or DEFAULT_LLM_PORT
    if args.url is not None:
        if args.mode == "cassette":  # a port in use: one line, not uvicorn's inside a task
            check_listen(args.llm_host, llm_port, host_names="--llm-host", port_names="--llm-port")
        if not args.quiet:
            print(
                "relay replay: over --url the server uses its own clock (an in-process replay "
                "pins it to the recorded call's start): tools whose answers depend on the date "
                "(free slots, opening hours) may answer differently.",
                file=sys.stderr,
            )
    options = Options(
        mode=args.mode, fast=args.fast, url=args.url, timeout=args.timeout, ignore=list(args.ignore),
        llm_host=args.llm_host, llm_port=llm_port, live_retrieval=args.live_retrieval, save=args.save,
    )  # fmt: skip
    reports = await run_replays(
        await load_targets(args.targets, settings),
        settings,
        options,
        out=sys.stdout,
        verbose=args.verbose,
        quiet=args.quiet,
    )
    if args.junit is not None:
        args.junit.write_bytes(junit(reports, sum(r.seconds for r in reports)))
    return 1 if any(r.failed for r in reports) else 0


def _check_paths(targets: list[str]) -> None:
    """A target that looks like a path (a ``/`` in it, or ending in ``.jsonl``) but names
    nothing is a file not found, not a CallSid the database lacks."""
    from relay.recordings.format import RecordingError

    for target in targets:
        if ("/" in target or target.endswith(".jsonl")) and not Path(target).exists():
            raise RecordingError(f"cannot read {target}: No such file or directory")
