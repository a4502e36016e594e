"""Reminder calls' TwiML: the same ConversationRelay URL as an inbound call's, so that Twilio
accepts it (``wss://`` only) and the upgrade's signature checks out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from urllib.parse import parse_qs
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from starlette.datastructures import URL, Headers

from relay.agents import AgentRegistry
from relay.protocol.signatures import FastValidator, SignatureChecker
from relay.services import messaging
from relay.services.reminders import send_reminders
from relay.storage.db import Database
from relay.storage.models import Booking

REPO = Path(__file__).resolve().parents[2]
MEL = ZoneInfo("Australia/Melbourne")
ACCOUNT = "AC" + "1" * 32
CALLS_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
TOKEN = "auth-token"
PHONE = "+61491570006"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=MEL)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await database.migrate()
    start = datetime.combine(NOW.date() + timedelta(days=1), time(9), tzinfo=MEL).astimezone(UTC)
    async with database.session() as session:
        session.add(
            Booking(id="700001", agent="car-service", kind="appointment", service="logbook-minor",
                    phone=PHONE, name="Sarah Kelly", starts_at=start,
                    ends_at=start + timedelta(minutes=90), status="booked", created_at=start,
                    updated_at=start)
        )  # fmt: skip
        await session.commit()
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.parametrize(
    ("public_url", "ws_url", "action_url"),
    [
        ("http://voice.example.com", "wss://voice.example.com/ws", "http://voice.example.com/handoff"),
        ("https://voice.example.com", "wss://voice.example.com/ws", "https://voice.example.com/handoff"),
        ("https://example.com/relay", "wss://example.com/relay/ws", "https://example.com/relay/handoff"),
    ],
)  # fmt: skip
async def test_a_reminder_call_connects_to_the_url_inbound_calls_use(
    db: Database, public_url: str, ws_url: str, action_url: str
) -> None:
    agents = AgentRegistry.load(REPO / "prompts")
    with respx.mock(assert_all_called=True) as twilio:
        route = twilio.post(CALLS_URL).mock(
            return_value=httpx.Response(201, json={"sid": "CA" + "0" * 32, "status": "queued"})
        )
        async with httpx.AsyncClient() as http:
            [reminder] = await send_reminders(
                db, http, agent=agents.get("reminders"), owner=agents.get("car-service"),
                services={}, day=NOW.date() + timedelta(days=1), now=NOW, allow=[PHONE],
                live=False, dry_run=False, creds=messaging.credentials(ACCOUNT, TOKEN),
                public_url=public_url, caller_id="+61390005678",
            )  # fmt: skip
    assert reminder.outcome == "called"
    twiml = parse_qs(route.calls[0].request.content.decode())["Twiml"][0]
    connect = ElementTree.fromstring(twiml).find("Connect")
    assert connect is not None
    relay = connect.find("ConversationRelay")
    assert relay is not None
    assert (relay.get("url"), connect.get("action")) == (ws_url, action_url)

    # What the inbound TwiML says for the same RELAY_PUBLIC_URL ...
    checker = SignatureChecker(TOKEN, public_url=public_url)
    assert checker.public_ws_url("/ws", Headers()) == ws_url
    # ... and Twilio's upgrade, signed over the URL as written, passes the check.
    signature = FastValidator(TOKEN).compute_signature(ws_url, {})
    upgrade = URL("ws://127.0.0.1:8000/ws")  # the internal URL the server sees behind a proxy
    assert checker.check_ws(upgrade, Headers({"x-twilio-signature": signature}))
