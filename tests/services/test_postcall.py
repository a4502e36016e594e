"""After the call: outcomes derived from what happened, token usage and cost, the optional
analysis pass and the signed webhook, through the real app (uvicorn, WebSocket, scripted model,
real tools on SQLite) and a real local HTTP receiver."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
import respx
from aiohttp import web

from relay.services import costs, webhooks
from relay.storage.outcomes import get_analysis
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls

REPO = Path(__file__).resolve().parents[2]
MEL = ZoneInfo("Australia/Melbourne")
NOW = datetime(2026, 11, 19, 10, 0, tzinfo=MEL)
TUESDAY = "2026-11-24"
SECRET = "whsec-test-0123456789"
TWILIO_SID = "AC" + "0" * 32
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
QUOTE_ARGS = {
    "piano_type": "upright",
    "pickup": "Brunswick",
    "dropoff": "Coburg",
    "move_date": TUESDAY,
}


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: keeps every request (headers and raw body)."""

    port: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            self.arrived.set()
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def piano_profile(prompts: Path, **extra: str) -> None:
    text = (REPO / "prompts" / "piano-removals.toml").read_text(encoding="utf-8")
    head = "".join(f'{key} = "{value}"\n' for key, value in extra.items())
    # Top-level keys must come before the first table.
    (prompts / "piano-removals.toml").write_text(head + text, encoding="utf-8")


@pytest.fixture
def piano_prompts(tmp_path: Path) -> Callable[..., Path]:
    def make(**extra: str) -> Path:
        path = tmp_path / "piano-prompts"
        path.mkdir(exist_ok=True)
        piano_profile(path, **extra)
        return path

    return make


@pytest.fixture
def relay_with(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]], data_dir: Path
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    shutil.copy(REPO / "data" / "prices.toml", data_dir / "prices.toml")

    @asynccontextmanager
    async def start(llm: ScriptedLLM, prompts: Path, **settings: Any) -> AsyncIterator[Any]:
        def configure(runtime: Any) -> None:
            runtime.deps.now = lambda: NOW
            if runtime.postcall.outbox is not None:
                runtime.postcall.outbox.base = 0.05  # retry soon in tests
                runtime.postcall.outbox.poll = 0.05

        async with start_relay(
            llm, configure=configure, RELAY_PROMPTS_DIR=str(prompts), **settings
        ) as relay:
            yield relay

    return start


async def finished(relay: Any, call: Any) -> None:
    await call.close()
    await relay.session_closed()
    await relay.runtime.postcall.idle()


async def test_a_scripted_call_that_quotes_books_and_texts_has_exactly_those_outcomes(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]),
            Text("That's $350 including GST."),
        ]
    )
    async with relay_with(
        llm, piano_prompts(), TWILIO_ACCOUNT_SID=TWILIO_SID, RELAY_SMS_FROM="+61400000999"
    ) as relay:
        call = relay.call(to="+61390001234")
        await call.connect()
        await call.say("How much to move my upright from Brunswick to Coburg on Tuesday?")
        quote_id = _quote_id(relay.llm.requests[1])
        relay.llm.push(
            ToolCalls([ToolCall("book_move", {"quote_id": quote_id, "date": TUESDAY,
                        "window": "morning", "confirmed": True, "name": "Ann Lee"})]),
            Text("Booked."),
            ToolCalls([ToolCall("send_quote_sms", {"quote_id": quote_id})]),
            Text("Texted."),
        )  # fmt: skip
        await call.say("Yes, book the morning please, name Ann Lee.")
        with respx.mock(assert_all_mocked=False, assert_all_called=False) as twilio:
            twilio.route(host="127.0.0.1").pass_through()
            sms = twilio.post(MESSAGES_URL).mock(
                return_value=httpx.Response(201, json={"sid": "SM" + "1" * 32, "status": "queued"})
            )
            await call.say("And text me the quote.")
        assert sms.call_count == 1
        await finished(relay, call)

        analysis = await get_analysis(relay.runtime.deps.db, call.call_sid)
    assert analysis is not None
    assert analysis.outcomes == ["quoted", "booked", "sms-sent"]
    usage = analysis.usage
    assert usage["requests"] == 6 and not usage["estimated"]
    [model] = usage["models"]
    assert model == "gpt-4o-mini"
    # The scripted server counts the prompt deterministically; the cost follows the table.
    expected = costs.cost_of(
        costs.load_prices(REPO / "data" / "prices.toml"), usage, minutes=1,
        sms_bodies=["x" * 200],  # the quote text takes two segments
    )  # fmt: skip
    assert analysis.cost == expected
    assert analysis.cost["sms_segments"] == 2 and analysis.cost["minutes"] == 1
    fresh = usage["prompt_tokens"] - usage["cached_tokens"]
    assert analysis.cost_total == pytest.approx(
        (fresh * 0.15 + usage["cached_tokens"] * 0.075 + usage["completion_tokens"] * 0.60) / 1e6
        + 0.07
        + 2 * 0.0515
    )


