"""Console render times on a large database: ``python -m relay.web.console.bench``.

Generates a SQLite database (default 100,000 calls over 90 days, four turns and three events a
call, quotes, bookings and callback requests), starts the real app on it (lifespan, migrations,
the console signed in with an admin token) and times every console page in process through
Starlette's test client: the figures are server time plus a fraction of a millisecond of
in-process transport. Each page is requested ``--repeat`` times after one warm-up request; the
median and the worst are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from relay.storage.textsearch import INDEX_PENDING

AGENTS = ("piano-removals", "car-service")
OUTCOMES = ("hung-up", "completed-by-agent", "transferred", "completed-by-caller")
WORDS = [
    "piano",
    "move",
    "quote",
    "upright",
    "grand",
    "Tuesday",
    "stairs",
    "Richmond",
    "Geelong",
    "service",
    "brakes",
    "booking",
    "insurance",
    "price",
    "weekend",
    "crane",
    "tune",
    "storage",
]


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def generate(path: Path, calls: int, *, days: int = 90, live: int = 20, seed: int = 7) -> str:
    """Fill the (already migrated) database at ``path``; return one call SID to open."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    call_rows, turn_rows, event_rows = [], [], []
    quote_rows, booking_rows, ticket_rows = [], [], []
    sample = ""
    for n in range(calls):
        sid = f"CA{n:032x}"
        agent = AGENTS[n % 2]
        started = now - timedelta(seconds=rng.uniform(0, days * 86400))
        ended: datetime | None = started + timedelta(seconds=rng.uniform(20, 400))
        if n < live:
            started = now - timedelta(seconds=rng.uniform(5, 300))
            ended = None
        outcome = None if ended is None else rng.choice(OUTCOMES)
        caller = f"+614{rng.randrange(10**8):08d}"
        call_rows.append(
            (sid, agent, caller, "+61390001234", "inbound", "", "completed" if ended else "in-progress",
             outcome, None, None, _ts(started), _ts(ended) if ended else None, 1, 4)
        )  # fmt: skip
        for seq in range(4):
            role = "user" if seq % 2 else "assistant"
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            first = rng.lognormvariate(6.2, 0.3) if role == "assistant" and seq else None
            error = "the model timed out" if role == "assistant" and rng.random() < 0.01 else None
            turn_rows.append(
                (sid, "VX" + sid[2:], seq, role, text, False, False, None, text if role == "assistant" else None,
                 None, None, None, None, error, 1.0 if role == "user" else None, None,
                 1.01 if role == "assistant" and seq else None, None, None, None, None,
                 first, _ts(started + timedelta(seconds=seq * 5)))
            )  # fmt: skip
        for seq, (kind, data) in enumerate(
            (
                ("frame_in", {"raw": '{"type":"setup"}'}),
                ("frame_in", {"raw": orjson.dumps({"type": "prompt", "voicePrompt": "hello", "last": True}).decode()}),
                ("frame_out", {"raw": orjson.dumps({"type": "text", "token": "Hi.", "last": True}).decode()}),
            ),
            1,
        ):  # fmt: skip
            event_rows.append(
                (
                    sid,
                    "VX" + sid[2:],
                    seq,
                    float(seq),
                    _ts(started),
                    kind,
                    orjson.dumps(data).decode(),
                )
            )
        if n % 10 == 0:
            qid = f"Q{n:06d}"[:16]
            booked = n % 20 == 0
            quote_rows.append(
                (qid, agent, sid, caller, "{}", orjson.dumps([{"label": "Move", "amount_cents": 42000}]).decode(),
                 42000, "AUD", None, None, "booked" if booked else "quoted", _ts(started))
            )  # fmt: skip
            if booked:
                when = now + timedelta(days=rng.randint(-30, 30))
                booking_rows.append(
                    (f"{n:06d}"[:16], agent, "move", qid, None, None, None, caller, "Pat", _ts(when),
                     _ts(when + timedelta(hours=4)), "booked", sid, None, _ts(started), _ts(started))
                )  # fmt: skip
        if n % 20 == 5:
            ticket_rows.append(
                (agent, sid, "Sam", caller, "Please call back about a quote.",
                 "open" if rng.random() < 0.3 else "done", _ts(started))
            )  # fmt: skip
        if n == live + 1:
            sample = sid
    con.executemany(
        "INSERT INTO calls (call_sid, agent, from_number, to_number, direction, caller_name, status, "
        "outcome, handoff_data, customer_id, started_at, ended_at, sessions, turns) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        call_rows,
    )
    con.executemany(
        "INSERT INTO turns (call_sid, session_id, seq, role, content, interrupted, superseded, "
        "heard_text, spoken_text, tool_calls, tool_call_id, tool_name, retrieval, error, "
        "prompt_received_at, retrieval_done_at, llm_request_at, first_token_at, first_frame_at, "
        "last_token_at, first_token_ms, first_frame_ms, created_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        turn_rows,
    )
    con.executemany(
        "INSERT INTO events (call_sid, session_id, seq, t, at, kind, data) VALUES (?,?,?,?,?,?,?)",
        event_rows,
    )
    con.executemany(
        "INSERT INTO quotes (id, agent, call_sid, caller, inputs, breakdown, total_cents, currency, "
        "move_date, valid_until, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        quote_rows,
    )
    con.executemany(
        "INSERT INTO bookings (id, agent, kind, quote_id, service, customer_id, vehicle_id, phone, "
        "name, starts_at, ends_at, status, call_sid, notes, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        booking_rows,
    )
    con.executemany(
        "INSERT INTO tickets (agent, call_sid, name, phone, reason, status, created_at) "
        "VALUES (?,?,?,?,?,?,?)",
        ticket_rows,
    )
    for statement in INDEX_PENDING:  # the turns, into the search index at once
        con.execute(statement)
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return sample


