"""``relay demo-data``, ``relay remind`` and ``relay business feed-url``, run as commands."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
import structlog
from sqlalchemy import func, select

from relay.cli.main import main
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Quote, SideEffect, Vehicle
from relay.web import feeds

REPO = Path(__file__).resolve().parents[2]
MEL = ZoneInfo("Australia/Melbourne")
ACCOUNT = "AC" + "1" * 32
CALLS_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
ALLOWED, OTHER = "+61491570006", "+61491570156"


@pytest.fixture
def env(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., str]]:
    """Settings for the commands: the shipped agents, a copy of their data, a temp database.

    The commands configure structlog to print to the (captured) stderr of the test; it is reset
    afterwards so later tests do not log to a closed file."""
    data = tmp_path / "data"
    for business in ("car-service", "piano-removals"):
        shutil.copytree(REPO / "data" / business, data / business)
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    monkeypatch.chdir(tmp_path)  # no .env from the working directory
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("RELAY_DATA_DIR", str(data))
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("RELAY_LOG_LEVEL", "warning")

    def setenv(**values: str) -> str:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return url

    yield setenv
    structlog.reset_defaults()


def _db(url: str, work: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        db = Database(url)
        try:
            await db.migrate()
            async with db.session() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await db.close()

    return asyncio.run(run())


def _counts(url: str) -> dict[str, int]:
    async def count(session: Any) -> dict[str, int]:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (Customer, Vehicle, Booking, Quote)
        }

    result: dict[str, int] = _db(url, count)
    return result


def test_demo_data_is_realistic_and_idempotent(
    env: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = env()
    assert main(["demo-data", "--customers", "9"]) == 0
    first = capsys.readouterr().out
    counts = _counts(url)
    assert main(["demo-data", "--customers", "9"]) == 0
    second = capsys.readouterr().out

    assert first.startswith(
        "Demo data for car-service, piano-removals: created 9 customers, 9 vehicles, 3 appointments, 2 quotes"
    )
    assert "created 0 customers, 0 vehicles, 0 appointments, 0 quotes, 0 moves" in second
    assert _counts(url) == counts
    assert counts["customers"] == 9 and counts["vehicles"] == 9 and counts["quotes"] == 2

    async def rows(session: Any) -> tuple[list[Customer], list[Vehicle], list[Booking]]:
        return (
            list((await session.scalars(select(Customer))).all()),
            list((await session.scalars(select(Vehicle))).all()),
            list(
                (await session.scalars(select(Booking).where(Booking.kind == "appointment"))).all()
            ),
        )

    customers, vehicles, appointments = _db(url, rows)
    assert all(
        c.phone.startswith("+614") and len(c.phone) == 12 and " " in c.name for c in customers
    )
    assert all(
        v.rego and v.rego.isalnum() and v.rego.isupper() and v.make and v.year for v in vehicles
    )
    assert all(a.phone and a.vehicle_id and a.service for a in appointments)

    assert main(["demo-data", "--customers", "12", "--agent", "car-service"]) == 0
    assert (
        "created 3 customers, 3 vehicles, 1 appointments, 0 quotes, 0 moves"
        in capsys.readouterr().out
    )


def _tomorrows_appointments(url: str) -> list[str]:
    tomorrow = datetime.now(MEL).date() + timedelta(days=1)

    async def add(session: Any) -> list[str]:
        refs = []
        for ref, phone, name, hour in (
            ("700001", ALLOWED, "Sarah Kelly", 9),
            ("700002", OTHER, "Tom Nguyen", 11),
        ):
            start = datetime.combine(tomorrow, time(hour), tzinfo=MEL).astimezone(UTC)
            session.add(
                Booking(id=ref, agent="car-service", kind="appointment", service="logbook-minor", phone=phone,
                        name=name, starts_at=start, ends_at=start + timedelta(minutes=90), status="booked",
                        created_at=start, updated_at=start)
            )  # fmt: skip
            refs.append(ref)
        # Not reminded: cancelled, or another day.
        later = datetime.combine(tomorrow + timedelta(days=1), time(9), tzinfo=MEL).astimezone(UTC)
        session.add(Booking(id="700003", agent="car-service", kind="appointment", service="battery", phone=OTHER,
                            name="Tom", starts_at=later, ends_at=later + timedelta(hours=1), status="booked",
                            created_at=later, updated_at=later))  # fmt: skip
        return refs

    refs: list[str] = _db(url, add)
    return refs


def test_remind_dry_run_calls_nobody(
    env: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = env()
    _tomorrows_appointments(url)
    with respx.mock() as twilio:
        assert main(["remind", "--date", "tomorrow", "--dry-run", "--allow", ALLOWED]) == 0
    assert twilio.calls.call_count == 0
    out = capsys.readouterr().out
    assert "dry run: nobody is called" in out
    assert "700001  " in out and f"Sarah Kelly  {ALLOWED}  minor logbook service: would call" in out
    assert (
        f"Tom Nguyen  {OTHER}  minor logbook service: not allowed (not on the allow-list; --live calls it)"
        in out
    )
    assert "700003" not in out


def test_remind_places_calls_through_twilio(
    env: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = env(
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_AUTH_TOKEN="auth-token",
        RELAY_PUBLIC_URL="https://voice.example.com",
    )
    _tomorrows_appointments(url)
    with respx.mock(assert_all_called=True) as twilio:
        route = twilio.post(CALLS_URL).mock(
            side_effect=[
                httpx.Response(201, json={"sid": f"CA{n:032d}", "status": "queued"}) for n in (1, 2)
            ]
        )
        # Only the allow-listed number is called without --live.
        assert main(["remind", "--allow", ALLOWED]) == 0
        assert route.call_count == 1
        form = parse_qs(route.calls[0].request.content.decode())
        assert form["To"] == [ALLOWED] and form["From"] == ["+61390005678"]
        connect = ElementTree.fromstring(form["Twiml"][0]).find("Connect")
        assert connect is not None and connect.get("action") == "https://voice.example.com/handoff"
        relay = connect.find("ConversationRelay")
        assert relay is not None and relay.get("url") == "wss://voice.example.com/ws"
        parameters = {p.get("name"): p.get("value") for p in relay.iter("Parameter")}
        greeting = (
            "Hi Sarah, it's Northside Auto Care calling to remind you about your minor logbook "
            "service tomorrow at 9 am. Does that time still suit you?"
        )
        assert parameters == {"agent": "reminders", "booking": "700001", "greeting": greeting}
        assert relay.get("welcomeGreeting") == greeting
        first = capsys.readouterr().out
        assert f"{ALLOWED}  minor logbook service: called (CA{1:032d})" in first
        assert f"{OTHER}  minor logbook service: not allowed" in first

        # Again, with --live: the first is not called twice, the second is called now.
        assert main(["remind", "--live"]) == 0
        assert route.call_count == 2
        assert parse_qs(route.calls[1].request.content.decode())["To"] == [OTHER]
        again = capsys.readouterr().out
        assert "minor logbook service: already called (called: CA" in again
        assert f"{OTHER}  minor logbook service: called (CA{2:032d})" in again

    async def ledger(session: Any) -> list[str]:
        return list(
            (
                await session.scalars(select(SideEffect.status).where(SideEffect.tool == "remind"))
            ).all()
        )

    assert _db(url, ledger) == ["done", "done"]


def test_remind_needs_twilio_unless_dry_run(
    env: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    env()
    assert main(["remind", "--live"]) == 2
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set" in capsys.readouterr().err


def test_feed_url_command(env: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    env(RELAY_ADMIN_TOKEN="admin-token", RELAY_PUBLIC_URL="https://voice.example.com")
    assert main(["business", "feed-url", "car-service"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == feeds.feed_url(
        "car-service", base_url="https://voice.example.com", secret=b"admin-token"
    )
    assert printed.startswith(
        "https://voice.example.com/calendar/car-service/"
    ) and printed.endswith(".ics")
    assert main(["business", "feed-url", "nobody"]) == 1


def test_feed_url_says_when_it_is_keyed_on_the_generated_secret(
    env: Callable[..., str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Run where the server's RELAY_ADMIN_TOKEN is not set, the URL is not the server's.
    env(RELAY_PUBLIC_URL="https://voice.example.com")
    assert main(["business", "feed-url", "car-service"]) == 0
    out, err = capsys.readouterr()
    generated = tmp_path / "data" / "runtime" / "feed-secret"
    secret = generated.read_text().strip().encode()
    assert out.strip() == feeds.feed_url(
        "car-service", base_url="https://voice.example.com", secret=secret
    )
    assert err == (
        f"relay: keyed on the generated secret in {generated} "
        "(neither RELAY_FEED_SECRET nor RELAY_ADMIN_TOKEN is set here); run this with the "
        "server's settings if it has either.\n"
    )

    env(RELAY_ADMIN_TOKEN="admin-token", RELAY_PUBLIC_URL="https://voice.example.com")
    assert main(["business", "feed-url", "car-service"]) == 0
    assert capsys.readouterr().err == ""
