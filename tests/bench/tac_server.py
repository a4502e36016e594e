"""Twilio's Python SDK (twilio-agent-connect, "TAC") as a ConversationRelay server, for
``relay bench --url`` to measure beside relay in the same kind of run (README, "Benchmarks").

Not part of the suite and not a dependency: run it from a virtualenv of its own::

    python -m venv /tmp/tac && /tmp/tac/bin/pip install "twilio-agent-connect[server]==2.5.0" openai
    /tmp/tac/bin/python tests/bench/tac_server.py --port 8765 --llm-url http://127.0.0.1:8081/v1
    relay fake-llm --port 8081 --first-token-delay 0.3 --token-delay 0.025 --reply-tokens 40
    relay bench --url ws://127.0.0.1:8765/ws --llm-url http://127.0.0.1:8081/v1 --calls 100 ...

The agent is TAC's quickstart made to stream: the conversation's history and one system
message go to the model (``chat.completions`` with ``stream=True``, as relay does), and each
delta goes to the caller as it comes. No retrieval (TAC has none), no tools. TAC checks
Twilio's signature on the WebSocket upgrade; the bench does not sign, so that check is
replaced by one that lets every upgrade through (relay runs unsigned in the bench too).
TAC's Segment analytics are turned off (``TAC_ANALYTICS_DISABLED``): nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("TAC_ANALYTICS_DISABLED", "true")

SYSTEM = (
    "You are a customer service agent speaking with a caller. Keep responses short and "
    "conversational. Do not use markdown; your words will be spoken aloud."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--llm-url", required=True, help="the scripted model's base URL (…/v1)")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()

    from openai import AsyncOpenAI
    from tac import TAC, TACConfig
    from tac.channels.voice import VoiceChannel
    from tac.server import TACFastAPIServer, fastapi_server
    from tac.server.config import TACServerConfig

    async def unsigned() -> None:  # FastAPI dependency: no parameters, nothing to check
        return None

    fastapi_server.build_websocket_signature_dependency = lambda token: unsigned  # type: ignore[attr-defined]

    tac = TAC(
        config=TACConfig(
            account_sid="AC" + "0" * 32,
            auth_token="bench",
            api_key="SK" + "0" * 32,
            api_secret="bench",
            phone_number="+15550000000",
            voice_public_domain=f"{args.host}:{args.port}",
        )
    )
    voice = VoiceChannel(tac)
    model = AsyncOpenAI(base_url=args.llm_url, api_key="bench", max_retries=0)
    history: dict[str, list[dict[str, str]]] = {}

    async def reply(user_message: str, context: Any, memory: Any) -> AsyncIterator[str]:
        said = history.setdefault(context.conversation_id, [])
        said.append({"role": "user", "content": user_message})
        stream = await model.chat.completions.create(
            model=args.model,
            messages=[{"role": "system", "content": SYSTEM}, *said],  # type: ignore[list-item]
            stream=True,
        )
        text = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                piece = chunk.choices[0].delta.content
                text.append(piece)
                yield piece
        said.append({"role": "assistant", "content": "".join(text)})

    async def on_message_ready(user_message: str, context: Any, memory: Any) -> None:
        # A stream is sent "manually": the callback returns None (TAC's rule for streaming).
        await voice.send_response(context.conversation_id, reply(user_message, context, memory))

    tac.on_message_ready(on_message_ready)
    server = TACFastAPIServer(
        tac=tac, voice_channel=voice, config=TACServerConfig(host=args.host, port=args.port)
    )
    server.start()


if __name__ == "__main__":
    main()
