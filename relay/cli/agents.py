"""``relay agents check``: the agent profiles, checked as ``relay serve`` checks them at start."""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli.common import settings_from


def add_parser(commands: Any) -> None:
    group = commands.add_parser(
        "agents", help="check the agent profiles as relay serve does at start"
    )
    sub = group.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser(
        "check",
        help="check every profile in RELAY_PROMPTS_DIR: values, tools, business tables",
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    """Every profile valid, every tool known, every business table readable: one line per agent
    and exit 0, or the first problem (the file and the field) and exit 2. Needs no model key,
    no database and no network."""
    from relay.web.app import check_agents  # the whole app: only this command pays for it

    settings = settings_from(args)
    agents = check_agents(settings)
    for name in sorted(agents.agents):
        agent = agents.agents[name]
        facts = [
            "default" if name == agents.default_name else "",
            f"numbers {', '.join(agent.numbers)}" if agent.numbers else "no numbers",
            f"{len(agent.tools)} tools",
            f"knowledge {agent.knowledge_collection}" if agent.knowledge_collection else "",
        ]
        print(f"ok  {name}  ({agent.source}): {'; '.join(f for f in facts if f)}")
    print(f"{len(agents.agents)} agent profile(s) in {settings.prompts_dir}: ok")
    return 0