def pages(sample: str) -> list[str]:
    today = datetime.now(UTC).date()
    week_ago = today - timedelta(days=7)
    return [
        "/console?period=day",
        "/console?period=week",
        "/console?period=month",
        "/console?period=quarter&agent=piano-removals",
        "/console/calls",
        "/console/calls?page=200",
        "/console/calls?agent=car-service&outcome=transferred",
        f"/console/calls?since={week_ago}&until={today}",
        "/console/calls?caller=0412",
        "/console/calls?q=crane",
        "/console/calls?q=zebra",  # words nobody said: the worst case of the words search
        f"/console/calls/{sample}",
        "/console/live",
        "/console/api/live",
        "/console/quotes",
        "/console/quotes?status=booked&agent=piano-removals",
        "/console/bookings",
        "/console/calendar?agent=piano-removals",
        "/console/messages",
        "/console/messages?status=done&page=20",
    ]


async def _warm(url: str, agents: list[str]) -> int:
    from relay.storage.db import Database
    from relay.web.console import rollup

    db = Database(url)
    try:
        return await rollup.warm(db, agents)
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, help="default: a temporary directory")
    args = parser.parse_args(argv)

    from starlette.testclient import TestClient

    from relay.config import load_settings
    from relay.web.app import create_app

    root = args.data_dir or Path(tempfile.mkdtemp(prefix="relay-console-bench-"))
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[3]
    settings = load_settings(
        _env_file=None,
        RELAY_DATA_DIR=str(data),
        RELAY_PROMPTS_DIR=str(repo / "prompts"),
        RELAY_KNOWLEDGE="false",
        RELAY_ADMIN_TOKEN="bench-token",
        RELAY_LOG_LEVEL="warning",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )
    for business in ("piano-removals", "car-service"):
        source = repo / "data" / business
        if source.is_dir():
            import shutil

            shutil.copytree(source, data / business, dirs_exist_ok=True)
    database = Path(settings.database.split(":///", 1)[1])
    fresh = not database.exists()
    with TestClient(create_app(settings)) as client:  # runs the migrations
        if fresh:
            started = time.perf_counter()
            sample = generate(database, args.calls)
            print(f"generated {args.calls:,} calls in {time.perf_counter() - started:.1f} s")
        else:
            con = sqlite3.connect(database)
            sample = con.execute(
                "SELECT call_sid FROM calls WHERE ended_at IS NOT NULL LIMIT 1"
            ).fetchone()[0]
            con.close()
        started = time.perf_counter()
        computed = asyncio.run(_warm(settings.database, sorted(AGENTS)))
        print(
            f"analytics rollups of {computed} agent-days prepared in "
            f"{time.perf_counter() - started:.1f} s (once per database; at start-up, in the background)"
        )
        page = client.get("/console/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        signed = client.post(
            "/console/sign-in",
            data={"csrf": csrf.group(1), "token": "bench-token"},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        print(f"{'page':58} {'first ms':>8} {'median ms':>9} {'max ms':>7} {'cpu ms':>6}")
        worst = 0.0
        for path in pages(sample):
            started = time.perf_counter()
            response = client.get(path)
            first = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            times, cpu = [], []
            for _ in range(args.repeat):
                started, busy = time.perf_counter(), time.process_time()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - busy) * 1000)
            worst = max(worst, max(times))
            print(
                f"{path:58} {first:8.1f} {statistics.median(times):9.1f} {max(times):7.1f} "
                f"{statistics.median(cpu):6.1f}"
            )
        print(f"slowest request after the first: {worst:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
