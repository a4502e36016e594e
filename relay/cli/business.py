"""Business commands: ``relay demo-data``, ``relay remind`` and ``relay business feed-url``.

``demo-data`` fills the database with made-up but realistic customers, cars, appointments,
quotes and moves, the same ones every time (run it twice and nothing changes). Its mobile
numbers are from the Australian regulator's list of numbers set aside for fiction, so a demo
never rings a real person.

``remind`` calls each customer with an appointment on a day (tomorrow by default) through
Twilio's REST API; the call connects to the ``reminders`` agent, which confirms or moves the
booking. It only calls numbers on an allow-list (``RELAY_REMIND_ALLOW`` or ``--allow``) unless
``--live`` is given, and each booking is called at most once (the idempotency ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import httpx

from relay.agents import AgentProfile, AgentRegistry
from relay.cli.common import settings_from
from relay.domain import pricing
from relay.domain.places import Gazetteer, distance_km
from relay.domain.scheduling import (
    BusinessCalendar,
    Catalogue,
    available_slots,
    available_windows,
    spoken_date,
)
from relay.errors import ConfigError
from relay.services import messaging
from relay.services.customers import bookings_owner, normalise_phone, normalise_rego
from relay.services.reminders import Reminder, send_reminders
from relay.storage import business as store
from relay.storage.db import Database
from relay.storage.models import Booking, Customer, Quote, Vehicle
from relay.tools.business import load_services

__all__ = [
    "DEMO_MOBILES",
    "DemoReport",
    "Reminder",
    "add_parser",
    "seed_demo_data",
    "send_reminders",
]


def add_parser(commands: Any) -> None:
    """Add ``demo-data``, ``remind`` and ``business`` to the ``relay`` command."""
    demo = commands.add_parser(
        "demo-data", help="fill the database with demo customers, cars, bookings and quotes"
    )
    demo.add_argument(
        "--agent",
        action="append",
        help="only for this agent (repeatable; default: every agent with business data)",
    )
    demo.add_argument(
        "--customers",
        type=int,
        default=20,
        help=f"how many customers (at most {len(DEMO_MOBILES)}; default 20)",
    )
    demo.set_defaults(handler=_demo_data)

    remind = commands.add_parser(
        "remind", help="phone customers to confirm their appointments (Twilio outbound calls)"
    )
    remind.add_argument(
        "--date",
        default="tomorrow",
        help="the appointments' day: tomorrow, today or YYYY-MM-DD (default tomorrow)",
    )
    remind.add_argument(
        "--agent", default="reminders", help="the agent that makes the calls (default reminders)"
    )
    remind.add_argument(
        "--dry-run", action="store_true", help="list who would be called, call nobody"
    )
    remind.add_argument(
        "--live", action="store_true", help="also call numbers that are not on the allow-list"
    )
    remind.add_argument("--allow", action="append", default=[], metavar="NUMBER",
                        help="a number that may be called without --live (repeatable, or comma-separated; adds to RELAY_REMIND_ALLOW)")  # fmt: skip
    remind.set_defaults(handler=_remind)

    business = commands.add_parser("business", help="business set-up: calendar feed URLs")
    business.set_defaults(handler=lambda args: _help(business))
    sub = business.add_subparsers(title="business commands", metavar="COMMAND")
    url = sub.add_parser(
        "feed-url", help="print the secret calendar (.ics) URL of an agent's bookings"
    )
    url.add_argument("agent", help="the agent, e.g. car-service")
    url.set_defaults(handler=_feed_url)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# == demo data ===================================================================================

#: Mobile numbers the ACMA sets aside for use in creative works (none belongs to anyone).
DEMO_MOBILES = (
    "+61491570006", "+61491570156", "+61491570157", "+61491570158", "+61491570159",
    "+61491570110", "+61491570313", "+61491570737", "+61491571266", "+61491571491",
    "+61491571804", "+61491572549", "+61491572665", "+61491572983", "+61491573770",
    "+61491573087", "+61491574118", "+61491574632", "+61491575254", "+61491575789",
    "+61491576398", "+61491576801", "+61491577426", "+61491577644", "+61491578957",
    "+61491578148", "+61491578888", "+61491579212", "+61491579760", "+61491579455",
)  # fmt: skip

_FIRST_NAMES = (
    "Olivia", "Charlotte", "Amelia", "Isla", "Mia", "Grace", "Chloe", "Sophie", "Ruby", "Zoe",
    "Jack", "Oliver", "Noah", "William", "Thomas", "Lachlan", "Cooper", "Harrison", "Liam", "Ethan",
    "Priya", "Arjun", "Mei", "Linh", "Minh", "Sofia", "Marco", "Giulia", "Nikos", "Eleni",
    "Ahmed", "Fatima", "Bec", "Kylie", "Shane", "Darren",
)  # fmt: skip
_SURNAMES = (
    "Smith", "Jones", "Williams", "Brown", "Wilson", "Taylor", "Nguyen", "Tran", "Kelly", "Ryan",
    "Murphy", "O'Brien", "Walsh", "Rossi", "Russo", "Romano", "Papadopoulos", "Georgiou", "Singh",
    "Sharma", "Patel", "Chen", "Wang", "Khoury", "Haddad", "Mitchell", "Campbell", "Thompson",
    "Anderson", "Martin",
)  # fmt: skip
# Popular cars on Australian roads: (make, model, first model year, last model year).
_CARS = (
    ("Toyota", "Corolla", 2008, 2025), ("Toyota", "Camry", 2008, 2025), ("Toyota", "RAV4", 2010, 2025),
    ("Toyota", "HiLux", 2008, 2025), ("Toyota", "LandCruiser Prado", 2010, 2024), ("Mazda", "3", 2009, 2025),
    ("Mazda", "CX-5", 2012, 2025), ("Mazda", "BT-50", 2012, 2025), ("Hyundai", "i30", 2009, 2025),
    ("Hyundai", "Tucson", 2015, 2025), ("Kia", "Cerato", 2010, 2025), ("Kia", "Sportage", 2011, 2025),
    ("Ford", "Ranger", 2009, 2025), ("Ford", "Focus", 2008, 2020), ("Holden", "Commodore", 2008, 2020),
    ("Mitsubishi", "Outlander", 2010, 2025), ("Mitsubishi", "Triton", 2010, 2025),
    ("Subaru", "Forester", 2010, 2025), ("Subaru", "Outback", 2010, 2025), ("Volkswagen", "Golf", 2009, 2024),
    ("Nissan", "X-Trail", 2010, 2025), ("Honda", "CR-V", 2010, 2025), ("Honda", "Jazz", 2009, 2021),
    ("Isuzu", "D-Max", 2012, 2025), ("MG", "ZS", 2018, 2025),
)  # fmt: skip
_PLATE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I, O or Q: they read as digits
_PIANOS = ("upright", "upright", "upright", "digital", "large_upright", "baby_grand", "grand")
_SEED = 20261119


@dataclass
class DemoReport:
    """Rows created by :func:`seed_demo_data`, and rows that were already there."""

    created: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)

    def count(self, table: str, *, new: bool) -> None:
        target = self.created if new else self.existing
        target[table] = target.get(table, 0) + 1

    def __str__(self) -> str:
        tables = ("customers", "vehicles", "appointments", "quotes", "moves")
        made = ", ".join(f"{self.created.get(t, 0)} {t}" for t in tables)
        kept = sum(self.existing.values())
        return f"created {made}; {kept} demo rows were already there"


async def seed_demo_data(
    db: Database,
    agents: Sequence[AgentProfile],
    services: Mapping[str, Mapping[str, Any]],
    *,
    customers: int,
    now: datetime,
) -> DemoReport:
    """Add demo rows for ``agents`` (each agent's own kind: cars and appointments for a
    business with a service catalogue, quotes and moves for one with a price list).

    Every row has a fixed key derived from the customer's number in the list (the phone, the
    rego, ``9xxxxx`` bookings, ``Q9xxxxx`` quotes), so a second run adds nothing, and a run with
    more customers adds only theirs. Bookings are placed in free times, so they respect capacity.
    """
    if not 1 <= customers <= len(DEMO_MOBILES):
        raise ConfigError(
            f"--customers must be between 1 and {len(DEMO_MOBILES)} (the demo mobile numbers)"
        )
    report = DemoReport()
    people = [_person(index, now) for index in range(customers)]
    async with db.session() as session, session.begin():
        ids: list[int] = []
        for person in people:
            existing = await store.customer_by_phone(session, person["phone"])
            report.count("customers", new=existing is None)
            if existing is None:
                existing = Customer(
                    phone=person["phone"], name=person["name"], created_at=person["since"]
                )
                session.add(existing)
                await session.flush()
            ids.append(existing.id)
    for agent in agents:
        data = services.get(agent.name, {})
        if isinstance(data.get("catalogue"), Catalogue) and isinstance(
            data.get("calendar"), BusinessCalendar
        ):
            await _demo_workshop(db, agent, data, people, ids, now, report)
        if isinstance(data.get("pricing"), pricing.PricingRules) and isinstance(
            data.get("places"), Gazetteer
        ):
            await _demo_moves(db, agent, data, people, ids, now, report)
    return report


def _person(index: int, now: datetime) -> dict[str, Any]:
    rng = random.Random(f"{_SEED}-person-{index}")
    return {
        "index": index,
        "name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}",
        "phone": DEMO_MOBILES[index],
        "since": store.utc(now) - timedelta(days=rng.randint(30, 2000)),
    }


async def _demo_workshop(
    db: Database,
    agent: AgentProfile,
    data: Mapping[str, Any],
    people: list[dict[str, Any]],
    ids: list[int],
    now: datetime,
    report: DemoReport,
) -> None:
    catalogue: Catalogue = data["catalogue"]
    calendar: BusinessCalendar = data["calendar"]
    owner = str(data.get("bookings_agent") or agent.name)
    today = now.astimezone(calendar.zone).date()
    for person, customer_id in zip(people, ids, strict=True):
        rng = random.Random(f"{_SEED}-car-{person['index']}")
        make, model, first, last = rng.choice(_CARS)
        year = rng.randint(first, min(last, today.year))
        rego = _plate(rng, year)
        async with db.session() as session, session.begin():
            car = await store.vehicle_by_rego(session, rego)
            report.count("vehicles", new=car is None)
            if car is None:
                car = Vehicle(
                    customer_id=customer_id, make=make, model=model, year=year, rego=rego,
                    odometer_km=max(500, (today.year - year) * rng.randint(9000, 17000) + rng.randint(0, 999)),
                    last_service=today - timedelta(days=rng.randint(60, 400)),
                )  # fmt: skip
                session.add(car)
                await session.flush()
            vehicle_id = car.id
        # Every third customer has an appointment; the first two are tomorrow, for `relay remind`.
        if person["index"] % 3 != 0:
            continue
        ref = f"9{person['index']:05d}"
        service = rng.choice(catalogue.services)
        ahead = 1 if person["index"] < 6 else rng.randint(2, 12)
        async with store.booking_transaction(db, scope=owner) as session:
            if await session.get(Booking, ref) is not None:
                report.count("appointments", new=False)
                continue
            busy = await store.busy_intervals(
                session, agent=owner, start=now, end=now + timedelta(days=calendar.horizon_days + 2)
            )
            slots = []
            for offset in range(ahead, ahead + 7):  # that day, or the next open one
                slots = available_slots(
                    calendar,
                    duration=service.duration,
                    day=today + timedelta(days=offset),
                    busy=busy,
                    now=now,
                    limit=6,
                )
                if slots:
                    break
            if not slots:
                continue
            slot = rng.choice(slots)
            session.add(
                Booking(
                    id=ref, agent=owner, kind="appointment", service=service.id, customer_id=customer_id,
                    vehicle_id=vehicle_id, phone=person["phone"], name=person["name"],
                    starts_at=store.utc(slot.start), ends_at=store.utc(slot.end), status="booked",
                    notes="Demo booking", created_at=store.utc(now), updated_at=store.utc(now),
                )
            )  # fmt: skip
            report.count("appointments", new=True)


def _plate(rng: random.Random, year: int) -> str:
    """A Victorian-style plate: 1AB2CD for newer cars, ABC123 for older ones."""

    def letters(n: int) -> str:
        return "".join(rng.choice(_PLATE_LETTERS) for _ in range(n))

    if year >= 2014:
        return normalise_rego(f"{rng.randint(1, 2)}{letters(2)}{rng.randint(1, 9)}{letters(2)}")
    return normalise_rego(f"{letters(3)}{rng.randint(100, 999)}")


async def _demo_moves(
    db: Database,
    agent: AgentProfile,
    data: Mapping[str, Any],
    people: list[dict[str, Any]],
    ids: list[int],
    now: datetime,
    report: DemoReport,
) -> None:
    rules: pricing.PricingRules = data["pricing"]
    places: Gazetteer = data["places"]
    calendar = data.get("calendar")
    owner = str(data.get("bookings_agent") or agent.name)
    today = now.astimezone(rules.tz).date()
    metro = [p for p in places.places if p.postcode.startswith("30") or p.postcode.startswith("31")]
    for person, customer_id in zip(people, ids, strict=True):
        if person["index"] % 4 != 1:  # a quarter of the customers asked for a quote
            continue
        rng = random.Random(f"{_SEED}-move-{person['index']}")
        quote_id = f"Q9{person['index']:05d}"
        start, end = rng.sample(metro, 2)
        day = today + timedelta(days=rng.randint(3, 25))
        while not rules.is_open(day) or (
            isinstance(calendar, BusinessCalendar) and day in calendar.holidays
        ):
            day += timedelta(days=1)
        request = pricing.QuoteRequest(
            piano_type=rng.choice(_PIANOS), pickup=start.label, dropoff=end.label, move_date=day,
            pickup_steps=rng.choice((0, 0, 3, 8, 15)), dropoff_floors=rng.choice((0, 0, 0, 1, 2)),
        )  # fmt: skip
        priced = pricing.quote(
            rules,
            request,
            today=today,
            distance_km=distance_km(start, end, rules.distance.road_factor),
        )
        async with db.session() as session, session.begin():
            exists = await session.get(Quote, quote_id) is not None
            report.count("quotes", new=not exists)
            if not exists:
                session.add(
                    Quote(
                        id=quote_id, agent=owner, call_sid=None, caller=person["phone"],
                        inputs={"piano": priced.piano_type.value, "pickup_place": start.label,
                                "dropoff_place": end.label, "move_date": day.isoformat(),
                                "gst_included": priced.gst_included, "demo": True},
                        breakdown=[{"kind": line.kind.value, "label": line.label, "amount_cents": line.amount_cents,
                                    "phrase": line.phrase} for line in priced.lines],
                        total_cents=priced.total_cents, currency=priced.currency, move_date=day,
                        valid_until=priced.valid_until, status="quoted", created_at=store.utc(now),
                    )
                )  # fmt: skip
        if (
            rng.random() < 0.5
            or not isinstance(calendar, BusinessCalendar)
            or not calendar.uses_windows
        ):
            continue
        ref = f"8{person['index']:05d}"
        async with store.booking_transaction(db, scope=owner) as session:
            if await session.get(Booking, ref) is not None:
                report.count("moves", new=False)
                continue
            quote = await session.get(Quote, quote_id)
            if quote is None or quote.status != "quoted":
                continue
            busy = await store.busy_intervals(
                session, agent=owner, start=now, end=now + timedelta(days=calendar.horizon_days + 2)
            )
            windows = available_windows(calendar, day=day, busy=busy, now=now)
            if not windows:
                continue
            slot = windows[0]
            session.add(
                Booking(
                    id=ref, agent=owner, kind="move", quote_id=quote_id, service=priced.piano_type.value,
                    customer_id=customer_id, phone=person["phone"], name=person["name"],
                    starts_at=store.utc(slot.start), ends_at=store.utc(slot.end), status="booked",
                    notes=f"Pick-up: {start.label}\nDrop-off: {end.label}\nDemo booking",
                    created_at=store.utc(now), updated_at=store.utc(now),
                )
            )  # fmt: skip
            quote.status = "booked"
            report.count("moves", new=True)


def _demo_data(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    registry = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    chosen = (
        [registry.get(name) for name in args.agent]
        if args.agent
        else list(registry.agents.values())
    )
    services = {agent.name: load_services(agent, settings.data_dir) for agent in chosen}
    # An agent working on another's bookings (reminders) adds nothing of its own.
    chosen = [agent for agent in chosen if bookings_owner(agent) == agent.name]

    async def run() -> DemoReport:
        db = Database(settings.database)
        try:
            await db.migrate()
            return await seed_demo_data(
                db, chosen, services, customers=args.customers, now=datetime.now(UTC)
            )
        finally:
            await db.close()

    report = asyncio.run(run())
    print(f"Demo data for {', '.join(a.name for a in chosen) or 'no agent'}: {report}.")
    return 0


# == reminders ===================================================================================


def _reminder_day(text: str, zone: ZoneInfo, now: datetime) -> date:
    today = now.astimezone(zone).date()
    word = text.strip().lower()
    if word == "tomorrow":
        return today + timedelta(days=1)
    if word == "today":
        return today
    try:
        return date.fromisoformat(word)
    except ValueError:
        raise ConfigError(f"--date {text!r}: use tomorrow, today or YYYY-MM-DD") from None


def _allow_list(configured: str | None, flags: Iterable[str]) -> list[str]:
    numbers: list[str] = []
    for chunk in [configured or "", *flags]:
        for part in chunk.split(","):
            if not part.strip():
                continue
            number = normalise_phone(part)
            if number is None:
                raise ConfigError(f"allow-list: {part.strip()!r} is not a phone number")
            numbers.append(number)
    return numbers


def _remind(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = settings_from(args)
    registry = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    agent = registry.get(args.agent)
    owner = registry.get(bookings_owner(agent))
    services = load_services(owner, settings.data_dir)
    now = datetime.now(UTC)
    day = _reminder_day(args.date, ZoneInfo(owner.timezone), now)
    allow = _allow_list(getattr(settings, "remind_allow", None), args.allow)
    creds = messaging.credentials(settings.twilio_account_sid, settings.twilio_auth_token)

    async def run() -> list[Reminder]:
        db = Database(settings.database)
        try:
            await db.migrate()
            async with httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0)) as http:
                return await send_reminders(
                    db, http, agent=agent, owner=owner, services=services, day=day, now=now,
                    allow=allow, live=args.live, dry_run=args.dry_run, creds=creds,
                    public_url=settings.public_url, caller_id=getattr(settings, "caller_id", None),
                )  # fmt: skip
        finally:
            await db.close()

    results = asyncio.run(run())
    mode = (
        "dry run: nobody is called"
        if args.dry_run
        else ("live" if args.live else "allow-listed numbers only")
    )
    print(
        f"Reminders for {owner.business_name} on {spoken_date(day)} ({day.isoformat()}), {mode}:",
        file=out,
    )
    if not results:
        print("  no appointments that day.", file=out)
    for item in results:
        detail = f" ({item.detail})" if item.detail else ""
        print(
            f"  {item.booking}  {item.when}  {item.name or '-'}  {item.phone or '-'}  {item.what}: {item.outcome}{detail}",
            file=out,
        )
    return 1 if any(item.outcome == "failed" for item in results) else 0


# == calendar feed ===============================================================================


def _feed_url(args: argparse.Namespace) -> int:
    from relay.services import calendar_feed  # only this command reads the feed's secret

    settings = settings_from(args)
    registry = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    registry.get(args.agent)  # AgentNotFound names the agent
    base = settings.public_url
    if base is None:
        host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        base = f"http://{host}:{settings.port}"
        print(
            "relay: RELAY_PUBLIC_URL is not set; this URL only works on this machine.",
            file=sys.stderr,
        )
    secret = calendar_feed.settings_secret(settings)
    if not settings.feed_secret and not settings.admin_token:
        # The server keys its URLs on the first of these it has: one started with either
        # setting serves this agent's feed under another URL than this one.
        print(
            "relay: keyed on the generated secret in "
            f"{settings.data_dir / calendar_feed.SECRET_FILE} (neither RELAY_FEED_SECRET nor "
            "RELAY_ADMIN_TOKEN is set here); run this with the server's settings if it has "
            "either.",
            file=sys.stderr,
        )
    print(calendar_feed.feed_url(args.agent, base_url=base, secret=secret))
    return 0
