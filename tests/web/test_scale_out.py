"""The scale-out recipe, proved: two ``relay serve`` processes on different ports share one
PostgreSQL database and one Chroma server. A document loaded once (by the CLI) grounds both;
a call whose socket drops on the first resumes on the second through the 64105 ``<Connect
action>``, with its history intact."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.testing import FakeLLMServer, ScriptedLLM, echo_reply
from relay.testing.simcall import SimulatedCall, sign

TOKEN = "test-auth-token-0123456789abcdef"
WAIT = 120.0  # the longest a test waits for a process to get somewhere (a limit)
RELAY = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]
FIRST = "Where do you store the pianos?"
SECOND = "And can you tune it when it arrives?"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(data: Path, prompts: Path, **extra: str) -> dict[str, str]:
    from relay.config import Settings

    names = {
        alias
        for info in Settings.model_fields.values()
        for alias in ([info.alias] if info.alias else [])
        + list(getattr(info.validation_alias, "choices", []) or [])
        if isinstance(alias, str)
    }
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(
        RELAY_DATA_DIR=str(data), RELAY_PROMPTS_DIR=str(prompts), TWILIO_AUTH_TOKEN=TOKEN,
        RELAY_LOG_FORMAT="json", RELAY_LOG_LEVEL="warning", RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false", RELAY_KNOWLEDGE_TIMEOUT="20", **extra,
    )  # fmt: skip
    return env


class Process:
    """``relay serve`` on a free port, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*RELAY, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
            while True:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    if (await http.get(self.base + "/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)

    async def idle(self) -> None:
        """Until no session is open (a closed session has flushed its recording)."""
        async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
            while (await http.get(self.base + "/metrics.json")).json()["active_sessions"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[str]:
    from relay.services.chroma_server import ChromaServer

    server = ChromaServer(tmp_path / "shared-chroma", data_dir=tmp_path / "chroma-owner")
    (tmp_path / "chroma-owner").mkdir()
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def reference(request: dict[str, Any]) -> str:
    return " ".join(
        m["content"] for m in request["messages"][1:] if m["role"] == "system" and m["content"]
    )


async def test_a_call_dropped_on_one_process_resumes_on_the_other_with_its_history(
    postgres_server: str, chroma: str, data_dir: Path, prompts_dir: Path, tmp_path: Path
) -> None:
    from relay.testing import postgres

    database = await postgres.create_database(postgres_server)
    llm = ScriptedLLM(default=echo_reply)
    processes: list[Process] = []
    with FakeLLMServer(llm) as fake:
        env = environment(
            data_dir, prompts_dir, DATABASE_URL=database, CHROMA_URL=chroma,
            OPENAI_BASE_URL=fake.base_url,
        )  # fmt: skip
        try:
            doc = tmp_path / "storage.md"
            doc.write_text("# Storage\n\nWe store pianos in our heated depot in Brunswick.\n")
            loaded = await asyncio.to_thread(
                subprocess.run, [*RELAY, "knowledge", "add", str(doc)],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert loaded.returncode == 0, loaded.stderr
            first, second = Process(env, tmp_path / "a.log"), Process(env, tmp_path / "b.log")
            processes += [first, second]
            await asyncio.gather(first.ready(), second.ready())

            call = SimulatedCall(f"ws://127.0.0.1:{first.port}/ws", auth_token=TOKEN)
            await call.connect()
            before = await call.say(FIRST)
            await call.drop()  # the network fails: no close handshake
            await first.idle()
            form = {
                "AccountSid": "AC" + "0" * 32, "CallSid": call.call_sid,
                "SessionId": call.session_id, "From": call.from_, "To": call.to,
                "Direction": "inbound", "SessionStatus": "failed", "CallStatus": "in-progress",
                "ErrorCode": "64105", "ApiVersion": "2010-04-01",
            }  # fmt: skip
            async with httpx.AsyncClient() as http:
                action = await http.post(
                    second.base + "/handoff",
                    data=form,
                    headers={"X-Twilio-Signature": sign(TOKEN, second.base + "/handoff", form)},
                )
            relay_element = ET.fromstring(action.text).find("Connect/ConversationRelay")
            assert relay_element is not None, action.text
            parameters = {
                p.attrib["name"]: p.attrib["value"] for p in relay_element.iter("Parameter")
            }
            resumed = SimulatedCall(
                f"ws://127.0.0.1:{second.port}/ws", auth_token=TOKEN, call_sid=call.call_sid,
                custom_parameters=parameters,
            )  # fmt: skip
            await resumed.connect()
            after = await resumed.say(SECOND)
            await resumed.close()
            await second.idle()
        finally:
            for process in processes:
                process.stop()
            await postgres.drop_database(postgres_server, database)

    requests = llm.requests
    assert len(requests) == 2, requests
    assert "heated depot in Brunswick" in reference(requests[0])  # the document, on process A
    assert "heated depot in Brunswick" in reference(requests[1])  # the same document, on B
    conversation = [(m["role"], m.get("content")) for m in requests[1]["messages"]]
    assert ("user", FIRST) in conversation
    assert ("assistant", before.text) in conversation  # what A said, loaded by B from Postgres
    assert [m for m in conversation if m[0] == "user"] == [("user", FIRST), ("user", SECOND)]
    assert parameters.get("resumed") == "1"
    assert after.text and after.frames[-1]["last"] is True
