"""``relay --help`` stays light: a command group's module is imported only when its command runs.

Before, ``relay.cli.main`` imported every group at module level, and with them the bench, the
web app (through ``relay.eval.runner``), the calendar feed, the database and ElevenLabs: about
two seconds that ``relay --help`` and every command paid. These tests look at what a fresh
interpreter has imported, not at the clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.main import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]

#: Heavy modules that ``import relay.cli.main`` used to pull in (``python -X importtime``).
HEAVY = (
    "relay.services.calendar_feed",  # through relay.cli.business
    "relay.eval.runner",  # through relay.cli.eval; it imports the whole web app
    "relay.web.app",
    "relay.testing.bench",
    "relay.storage.db",
    "sqlalchemy.ext.asyncio",
    "alembic",
    "aiohttp",
    "elevenlabs",
    "icalendar",
    "twilio",
    "uvicorn",
    "knowledge",
    "pydantic_settings",
)

#: Run ``relay`` with the arguments given (none: only import the parser's module), then print
#: the modules the interpreter has imported, as the last line of standard output.
PROBE = """
import contextlib, json, sys
from relay.cli.main import main
if len(sys.argv) > 1:
    with contextlib.suppress(SystemExit):
        main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


def imported_by(*args: str) -> tuple[set[str], str]:
    """The modules a fresh interpreter has imported after ``relay ARGS``, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO,
        timeout=120, check=True,
    )  # fmt: skip
    printed, _, modules = done.stdout.rstrip("\n").rpartition("\n")
    return set(json.loads(modules)), printed


@pytest.mark.parametrize("args", [(), ("--help",)], ids=["import", "help"])
def test_the_parser_and_relay_help_import_no_command_group(args: tuple[str, ...]) -> None:
    modules, printed = imported_by(*args)

    assert sorted(m for m in HEAVY if m in modules) == []
    groups = {m for m in modules if m.startswith("relay.cli.")} - {"relay.cli.main"}
    assert groups == set()
    if args:
        assert printed.startswith("usage: relay [-h] COMMAND ...")


@pytest.mark.parametrize(
    ("args", "group", "not_yet"),
    [
        (
            ("replay", "--help"),
            "relay.cli.replay",
            ("relay.replay.runner", "relay.web.app", "relay.storage.db", "relay.testing.bench"),
        ),
        (
            ("eval", "--help"),
            "relay.cli.eval",
            ("relay.eval.runner", "relay.web.app", "relay.storage.db", "relay.testing.bench"),
        ),
        (
            ("demo-data", "--help"),
            "relay.cli.business",
            ("relay.services.calendar_feed", "relay.web.app", "relay.testing.bench"),
        ),
    ],
    ids=["replay", "eval", "demo-data"],
)
def test_a_command_imports_its_own_group_and_its_handlers_import_the_rest(
    args: tuple[str, ...], group: str, not_yet: tuple[str, ...]
) -> None:
    modules, printed = imported_by(*args)

    assert group in modules
    assert printed.startswith(f"usage: relay {args[0]} ")
    assert sorted(m for m in not_yet if m in modules) == []
    others = {f"relay.cli.{name}" for name in ("serve", "call", "knowledge", "users", "voices")}
    assert sorted(others & modules) == []


def test_relay_help_lists_exactly_what_the_groups_register() -> None:
    whole = build_parser().format_help()

    assert build_parser(()).format_help() == whole
    for group, commands in COMMANDS.items():
        for name in commands:
            assert build_parser((name,)).format_help() == whole, (group, name)


def test_a_command_parses_with_its_group_loaded_alone() -> None:
    args = build_parser(("fake-llm",)).parse_args(["fake-llm"])

    assert args.port == 8081  # the port the replay and eval hints name (test_main.py)
    assert args.handler.__module__ == "relay.cli.serve"


def test_the_serve_parents_socket_options_import_no_frame_models() -> None:
    """``relay serve --workers N``'s parent imports ``relay.web.socket`` for uvicorn's WebSocket
    options, and nothing of the call path. When that module imported the frames' models at
    its top (7 December), the workers' connect p99 in the 1,000-call profile went from
    65 to 75 ms to 160 to 211 ms (seven runs each way; README, Benchmarks)."""
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys; import relay.web.socket; "
         "print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    modules = set(json.loads(done.stdout))

    assert "relay.protocol.frames" not in modules