def _quote_id(request: dict[str, Any]) -> str:
    tool = next(m for m in request["messages"] if m["role"] == "tool")
    return str(tool["content"].split(":", 1)[0].split()[-1])


async def test_a_message_call_and_a_silent_call(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    llm = ScriptedLLM(
        [
            ToolCalls([ToolCall("take_message", {"name": "Bo", "phone": "this number",
                                                  "reason": "Crane job in Kew"})]),
            Text("Someone will call you back."),
        ]
    )  # fmt: skip
    async with relay_with(llm, piano_prompts()) as relay:
        call = relay.call(to="+61390001234")
        await call.connect()
        await call.say("Can someone call me back about a crane job?")
        await finished(relay, call)
        silent = relay.call(to="+61390001234")
        await silent.connect()
        await silent.close()
        await relay.session_closed(2)
        await relay.runtime.postcall.idle()
        db = relay.runtime.deps.db
        message = await get_analysis(db, call.call_sid)
        nothing = await get_analysis(db, silent.call_sid)
    assert message is not None and message.outcomes == ["message-taken"]
    assert nothing is not None and nothing.outcomes == ["abandoned"]
    assert nothing.usage["requests"] == 0 and nothing.cost["llm"] == 0


async def test_the_webhook_arrives_once_signed_with_the_analysis_fields(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    receiver = Receiver()
    await receiver.start()
    llm = ScriptedLLM([Text("We move pianos all over Melbourne.")])
    try:
        async with relay_with(
            llm, piano_prompts(webhook_url=receiver.url),
            RELAY_WEBHOOK_SECRET=SECRET, RELAY_ANALYSIS="true",
        ) as relay:  # fmt: skip
            call = relay.call(to="+61390001234")
            await call.connect()
            await call.say("Do you go to Geelong?")
            relay.llm.push(
                ToolCalls([ToolCall("record_call_analysis", {
                    "summary": "Asked whether we serve Geelong.", "reason": "service area",
                    "sentiment": "happy"})])
            )  # fmt: skip
            await finished(relay, call)
            await asyncio.wait_for(receiver.arrived.wait(), 10)
            await relay.runtime.postcall.outbox.deliver_due()  # nothing left to send
            analysis_request = relay.llm.requests[-1]
    finally:
        await receiver.stop()

    [(headers, body)] = receiver.received
    assert webhooks.verify(SECRET, headers[webhooks.HEADER], body)
    t = int(headers[webhooks.HEADER].split(",")[0].removeprefix("t="))
    assert not webhooks.verify(SECRET, headers[webhooks.HEADER], body + b" ")
    assert not webhooks.verify("other", headers[webhooks.HEADER], body)
    assert headers[webhooks.HEADER] == webhooks.signature(SECRET, body, timestamp=t)
    document = orjson.loads(body)
    assert document["call_sid"] == call.call_sid and document["agent"] == "piano-removals"
    assert document["outcomes"] == ["answered-only"]
    # "happy" is not one of the sentiment values: dropped, not stored.
    assert document["fields"] == {
        "summary": "Asked whether we serve Geelong.", "reason": "service area", "sentiment": None,
    }  # fmt: skip
    assert document["summary"] == "Asked whether we serve Geelong."
    assert document["usage"]["models"]["gpt-4o-mini"]["requests"] == 1
    # The analysis request is priced too, and counted apart from the call's own requests.
    assert document["usage"]["analysis"]["models"]["gpt-4o-mini"]["requests"] == 1
    assert document["cost"]["analysis"] > 0
    assert document["cost"]["total"] == pytest.approx(
        document["cost"]["llm"]
        + document["cost"]["conversation_relay"]
        + document["cost"]["analysis"]
    )
    assert document["cost"]["currency"] == "USD"
    assert analysis_request["stream"] is False
    assert analysis_request["tool_choice"]["function"]["name"] == "record_call_analysis"
    schema = analysis_request["tools"][0]["function"]["parameters"]
    assert schema["properties"]["sentiment"]["enum"] == ["positive", "neutral", "negative"]
    assert "Do you go to Geelong?" in analysis_request["messages"][1]["content"]


async def test_the_webhook_is_retried_until_the_receiver_is_up_and_survives_a_restart(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    port = _free_port()
    receiver = Receiver(port=port)
    prompts = piano_prompts(webhook_url=receiver.url)
    llm = ScriptedLLM([Text("Hello.")])
    async with relay_with(llm, prompts, RELAY_WEBHOOK_SECRET=SECRET) as relay:
        call = relay.call(to="+61390001234")
        await call.connect()
        await call.say("Hi")
        await finished(relay, call)
        outbox = relay.runtime.postcall.outbox
        for _ in range(200):  # the receiver is down: attempts fail and are rescheduled
            [row] = await outbox.rows(call.call_sid)
            if row.attempts >= 2:
                break
            await asyncio.sleep(0.05)
        assert row.status == "pending" and row.attempts >= 2 and "Connect" in (row.last_error or "")
        settings = relay.settings
    # A new process on the same database delivers what the first one could not.
    await receiver.start()
    try:
        async with relay_with(ScriptedLLM(), prompts, DATABASE_URL=settings.database,
                              RELAY_WEBHOOK_SECRET=SECRET) as again:  # fmt: skip
            await asyncio.wait_for(receiver.arrived.wait(), 10)
            for _ in range(200):  # the answer reached the receiver; wait for it to be stored
                [row] = await again.runtime.postcall.outbox.rows(call.call_sid)
                if row.status != "pending":
                    break
                await asyncio.sleep(0.02)
    finally:
        await receiver.stop()
    assert row.status == "delivered"
    [(headers, body)] = receiver.received
    assert webhooks.verify(SECRET, headers[webhooks.HEADER], body)
    assert orjson.loads(body)["call_sid"] == call.call_sid


async def test_a_webhook_is_parked_after_the_last_attempt_and_can_be_retried(
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.cli.outcomes import _webhooks_async
    from relay.storage.db import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    db = Database(url)
    await db.migrate()
    async with httpx.AsyncClient() as http:
        outbox = webhooks.WebhookOutbox(db, http, secret=SECRET, max_attempts=3, base=0)
        hook = f"http://127.0.0.1:{_free_port()}/hook"
        assert await outbox.enqueue(call_sid="CA1", agent="a", url=hook, document={"n": 1})
        for _ in range(5):
            await outbox.deliver_due()
        [row] = await outbox.rows("CA1")
        assert (row.status, row.attempts) == ("parked", 3)

        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("RELAY_LOG_LEVEL", "error")
        out = io.StringIO()
        await _webhooks_async(argparse.Namespace(status="parked", retry=False), out)
        assert out.getvalue().startswith(f"CA1  parked    attempts 3  {hook}  last error: ")
        out = io.StringIO()
        await _webhooks_async(argparse.Namespace(status=None, retry=True), out)
        assert out.getvalue().startswith("1 parked delivery(ies) queued again")
        [row] = await outbox.rows("CA1")
        assert (row.status, row.attempts) == ("pending", 0)
    await db.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


async def test_the_quote_e_mail_and_the_owner_notification_reach_smtp_once(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    email_args = {"email": "jo@example.com", "confirmed": True}
    llm = ScriptedLLM(
        [ToolCalls([ToolCall("quote_piano_move", QUOTE_ARGS)]), Text("$350 including GST.")]
    )
    try:
        async with relay_with(
            llm, piano_prompts(owner_email="owner@example.com"),
            RELAY_SMTP_URL=f"smtp://127.0.0.1:{controller.port}",
            RELAY_EMAIL_FROM="office@keystone.example",
        ) as relay:  # fmt: skip
            call = relay.call(to="+61390001234")
            await call.connect()
            await call.say("How much for my upright, Brunswick to Coburg, Tuesday?")
            quote_id = _quote_id(relay.llm.requests[1])
            send = ToolCall("send_quote_email", {"quote_id": quote_id, **email_args})
            relay.llm.push(
                ToolCalls([send]), Text("Sent."),
                ToolCalls([ToolCall("send_quote_email", {"quote_id": quote_id, **email_args})]),
                Text("Already sent."),
                ToolCalls([ToolCall("take_message", {"name": "Jo", "phone": "this number",
                                                     "reason": "Call me about storage"})]),
                Text("Message taken."),
            )  # fmt: skip
            await call.say("E-mail it to jo@example.com please. Yes, that's right.")
            await call.say("Did you send it?")
            await call.say("Also please have someone call me about storage.")
            await finished(relay, call)
            analysis = await get_analysis(relay.runtime.deps.db, call.call_sid)
    finally:
        controller.stop()

    assert analysis is not None
    assert analysis.outcomes == ["quoted", "message-taken", "e-mail-sent"]
    assert [rcpt for rcpt, _ in inbox.messages] == [["jo@example.com"], ["owner@example.com"]]
    assert b"Total: $350 incl. GST" in inbox.messages[0][1]
    assert b"message-taken" in inbox.messages[1][1]


def test_preflight_names_a_bad_price_table_and_missing_smtp_sender(
    make_settings: Callable[..., Any], data_dir: Path
) -> None:
    from relay.errors import ConfigError
    from relay.web.app import preflight

    local = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    preflight(make_settings(**local))  # no price table: costs unknown, no complaint
    (data_dir / "prices.toml").write_text('[models."gpt-4o-mini"]\nprompt = "cheap"\n')
    with pytest.raises(ConfigError, match=r"prices\.toml"):
        preflight(make_settings(**local))
    (data_dir / "prices.toml").unlink()
    with pytest.raises(ConfigError, match=r"RELAY_PRICES=.*typo\.toml: no such price table"):
        preflight(make_settings(RELAY_PRICES=str(data_dir / "typo.toml"), **local))
    with pytest.raises(ConfigError, match="RELAY_EMAIL_FROM"):
        preflight(make_settings(RELAY_SMTP_URL="smtp://127.0.0.1:2525", **local))


async def test_a_socket_that_drops_for_a_reconnect_sends_nothing_until_the_call_ends(
    relay_with: Callable[..., AbstractAsyncContextManager[Any]],
    piano_prompts: Callable[..., Path],
) -> None:
    receiver = Receiver()
    await receiver.start()
    llm = ScriptedLLM([Text("We move pianos all over Melbourne."), Text("Yes, Geelong too.")])
    prompts = piano_prompts(webhook_url=receiver.url)
    profile = prompts / "piano-removals.toml"
    text, n = re.subn(
        r"^\[relay\]\n", "[relay]\napplication_reconnect = true\n",
        profile.read_text(encoding="utf-8"), count=1, flags=re.M,
    )  # fmt: skip
    assert n == 1
    profile.write_text(text, encoding="utf-8")
    try:
        async with relay_with(llm, prompts, RELAY_WEBHOOK_SECRET=SECRET) as relay:
            first = relay.call(to="+61390001234")
            first.url = f"{relay.ws_url}/{first.call_sid}"  # the URL relay's TwiML gives
            await first.connect()
            await first.say("Do you move pianos?")
            await first.drop()  # the network fails; Twilio will reconnect
            await relay.session_closed()
            await relay.runtime.postcall.idle()
            assert await relay.runtime.postcall.outbox.rows(first.call_sid) == []
            second = relay.call(call_sid=first.call_sid, to=first.to)
            second.url = first.url
            await second.connect()
            assert (await second.say("Do you go to Geelong?")).text == "Yes, Geelong too."
            await second.close()
            await relay.session_closed(2)
            await relay.runtime.postcall.idle()
            await asyncio.wait_for(receiver.arrived.wait(), 10)
    finally:
        await receiver.stop()

    [(_, body)] = receiver.received
    document = orjson.loads(body)
    assert document["call_sid"] == first.call_sid
    assert document["usage"]["models"]["gpt-4o-mini"]["requests"] == 2  # the whole call


async def test_the_post_call_pass_reads_few_events_and_derives_what_reading_all_would(
    database_url: str,
) -> None:
    """The pass reads only the kinds outcomes and usage need, and of the reply's frames only
    an ``end`` that hands the call over: the same outcomes and usage as from every event,
    on SQLite and PostgreSQL (the JSON is read as text there too)."""
    from relay.services.postcall import _gather, derive
    from relay.storage.db import Database

    db = Database(database_url)
    await db.migrate()
    now = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("UTC"))
    raw = lambda frame: {"raw": orjson.dumps(frame).decode()}  # noqa: E731
    kinds_data = [
        ("frame_in", raw({"type": "prompt", "voicePrompt": "A person, please.", "last": True})),
        ("llm_request", {"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "A person, please."}]}}),
        *[("frame_out", raw({"type": "text", "token": f"word{i} ", "last": False})) for i in range(30)],
        ("llm_response", {"pieces": ["One moment."], "complete": True, "model": "gpt-4o-mini",
                          "usage": {"prompt_tokens": 120, "completion_tokens": 4}}),
        ("tool_result", {"name": "transfer_to_person", "content": "ok"}),
        ("frame_out", raw({"type": "end", "handoffData": orjson.dumps(
            {"reasonCode": "live-agent-handoff", "reason": "the caller asked"}).decode()})),
    ]  # fmt: skip
    try:
        await store_call(db, now, "server-shutdown", kinds_data)
        every = await _gather(db, "CA1", turns=False)
        lean = await _gather(db, "CA1", turns=False, every_event=False)
    finally:
        await db.engine.dispose()

    assert every is not None and lean is not None
    assert len(every["events"]) == 35
    # the 30 token frames are not read; the end frame with the handoff is
    assert [e["kind"] for e in lean["events"]] == [
        "frame_in", "llm_request", "llm_response", "tool_result", "frame_out",
    ]  # fmt: skip
    prices = costs.PriceTable()
    assert derive(lean, prices) == derive(every, prices)
    assert derive(lean, prices)["outcomes"] == ["transferred"]
    assert derive(lean, prices)["usage"]["prompt_tokens"] == 120


async def test_a_second_pass_replaces_the_analysis_and_keeps_what_the_model_found(
    database_url: str,
) -> None:
    """The post-call pass stores its analysis in one upsert: a second pass over the same call
    (a call that came back, ``relay outcomes recompute``) replaces the derived figures and
    keeps the analysis fields, summary and their time, on SQLite and PostgreSQL."""
    from sqlalchemy import insert, update

    from relay.services.postcall import PostCall, call_record
    from relay.storage.db import Database
    from relay.storage.models import Event
    from relay.storage.outcomes import CallAnalysis

    db = Database(database_url)
    await db.migrate()
    now = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("UTC"))
    later = datetime(2026, 12, 1, 9, 5, tzinfo=ZoneInfo("UTC"))
    clock = iter([now, later])
    response = {"pieces": ["Hello."], "complete": True, "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 100, "completion_tokens": 5}}  # fmt: skip
    passes = PostCall(
        db, argparse.Namespace(agents={}), costs.PriceTable(), now=lambda: next(clock)
    )
    try:
        await store_call(db, now, "caller-hangup", [("llm_response", response)])
        first = await passes.process("CA1", deliver=False)
        assert first is not None and first["usage"]["prompt_tokens"] == 100
        async with db.session() as session, session.begin():
            await session.execute(
                update(CallAnalysis)
                .where(CallAnalysis.call_sid == "CA1")
                .values(fields={"piano": "upright"}, summary="Asked about a move.", analysed_at=now)
            )
            await session.execute(
                insert(Event).values(call_sid="CA1", session_id="S1", seq=2, t=2.0, at=now,
                                     kind="llm_response", data=response)
            )  # fmt: skip
        second = await passes.process("CA1", deliver=False)
        record = await call_record(db, "CA1", costs.PriceTable())
        async with db.session() as session:
            rows = (await session.execute(select_analyses())).all()
    finally:
        await db.close()

    assert second is not None and second["usage"]["prompt_tokens"] == 200
    assert len(rows) == 1
    [(computed_at, analysed_at, fields, summary, usage, ending)] = rows
    # read back as naive UTC on both databases (relay.storage.models.UtcDateTime)
    assert computed_at == later.replace(tzinfo=None) and analysed_at == now.replace(tzinfo=None)
    assert fields == {"piano": "upright"} and summary == "Asked about a move."
    assert usage["prompt_tokens"] == 200 and ending == "caller-hangup"
    assert record is not None and record["fields"] == {"piano": "upright"}
    assert record["usage"]["prompt_tokens"] == 200


def select_analyses() -> Any:
    from sqlalchemy import select

    from relay.storage.outcomes import CallAnalysis

    return select(
        CallAnalysis.computed_at, CallAnalysis.analysed_at, CallAnalysis.fields,
        CallAnalysis.summary, CallAnalysis.usage, CallAnalysis.ending,
    )  # fmt: skip


async def store_call(
    db: Any, now: datetime, outcome: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """Call ``CA1`` of session ``S1``, completed with ``outcome``, with ``events`` (kind, data)
    numbered from 1."""
    from sqlalchemy import insert

    from relay.storage.models import Call, Event, RelaySession

    async with db.session() as session, session.begin():
        await session.execute(
            insert(Call).values(call_sid="CA1", agent="piano-removals", started_at=now,
                                ended_at=now, status="completed", outcome=outcome)
        )  # fmt: skip
        await session.execute(
            insert(RelaySession).values(session_id="S1", call_sid="CA1",
                                        agent="piano-removals", started_at=now, ended_at=now)
        )  # fmt: skip
        await session.execute(
            insert(Event),
            [{"call_sid": "CA1", "session_id": "S1", "seq": seq, "t": float(seq), "at": now,
              "kind": kind, "data": data} for seq, (kind, data) in enumerate(events, 1)],
        )  # fmt: skip


async def test_a_second_pass_over_a_purged_call_keeps_its_analysis(database_url: str) -> None:
    """Retention deleted the call's events and turns (README, "Retention and privacy"): another
    pass (``relay sessions analyze``) keeps the outcomes, usage and cost worked out while the
    recording was whole instead of deriving them again from nothing, on SQLite and PostgreSQL."""
    from datetime import timedelta

    from relay.agents import AgentRegistry
    from relay.services import retention
    from relay.services.postcall import PostCall
    from relay.storage.db import Database

    db = Database(database_url)
    await db.migrate()
    now = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("UTC"))
    response = {"pieces": ["Hello."], "complete": True, "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 100, "completion_tokens": 5}}  # fmt: skip
    prices = costs.PriceTable(
        models={"gpt-4o-mini": costs.ModelPrice(prompt=0.15, completion=0.6)},
        relay_per_minute=0.07,
    )
    passes = PostCall(db, AgentRegistry.load(REPO / "prompts"), prices, now=lambda: now)
    try:
        await store_call(db, now, "caller-hangup", [("llm_response", response)])
        first = await passes.process("CA1", deliver=False)
        purged = await retention.purge(db, older_than_days=0, now=now + timedelta(days=1))
        second = await passes.process("CA1", deliver=False)
        stored = await get_analysis(db, "CA1")
    finally:
        await db.close()

    assert first is not None and first["outcomes"] == ["abandoned"]
    assert first["usage"]["prompt_tokens"] == 100 and first["cost"]["llm"] > 0
    assert purged.rows["events"] == 1
    assert second is not None and second["kept"] == "purged"
    assert (second["outcomes"], second["usage"], second["cost"]) == (
        first["outcomes"], first["usage"], first["cost"],
    )  # fmt: skip
    assert stored is not None and stored.usage == first["usage"] and stored.cost == first["cost"]
    assert passes.processed == 1
