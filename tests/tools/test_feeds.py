"""The calendar feed, served by a tiny app built from ``feeds.routes()``."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from icalendar import Calendar
from starlette.applications import Starlette
from starlette.testclient import TestClient

from relay.agents import AgentRegistry
from relay.storage.db import Database
from relay.storage.models import Booking, Quote
from relay.web import feeds

NOW = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)


def _seed(url: str) -> None:
    async def run() -> None:
        db = Database(url)
        try:
            await _rows(db)
        finally:
            await db.close()

    async def _rows(db: Database) -> None:
        await db.migrate()
        async with db.session() as session, session.begin():
            session.add(
                Quote(id="Q100001", agent="piano-removals", inputs={"pickup_place": "Brunswick VIC 3056",
                      "dropoff_place": "Coburg VIC 3058"}, breakdown=[], total_cents=35000, currency="AUD",
                      status="booked", created_at=NOW)
            )  # fmt: skip
            await session.flush()  # the quote before the booking that refers to it
            rows = [
                ("400001", "car-service", "appointment", "logbook-minor", None, "booked", 22),
                ("400002", "car-service", "appointment", "battery", None, "cancelled", 23),
                ("400003", "piano-removals", "move", "upright", "Q100001", "booked", 22),
            ]
            for ref, agent, kind, service, quote, status, hour in rows:
                start = datetime(2026, 11, 23, hour, 0, tzinfo=UTC)
                session.add(
                    Booking(id=ref, agent=agent, kind=kind, service=service, quote_id=quote,
                            phone="+61412000111", name="Sarah Kelly", starts_at=start,
                            ends_at=start + timedelta(hours=1), status=status, created_at=NOW,
                            updated_at=NOW)
                )  # fmt: skip

    asyncio.run(run())


def _client(
    url: str, settings: Any, agents: AgentRegistry, services: dict[str, Any]
) -> tuple[TestClient, Database]:
    db = Database(url)
    app = Starlette(routes=feeds.routes())
    app.state.runtime = SimpleNamespace(
        deps=SimpleNamespace(db=db, agents=agents, services=services, now=lambda: NOW),
        settings=settings,
        feed_secret=None,
    )
    return TestClient(app), db


def test_feed_serves_bookings_for_the_right_token(
    tmp_path: Path, agents: AgentRegistry, services: dict[str, Any]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    _seed(url)
    settings = SimpleNamespace(feed_secret=None, admin_token="admin-token", data_dir=tmp_path)
    client, db = _client(url, settings, agents, services)
    secret = feeds.settings_secret(settings)
    address = feeds.feed_url("car-service", base_url="http://testserver", secret=secret)
    assert (
        address
        == f"http://testserver/calendar/car-service/{feeds.feed_token(b'admin-token', 'car-service')}.ics"
    )

    with client:
        response = client.get(address)
        piano = client.get(
            feeds.feed_url("piano-removals", base_url="http://testserver", secret=secret)
        )
        wrong = client.get("/calendar/car-service/" + "0" * 40 + ".ics")
        swapped = client.get(address.replace("car-service/", "piano-removals/"))
        unknown = client.get(feeds.feed_url("nobody", base_url="http://testserver", secret=secret))
        client.portal.call(db.close)  # type: ignore[union-attr]

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/calendar; charset=utf-8"
    calendar = Calendar.from_ical(response.content)
    assert str(calendar["X-WR-CALNAME"]) == "Northside Auto Care bookings"
    events = {str(e["UID"]): e for e in calendar.walk("VEVENT")}
    assert set(events) == {"booking-400001@car-service.relay", "booking-400002@car-service.relay"}
    minor = events["booking-400001@car-service.relay"]
    assert str(minor["SUMMARY"]) == "Minor logbook service (Sarah Kelly)"
    assert minor.decoded("DTSTART") == datetime(2026, 11, 23, 22, 0, tzinfo=UTC)
    assert str(minor["DTSTART"].params["TZID"]) == "Australia/Melbourne"
    assert str(events["booking-400002@car-service.relay"]["STATUS"]) == "CANCELLED"

    move = next(iter(Calendar.from_ical(piano.content).walk("VEVENT")))
    assert str(move["SUMMARY"]) == "Piano move: Brunswick VIC 3056 to Coburg VIC 3058 (Sarah Kelly)"
    assert "Quote Q100001: $350" in str(move["DESCRIPTION"])

    for refused in (wrong, swapped, unknown):
        assert refused.status_code == 404 and refused.text == "Not Found"


def test_a_random_secret_is_made_once_per_install(tmp_path: Path) -> None:
    settings = SimpleNamespace(feed_secret=None, admin_token=None, data_dir=tmp_path / "data")
    first = feeds.settings_secret(settings)
    assert first == feeds.settings_secret(settings) and len(first) == 64
    path = tmp_path / "data" / feeds.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # RELAY_FEED_SECRET, when set, wins over the admin token and the file.
    chosen = SimpleNamespace(feed_secret="from-env", admin_token="admin", data_dir=tmp_path)
    assert feeds.settings_secret(chosen) == b"from-env"
