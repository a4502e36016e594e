"""SIGTERM to a real ``relay serve`` process: live replies complete, then the process exits.

The model is ``relay fake-llm`` in its own process, slow enough (0.1 s a token) that a reply is
still streaming when the signal arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from relay.testing.simcall import SimulatedCall, sign
from relay.web import drain as drain_

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
REPLY_TOKENS = 20
WAIT = 60.0  # the longest a test waits for a process to get somewhere (a limit)
FIRST_PROMPT = "Could you tell me about moving an upright piano across town please"
SECOND_PROMPT = "Please tell me everything about moving a grand piano upstairs"
RELAY = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())"]


def whole_reply(prompt: str) -> str:
    """What ``relay fake-llm --reply-tokens 20`` answers ``prompt``: its 20 deltas, joined."""
    from relay.testing.scripted import _EchoOfLength

    return _EchoOfLength(REPLY_TOKENS)({"messages": [{"role": "user", "content": prompt}]}).text


def spoken(frames: list[dict[str, Any] | None]) -> str:
    return "".join(f["token"] for f in frames if f is not None and f["type"] == "text")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
        while True:
            assert process.poll() is None, f"exited with {process.returncode}"
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)


@pytest.fixture
def fake_llm() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [*RELAY, "fake-llm", "--port", str(port), "--token-delay", "0.1",
         "--reply-tokens", str(REPLY_TOKENS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        asyncio.run(wait_healthy(f"http://127.0.0.1:{port}/healthz", process))
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(WAIT)


def start_relay(data_dir: Path, prompts_dir: Path, llm: str, **env: str) -> tuple[Any, str]:
    """``relay serve`` on a free port; its log goes to ``data_dir/serve.log``."""
    port = free_port()
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_"))
    }
    environ.update(
        RELAY_DATA_DIR=str(data_dir), RELAY_PROMPTS_DIR=str(prompts_dir),
        TWILIO_AUTH_TOKEN=AUTH_TOKEN, OPENAI_BASE_URL=llm, RELAY_KNOWLEDGE="false",
        RELAY_LOG_FORMAT="json", RELAY_LOG_LEVEL="info", **env,
    )  # fmt: skip
    environ.pop("DATABASE_URL", None)
    with open(data_dir / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [*RELAY, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=environ, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, f"127.0.0.1:{port}"


async def exited(process: subprocess.Popen[bytes]) -> int:
    code = await asyncio.wait_for(asyncio.to_thread(process.wait), WAIT)
    return code


async def test_sigterm_lets_the_reply_in_progress_finish_then_the_process_exits(
    clean_env: None, data_dir: Path, prompts_dir: Path, fake_llm: str
) -> None:
    process, host = start_relay(data_dir, prompts_dir, fake_llm, RELAY_DRAIN_SECONDS="60")
    try:
        await wait_healthy(f"http://{host}/readyz", process)
        call = SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN)
        await call.connect()
        await call.prompt(FIRST_PROMPT)
        first = await call.next_frame()
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGTERM)  # delivered twice (systemd + a supervisor): one drain
        frames = [first]
        while not (frames[-1] is None or (frames[-1]["type"] == "text" and frames[-1]["last"])):
            frames.append(await call.next_frame())
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://{host}/readyz")
            form = {"CallSid": "CA" + "2" * 32, "From": "+61412345678", "To": "+61390001234"}
            twiml = await http.post(
                f"http://{host}/twiml",
                data=form,
                headers={"X-Twilio-Signature": sign(AUTH_TOKEN, f"http://{host}/twiml", form)},
            )
        still_running = process.poll() is None
        await call.close()  # the caller hangs up: the drain has nothing left to wait for
        code = await exited(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (data_dir / "serve.log").read_text()

    assert frames[-1] is not None and frames[-1]["last"] is True, log
    assert spoken(frames) == whole_reply(FIRST_PROMPT)  # the whole reply, not cut
    assert ready.status_code == 503 and ready.json()["checks"]["draining"]["ok"] is False
    assert "<Dial" in twiml.text and "<Connect" not in twiml.text  # the polite busy answer
    assert still_running
    assert code in (0, -signal.SIGTERM)
    events = [orjson.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert "drain_started" in events and "drain_finished" in events
    assert events.index("drain_finished") < events.index("relay_stopped")


async def test_sigterm_after_the_deadline_hands_the_caller_over_and_records_the_outcome(
    clean_env: None, data_dir: Path, prompts_dir: Path, fake_llm: str
) -> None:
    process, host = start_relay(data_dir, prompts_dir, fake_llm, RELAY_DRAIN_SECONDS="0.5")
    try:
        await wait_healthy(f"http://{host}/readyz", process)
        call = SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN)
        await call.connect()
        await call.say("Hello")  # one whole turn, then the caller says nothing more
        process.send_signal(signal.SIGTERM)
        line = await call.next_frame(WAIT)
        await call.info("agentSpeaking", "off")
        end = await call.next_frame(WAIT)
        await call.close()
        code = await exited(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert line is not None and line["token"] == drain_.TO_PERSON_LINE and line["last"] is True
    assert end is not None and end["type"] == "end"
    assert orjson.loads(end["handoffData"])["reason"] == "server-shutdown"
    assert code in (0, -signal.SIGTERM)
    from relay.storage import repository
    from relay.storage.db import Database

    db = Database(f"sqlite+aiosqlite:///{data_dir / 'relay.db'}")
    try:
        stored = await repository.get_call(db, call.call_sid)
    finally:
        await db.close()
    assert stored is not None and stored.outcome == "server-shutdown"  # the recorder was flushed


@pytest.mark.slow
async def test_two_workers_share_metrics_and_both_drain_on_sigterm(
    clean_env: None, data_dir: Path, prompts_dir: Path, fake_llm: str
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def live_calls(text: str) -> float:
        for family in text_string_to_metric_families(text):
            if family.name == "relay_live_calls":
                return sum(sample.value for sample in family.samples)
        raise AssertionError("no relay_live_calls in /metrics")

    process, host = start_relay(
        data_dir, prompts_dir, fake_llm, RELAY_DRAIN_SECONDS="60", RELAY_WORKERS="2"
    )
    calls = [SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN) for _ in range(4)]
    try:
        await wait_healthy(f"http://{host}/readyz", process)
        for call in calls:
            await call.connect()
            await call.prompt(SECOND_PROMPT)
        firsts = [await call.next_frame() for call in calls]
        async with httpx.AsyncClient() as http:  # any worker answers for both
            scrapes = [(await http.get(f"http://{host}/metrics")).text for _ in range(4)]
        process.send_signal(signal.SIGTERM)
        replies = []
        for call, first in zip(calls, firsts, strict=True):
            frames = [first]
            while not (frames[-1] is None or (frames[-1]["type"] == "text" and frames[-1]["last"])):
                frames.append(await call.next_frame())
            replies.append(frames)
        for call in calls:
            await call.close()
        code = await exited(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (data_dir / "serve.log").read_text()

    assert [live_calls(text) for text in scrapes] == [4.0] * 4, log
    for frames in replies:
        assert frames[-1] is not None and frames[-1]["last"] is True, log
        assert spoken(frames) == whole_reply(SECOND_PROMPT)
    assert code in (0, -signal.SIGTERM)
    events = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len({e["pid"] for e in events if e["event"] == "worker_starting"}) == 2
    assert sum(e["event"] == "drain_finished" for e in events) == 2  # each worker drained


async def test_a_later_second_sigterm_stops_at_once(
    clean_env: None, data_dir: Path, prompts_dir: Path, fake_llm: str
) -> None:
    process, host = start_relay(data_dir, prompts_dir, fake_llm, RELAY_DRAIN_SECONDS="600")
    try:
        await wait_healthy(f"http://{host}/readyz", process)
        call = SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN)
        await call.connect()
        await call.say("Hello")
        process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient() as http:  # the drain has begun...
            draining = await http.get(f"http://{host}/readyz")
        await asyncio.sleep(drain_.REPEAT_WINDOW + 0.2)  # ...and the operator insists, later
        process.send_signal(signal.SIGTERM)
        code = await exited(process)  # without waiting the 600 s for the open call
        closed = await call.next_frame(WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert draining.status_code == 503
    assert code in (0, -signal.SIGTERM)
    assert closed is None  # the socket was closed by the server


def logged(data_dir: Path, event: str) -> list[dict[str, Any]]:
    """The lines of ``serve.log`` (JSON) whose event is ``event``."""
    lines = (data_dir / "serve.log").read_text().splitlines()
    return [e for e in (orjson.loads(x) for x in lines if x.startswith("{")) if e["event"] == event]


async def wait_logged(
    data_dir: Path, event: str, count: int, process: subprocess.Popen[bytes]
) -> None:
    """Wait (up to ``WAIT``) until ``serve.log`` holds ``count`` lines of ``event``."""
    async with asyncio.timeout(WAIT):
        while len(logged(data_dir, event)) < count:
            assert process.poll() is None, f"exited with {process.returncode}"
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_two_workers_a_later_second_signal_to_the_parent_stops_every_worker_at_once(
    clean_env: None, data_dir: Path, prompts_dir: Path, fake_llm: str, sig: signal.Signals
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    process, host = start_relay(
        data_dir, prompts_dir, fake_llm, RELAY_DRAIN_SECONDS="600", RELAY_WORKERS="2"
    )
    call = SimulatedCall(f"ws://{host}/ws", auth_token=AUTH_TOKEN)
    try:
        await wait_healthy(f"http://{host}/readyz", process)
        await wait_logged(data_dir, "relay_started", 2, process)  # both workers took over
        await call.connect()
        await call.say("Hello")  # one whole turn; the caller then stays on the line
        process.send_signal(sig)
        first_sent = time.monotonic()
        await wait_logged(data_dir, "drain_started", 2, process)  # each worker drains...
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://{host}/readyz")
            scrape = (await http.get(f"http://{host}/metrics")).text
        live = sum(
            sample.value
            for family in text_string_to_metric_families(scrape)
            if family.name == "relay_live_calls"
            for sample in family.samples
        )
        # ...and the operator insists, later (a repeat within the window would be ignored)
        await asyncio.sleep(max(0.0, first_sent + drain_.REPEAT_WINDOW + 0.5 - time.monotonic()))
        finished_before = len(logged(data_dir, "drain_finished"))
        process.send_signal(sig)
        # Far sooner than the call's end (never) or the drain's deadline (600 s): a limit.
        code = await asyncio.wait_for(asyncio.to_thread(process.wait), 20.0)
        closed = await call.next_frame(WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await call.close()
    log = (data_dir / "serve.log").read_text()

    assert ready.status_code == 503 and ready.json()["checks"]["draining"]["ok"] is False, log
    assert live == 1.0  # the drain was waiting for the open call when the signal came again
    assert finished_before <= 1  # only the worker without a call (it then exits) had finished
    assert code == 0, log
    assert closed is None  # the socket was closed by the server
    assert len(logged(data_dir, "workers_stopping_now")) == 1, log
