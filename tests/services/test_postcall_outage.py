"""A call that ends while the database is briefly down: its post-call work (outcomes, usage and
cost, the webhook, the owner's e-mail) is tried again until the database answers, and done once;
``pending`` counts it meanwhile; a shutdown before then names the calls whose work is lost; a bug
(not the database) is not tried again. PostgreSQL through a TCP forwarder that the test stops and
starts again, as an outage looks to relay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from relay.agents import AgentRegistry
from relay.services import costs
from relay.services.email import smtp_settings
from relay.services.postcall import PostCall, database_trouble
from relay.services.webhooks import WebhookOutbox
from relay.storage.db import Database
from relay.storage.outcomes import WebhookDelivery, get_analysis
from tests.conftest import fresh_logging
from tests.services.test_postcall import Inbox, _free_port, piano_profile, store_call

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("UTC"))
RESPONSE = {"pieces": ["Hello."], "complete": True, "model": "gpt-4o-mini",
            "usage": {"prompt_tokens": 100, "completion_tokens": 5}}  # fmt: skip


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.services.postcall")


class Forwarder:
    """A TCP forwarder on a fixed loopback port to ``target``: :meth:`stop` closes the port and
    every connection through it (the database is down, as relay sees it), :meth:`start` opens
    it again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    from relay.testing import postgres

    url = await postgres.create_database(postgres_server)
    try:
        yield url
    finally:
        await postgres.drop_database(postgres_server, url)


async def _until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (log lines and counters, no event to wait on)
            await asyncio.sleep(0.01)


async def test_a_call_that_ends_during_an_outage_gets_its_outcomes_webhook_and_e_mail_once(
    postgres_url: str, tmp_path: Path
) -> None:
    from aiosmtpd.controller import Controller

    direct = Database(postgres_url)
    await direct.migrate()
    await store_call(
        direct, NOW, "transferred", [("llm_response", RESPONSE)]
    )  # the owner is e-mailed about a transfer
    target = make_url(postgres_url)
    forwarder = Forwarder(target.host or "127.0.0.1", target.port or 5432)
    through = Database(
        target.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)
    )
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    piano_profile(prompts, webhook_url="http://127.0.0.1:9/hook", owner_email="owner@example.com")
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    flushes: list[str] = []

    async def flushed() -> bool:  # the recorder's flush (Recorder.flush), before a retry
        flushes.append("flushed")
        return True

    http = httpx.AsyncClient()
    postcall = PostCall(
        through, AgentRegistry.load(prompts), costs.PriceTable(), now=lambda: NOW,
        outbox=WebhookOutbox(through, http, secret="whsec-test"),
        smtp=smtp_settings(f"smtp://127.0.0.1:{controller.port}", "office@keystone.example"),
        flushed=flushed, retry_first=0.05, retry_max=0.2,
    )  # fmt: skip
    try:
        with capture_logs() as logs:
            postcall.call_ended("CA1")  # the forwarder is not up: the database is down
            await _until(lambda: any(e["event"] == "postcall_delayed" for e in logs))
            await asyncio.sleep(0.3)  # a few more tries fail while it stays down
            still = (postcall.pending, postcall.failures)
            await forwarder.start()
            await asyncio.wait_for(postcall.idle(), 30)
        stored = await get_analysis(direct, "CA1")
        async with direct.session() as session:
            webhooks = await session.scalar(select(func.count()).select_from(WebhookDelivery))
    finally:
        controller.stop()
        await http.aclose()
        await forwarder.stop()
        await through.close()
        await direct.close()

    assert still == (1, 1)  # pending while it waits; one failure, however many tries
    assert postcall.pending == 0 and postcall.processed == 1
    assert stored is not None and stored.outcomes == ["transferred"]
    assert webhooks == 1
    assert [rcpt for rcpt, _ in inbox.messages] == [["owner@example.com"]]
    events = [e["event"] for e in logs if e["event"].startswith("postcall_")]
    assert events == ["postcall_delayed", "postcall_recovered"]  # once each, not once a try
    [delayed] = [e for e in logs if e["event"] == "postcall_delayed"]
    assert delayed["call_sid"] == "CA1" and "ConnectionRefusedError" in delayed["error"]
    assert len(flushes) >= 2  # before every try


