"""``relay voices``: choose an agent's ElevenLabs voice (``ELEVENLABS_API_KEY``).

``relay voices list`` prints the account's voices; ``relay voices preview VOICE "text" -o
sample.mp3`` saves what a voice sounds like (VOICE: an id, a Twilio voice string such as
``UgBBYS2sOqTuMpoF3BR0-flash_v2_5-1.0_0.8_0.8`` with its model and tuning, or a name);
``relay voices check`` asks ElevenLabs about every agent's voice, as ``relay serve`` does at
start-up when the key is set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from relay.agents import AgentRegistry
from relay.cli.common import settings_from
from relay.errors import ConfigError
from relay.services.voices import Voices, agent_voices, check_agent_voices


def add_parser(commands: Any) -> None:
    group = commands.add_parser("voices", help="list and preview ElevenLabs voices for the agents")
    sub = group.add_subparsers(title="voices commands", metavar="COMMAND")

    lst = sub.add_parser("list", help="the ElevenLabs account's voices")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(handler=_list)

    preview = sub.add_parser("preview", help="save a sample of a voice reading some text")
    preview.add_argument("voice", help="a voice id, a Twilio voice string, or a voice name")
    preview.add_argument("text", help="what the voice should say")
    preview.add_argument(
        "-o", "--output", type=Path, default=Path("sample.mp3"), help="file to write (sample.mp3)"
    )
    preview.add_argument(
        "--format",
        default="mp3_44100_128",
        help="ElevenLabs output format, e.g. mp3_44100_128 or ulaw_8000 (phone quality)",
    )
    preview.set_defaults(handler=_preview)

    check = sub.add_parser("check", help="check that every agent's ElevenLabs voice exists")
    check.set_defaults(handler=_check)

    group.set_defaults(handler=lambda args: (group.print_help(), 2)[1])


def _voices(args: argparse.Namespace) -> Voices:
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    if not settings.elevenlabs_api_key:
        raise ConfigError("ELEVENLABS_API_KEY is not set (the account whose voices to use)")
    return Voices(settings.elevenlabs_api_key)


def _list(args: argparse.Namespace) -> int:
    with _voices(args) as voices:
        found = voices.list()
    used = _used_by(args)
    if args.json:
        for voice in found:
            row = {**voice.__dict__, "used_by": used.get(voice.voice_id, [])}
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    if not found:
        print("(no voices in this account)")
        return 0
    width = max(len(v.name) for v in found)
    for voice in sorted(found, key=lambda v: (v.category, v.name.lower())):
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(voice.labels.items()))
        agents = used.get(voice.voice_id)
        users = f"  [used by {', '.join(agents)}]" if agents else ""
        line = f"{voice.voice_id}  {voice.name:<{width}}  {voice.category:<12} {labels}{users}"
        print(line.rstrip())
    return 0


def _used_by(args: argparse.Namespace) -> dict[str, list[str]]:
    """Voice id → the agents using it (empty when the profiles cannot be read)."""
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    try:
        agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    except ConfigError:
        return {}
    used: dict[str, list[str]] = {}
    for agent in agents.agents.values():
        for _, voice_id in agent_voices(agent):
            names = used.setdefault(voice_id, [])
            if agent.name not in names:
                names.append(agent.name)
    return used


def _preview(args: argparse.Namespace) -> int:
    with _voices(args) as voices:
        audio = b"".join(voices.preview(args.voice, args.text, output_format=args.format))
    args.output.write_bytes(audio)
    print(f"{args.output}: {len(audio)} bytes")
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    with _voices(args) as voices:
        checked = check_agent_voices(
            agents.agents.values(), voices, prompts_dir=settings.prompts_dir
        )
    print(f"{checked} ElevenLabs voice(s) checked: all exist")
    return 0
