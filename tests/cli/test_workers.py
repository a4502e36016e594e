"""``relay serve --workers 2`` for real, as an operator starts it: a subprocess on a fresh SQLite
file and on a fresh PostgreSQL database; both workers come up (migrations ran once, under the
lock), calls work on any worker; with knowledge on, the parent runs the Chroma server that every
worker and the CLI use, and stops it at exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from relay.storage.db import Database
from relay.testing.simcall import SimulatedCall

TOKEN = "test-auth-token-0123456789abcdef"
#: The longest a test waits for the server to get somewhere (a limit, never an expectation).
WAIT = 120.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``relay serve`` in a subprocess; its output lines collected as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())",
                "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]  # fmt: skip
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                with_event = json.loads(line)
                if with_event.get("event") == name:
                    found.append(with_event)
        return found

    def wait_for(self, name: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT
        with self._changed:
            while len(self.events(name)) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no {count}x {name}; output:\n" + "\n".join(self.lines))
                self._changed.wait(left)
        return self.events(name)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        print("\n".join(self.lines))  # shown when the test fails
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


async def call_through(server: Server, n: int) -> list[str]:
    """``n`` calls at once, each saying one line; their replies."""

    async def one(i: int) -> str:
        call = SimulatedCall(f"ws://127.0.0.1:{server.port}/ws", auth_token=TOKEN)
        await call.connect()
        try:
            return (await call.say(f"Hello number {i}")).text
        finally:
            await call.close()

    return list(await asyncio.gather(*(one(i) for i in range(n))))


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
        RELAY_LOG_FORMAT="json", RELAY_LOG_LEVEL="info", **extra,
    )  # fmt: skip
    return env


async def check_workers(server: Server, db_url: str) -> None:
    workers = server.wait_for("worker_starting", 2)
    assert len({line["pid"] for line in workers}) == 2  # two processes
    server.wait_for("relay_started", 2)  # both through their start-up (migrations included)
    server.wait_for("Application startup complete.", 2)  # and listening
    async with httpx.AsyncClient() as http:
        for _ in range(4):
            assert (await http.get(server.base + "/healthz")).status_code == 200
    replies = await call_through(server, 6)
    for i, reply in enumerate(replies):  # (a filler line may come first on a busy machine)
        assert f"You said: Hello number {i}." in reply, replies
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        deadline = time.monotonic() + WAIT
        while True:  # recorded behind the call: wait (up to a limit) for every worker's writes
            async with db.engine.connect() as conn:
                calls = (await conn.execute(text("SELECT count(*) FROM calls"))).scalar_one()
            if calls >= 6 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await db.close()
    assert len(versions) == 1  # one schema, migrated once
    assert calls == 6  # every call recorded, whichever worker took it


async def test_two_workers_on_a_fresh_sqlite_file_share_it_and_a_chroma_server(
    data_dir: Path, prompts_dir: Path, tmp_path: Path
) -> None:
    db_file = tmp_path / "fresh" / "relay.db"
    env = environment(
        data_dir, prompts_dir, DATABASE_URL=f"sqlite:///{db_file}", RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false", RELAY_ADMIN_TOKEN="s3cret", RELAY_KNOWLEDGE_REFRESH="0",
    )  # fmt: skip
    server = Server(env, "--workers", "2", "--fake-llm")
    try:
        await check_workers(server, f"sqlite+aiosqlite:///{db_file}")
        discovery = json.loads((data_dir / "chroma-server.json").read_text())
        chroma_url = discovery["url"]
        async with httpx.AsyncClient() as http:
            assert (await http.get(chroma_url + "/api/v2/heartbeat")).status_code == 200

        # The CLI (another process) finds the server and loads a document through it...
        doc = tmp_path / "storage.md"
        doc.write_text("# Storage\n\nWe store pianos in our heated depot in Brunswick.\n")
        cli_env = {k: v for k, v in env.items() if k != "CHROMA_URL"}
        loaded = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", "import sys; from relay.cli import main; sys.exit(main())",
             "knowledge", "add", str(doc)],
            env=cli_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
        # ...which every worker then finds (several requests: the kernel spreads them).
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(6):
                found = await http.get(
                    server.base + "/admin/knowledge/piano-removals/search",
                    params={"q": "where do you store pianos"},
                    headers={"Authorization": "Bearer s3cret"},
                )
                assert found.status_code == 200, found.text
                assert found.json()["hits"][0]["doc_id"] == "storage.md"
    finally:
        code = server.stop()
    assert code == 0, "\n".join(server.lines)
    assert not (data_dir / "chroma-server.json").exists()  # the Chroma server is stopped
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(chroma_url.rsplit(":", 1)[1])), timeout=1)


async def test_two_workers_on_a_fresh_postgres_database(
    data_dir: Path, prompts_dir: Path, postgres_server: str
) -> None:
    from relay.testing import postgres

    db_url = await postgres.create_database(postgres_server)
    try:
        env = environment(data_dir, prompts_dir, DATABASE_URL=db_url, RELAY_KNOWLEDGE="false")
        server = Server(env, "--workers", "2", "--fake-llm")
        try:
            await check_workers(server, db_url)
        finally:
            code = server.stop()
        assert code == 0, "\n".join(server.lines)
    finally:
        await postgres.drop_database(postgres_server, db_url)
