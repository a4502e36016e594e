"""Two relays on one database, as two workers: the console of one sees, streams and supervises
a call served by the other, and accepts the other's session cookie."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from relay.storage.console import CallCommand
from relay.testing import ScriptedLLM, Text
from tests.conftest import WAIT
from tests.web.console.conftest import ADMIN_TOKEN, sign_in
from tests.web.console.test_console_http import read_stream

pytestmark = pytest.mark.asyncio


async def test_a_console_on_one_worker_runs_a_call_on_another(start_relay: Any) -> None:
    serving_llm = ScriptedLLM([Text("Hello from the other worker."), Text("Noted.")])
    async with (
        start_relay(RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as console,
        start_relay(serving_llm, RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as serving,
    ):
        assert console.settings.database == serving.settings.database
        browser = await sign_in(console.base_url)
        # The other worker accepts this worker's session cookie (one secret, in the database).
        async with httpx.AsyncClient(base_url=serving.base_url) as elsewhere:
            elsewhere.cookies.set(
                "relay_console", browser.http.cookies["relay_console"], path="/console"
            )
            assert (await elsewhere.get("/console/calls")).status_code == 200

        call = serving.call()
        await call.connect()

        async def listed() -> None:
            while True:
                live = (await browser.http.get("/console/api/live")).json()["calls"]
                if any(c["call_sid"] == call.call_sid for c in live):
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(listed(), WAIT)
        async with browser.http.stream(
            "GET", f"/console/api/calls/{call.call_sid}/stream"
        ) as stream:
            await call.say("Is this the other worker?")

            def heard(lines: list[dict[str, Any]]) -> bool:
                return any(line["type"] == "caller" for line in lines)

            lines = await asyncio.wait_for(read_stream(stream, heard), WAIT)
        # The greeting the serving worker recorded, then the caller's words.
        greeting = serving.runtime.deps.agents.agents["piano-removals"].welcome_greeting
        assert lines == [
            {"type": "agent", "text": greeting, "last": True},
            {"type": "caller", "text": "Is this the other worker?"},
        ]

        whisper = await browser.http.post(
            f"/console/calls/{call.call_sid}/command",
            data={"kind": "whisper", "argument": "Mention the weekend rate."},
            headers={"X-CSRF-Token": browser.csrf},
        )
        assert whisper.status_code == 200

        async def applied() -> None:
            while True:
                async with console.runtime.deps.db.session() as session:
                    status = await session.scalar(
                        select(CallCommand.status).where(CallCommand.call_sid == call.call_sid)
                    )
                if status == "done":
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(applied(), WAIT)
        assert serving.runtime.supervisor is not None and serving.runtime.supervisor.applied == 1
        assert console.runtime.supervisor is not None and console.runtime.supervisor.applied == 0
        await call.say("Anything else?")
        assert serving_llm.requests[-1]["messages"][-3]["content"].endswith(
            "Mention the weekend rate."
        )
        await call.close()
        await serving.session_closed()
        await browser.http.aclose()