@contextlib.asynccontextmanager
async def two_calls_waiting_for_the_database(
    retry_first: float, retry_max: float
) -> AsyncIterator[tuple[PostCall, list[dict[str, Any]]]]:
    """Post-call work for CA2 and CA1 against a PostgreSQL that never answers, both tried
    once and now waiting to try again."""
    down = Database(f"postgresql+asyncpg://relay:pw@127.0.0.1:{_free_port()}/relay")
    postcall = PostCall(
        down, AgentRegistry.load(Path(__file__).parents[2] / "prompts"), costs.PriceTable(),
        retry_first=retry_first, retry_max=retry_max,
    )  # fmt: skip
    try:
        with capture_logs() as logs:
            postcall.call_ended("CA2")
            postcall.call_ended("CA1")
            await _until(lambda: sum(e["event"] == "postcall_delayed" for e in logs) == 2)
            yield postcall, logs
    finally:
        await down.close()


async def test_a_shutdown_during_an_outage_names_the_calls_whose_work_is_lost() -> None:
    async with two_calls_waiting_for_the_database(0.05, 0.2) as (postcall, logs):
        pending = postcall.pending
        await postcall.aclose(timeout=0.1)
    assert pending == 2 and postcall.pending == 0
    [lost] = [e for e in logs if e["event"] == "postcall_lost"]
    assert (lost["log_level"], lost["calls"], lost["call_sids"]) == ("error", 2, ["CA1", "CA2"])


async def test_a_stop_does_not_wait_for_work_that_waits_for_the_database() -> None:
    """Work retrying against a database that is down is not waited for (until 8 December the
    stop waited its whole 10 s for it, after the drain had waited 10 s for the recorder): it
    is handed back, for the recorder's spill file, and logged as lost only if asked."""
    async with two_calls_waiting_for_the_database(60, 60) as (postcall, logs):
        # an hour's patience, but nothing to wait for: it returns at once (30 s: a failure)
        lost = await asyncio.wait_for(postcall.aclose(timeout=3600, log_lost=False), 30)
    assert lost == ["CA1", "CA2"] and postcall.pending == 0
    assert [e for e in logs if e["event"] == "postcall_lost"] == []


class BrokenAnalyser:
    """An analysis pass with a bug in it (not an AnalysisError, not the database)."""

    async def analyse(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("summary")


async def test_a_call_the_recorder_has_not_stored_yet_is_waited_for_not_dropped(
    tmp_path: Path,
) -> None:
    """A deploy test's timing: the database came back a moment before the hang-up, the
    session's flush had timed out, and the post-call pass found no call (or one still in
    progress) and ended without a word: no outcomes, webhook or e-mail, ever."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await db.migrate()
    tries: list[bool] = []

    async def flushed() -> bool:  # the recorder: not yet, then the call's rows are written
        if tries:
            await store_call(db, NOW, "caller-hangup", [("llm_response", RESPONSE)])
        tries.append(bool(tries))
        return tries[-1]

    postcall = PostCall(
        db, AgentRegistry.load(Path(__file__).parents[2] / "prompts"), costs.PriceTable(),
        now=lambda: NOW, flushed=flushed, retry_first=0.01,
    )  # fmt: skip
    try:
        with capture_logs() as logs:
            postcall.call_ended("CA1")
            await asyncio.wait_for(postcall.idle(), 10)
        stored = await get_analysis(db, "CA1")
    finally:
        await db.close()
    assert tries == [False, True]
    assert stored is not None and stored.ending == "caller-hangup"
    events = [e["event"] for e in logs if e["event"].startswith("postcall_")]
    assert events == ["postcall_delayed", "postcall_recovered"]


async def test_a_bug_is_logged_once_and_not_tried_again(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await db.migrate()
    await store_call(db, NOW, "caller-hangup", [("llm_response", RESPONSE)])
    postcall = PostCall(
        db, AgentRegistry.load(Path(__file__).parents[2] / "prompts"), costs.PriceTable(),
        analyser=BrokenAnalyser(), retry_first=0.01,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        with capture_logs() as logs:
            postcall.call_ended("CA1")
            await asyncio.wait_for(postcall.idle(), 10)
    finally:
        await db.close()
    assert [e["event"] for e in logs if e["event"].startswith("postcall_")] == ["postcall_failed"]
    assert (postcall.failures, postcall.pending, postcall.processed) == (1, 0, 0)


@pytest.mark.parametrize(
    ("error", "trouble"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (TimeoutError(), True),
        (KeyError("summary"), False),
        (ValueError("bad"), False),
    ],
)
def test_what_counts_as_the_database_in_trouble(error: BaseException, trouble: bool) -> None:
    assert database_trouble(error) is trouble
