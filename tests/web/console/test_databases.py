"""The console's queries on SQLite and on PostgreSQL: the full-text words search, the caller
search, live calls, analytics rollups, users and supervisor commands."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from relay.storage import console as store
from relay.storage.db import Database
from relay.storage.models import Call, Event, Turn
from relay.storage.outcomes import CallAnalysis
from relay.web.console import queries, rollup

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.close()


async def seed(db: Database) -> datetime:
    now = datetime.now(UTC)
    rows = [
        ("CA1", "+61412000001", "I'd like a quote for my grand piano", now - timedelta(days=3), 60),
        (
            "CA2",
            "+61412000002",
            "Can you service my brakes on Tuesday?",
            now - timedelta(days=2),
            90,
        ),
        ("CA3", "+61398765432", "Is the upright piano insured?", now - timedelta(minutes=2), None),
    ]
    async with db.session() as session, session.begin():
        for sid, number, said, started, seconds in rows:
            session.add(Call(call_sid=sid, agent="piano-removals", from_number=number,
                             started_at=started, status="completed" if seconds else "in-progress",
                             ended_at=started + timedelta(seconds=seconds) if seconds else None,
                             outcome="hung-up" if seconds else None, turns=2))  # fmt: skip
            session.add(Turn(call_sid=sid, session_id="VX" + sid, seq=0, role="user", content=said,
                             created_at=started))  # fmt: skip
            session.add(Turn(call_sid=sid, session_id="VX" + sid, seq=1, role="assistant",
                             content="Sure.", first_frame_ms=420.0, llm_request_at=1.0,
                             created_at=started))  # fmt: skip
        session.add(Event(call_sid="CA3", session_id="VXCA3", seq=1, t=1.0, at=now,
                          kind="tool_call", data={"name": "quote_piano_move"}))  # fmt: skip
    # A turn updated later (as the recorder does while the reply streams) is found by its new words.
    async with db.session() as session, session.begin():
        turn = await session.get(Turn, 2)
        assert turn is not None and turn.call_sid == "CA1"
        turn.content = "Sure, a grand piano move from Kew to Geelong."
    return now


async def sids(db: Database, **filters: str) -> list[str]:
    rows, _ = await queries.search_calls(db, queries.CallFilters(**filters))  # type: ignore[arg-type]
    return [row.call_sid for row in rows]


async def test_searches_live_calls_and_analytics(db: Database) -> None:
    await seed(db)
    assert await sids(db) == ["CA3", "CA2", "CA1"]
    assert await sids(db, words="piano") == ["CA3", "CA1"]
    assert await sids(db, words="grand piano") == ["CA1"]
    assert await sids(db, words="Geelong") == ["CA1"]  # words of an updated turn
    assert await sids(db, words="brakes") == ["CA2"]
    assert await sids(db, words="zebra") == []
    assert await sids(db, words='"quoted" OR piano') == []  # taken as a phrase, not a query
    assert await sids(db, caller="0412 000 002") == ["CA2"]  # a whole number
    assert await sids(db, caller="000") == ["CA2", "CA1"]  # part of one
    assert await sids(db, outcome="in-progress") == ["CA3"]

    live = await queries.live_calls(db)
    assert [(c.call_sid, c.state) for c in live] == [("CA3", "running a tool")]

    figures = await queries.analytics(db, agent="", days=7, agents=["piano-removals"])
    assert (figures.calls, figures.answered) == (3, 3)
    assert figures.median_seconds == 60.0
    assert figures.first_word_p95 == 422.5


def _frame(raw: dict[str, object]) -> dict[str, object]:
    return {"raw": json.dumps(raw)}


async def test_the_live_list_shows_each_calls_newest_state_and_words(db: Database) -> None:
    """Each live call's state comes from its newest frame or tool event (later events of other
    kinds, an earlier session's, do not count) and its words from its newest non-empty turn of
    each side; calls that ended, or started before the horizon, are not listed."""
    now = datetime.now(UTC)
    text = _frame({"type": "text", "token": "Sure", "last": False})
    prompt = _frame({"type": "prompt", "voicePrompt": "Hello", "last": True})
    calls: dict[str, tuple[timedelta, list[tuple[str, str, dict[str, object]]]]] = {
        # sid: (started ago, events as (session, kind, data), oldest first)
        "CAspeaking": (timedelta(minutes=5), [("VX1", "frame_in", prompt), ("VX2", "frame_out", text),
                                             ("VX2", "llm_response", {"content": "Sure"})]),
        "CAtool": (timedelta(minutes=4), [("VX1", "frame_out", text), ("VX1", "tool_call", {"name": "q"})]),
        "CAheard": (timedelta(minutes=3), [("VX1", "frame_out", text), ("VX1", "frame_in", prompt),
                                          ("VX1", "retrieval", {"provenance": []})]),
        "CAsilent": (timedelta(minutes=2), []),
        "CAended": (timedelta(minutes=1), [("VX1", "frame_out", text)]),
        "CAstale": (queries.LIVE_HORIZON + timedelta(minutes=1), [("VX1", "frame_out", text)]),
    }  # fmt: skip
    async with db.session() as session, session.begin():
        for sid, (ago, events) in calls.items():
            session.add(Call(call_sid=sid, agent="piano-removals", from_number="+61412000001",
                             started_at=now - ago, status="in-progress",
                             ended_at=now if sid == "CAended" else None, turns=0))  # fmt: skip
            for seq, (session_id, kind, data) in enumerate(events):
                session.add(Event(call_sid=sid, session_id=session_id, seq=seq, t=float(seq),
                                  at=now, kind=kind, data=data))  # fmt: skip
        said = [("user", "Can you move a piano?"), ("assistant", "Yes, we can."),
                ("user", "How much to Geelong?"), ("assistant", "About four hundred dollars."),
                ("user", ""), ("tool", "quote result")]  # fmt: skip
        for seq, (role, content) in enumerate(said):
            session.add(Turn(call_sid="CAspeaking", session_id="VX2", seq=seq, role=role,
                             content=content, created_at=now))  # fmt: skip

    live = await queries.live_calls(db, now)

    assert [(c.call_sid, c.state) for c in live] == [
        ("CAsilent", "listening"),
        ("CAheard", "listening"),
        ("CAtool", "running a tool"),
        ("CAspeaking", "speaking"),
    ]
    speaking = live[-1]
    assert (speaking.caller_said, speaking.agent_said) == (
        "How much to Geelong?",
        "About four hundred dollars.",
    )
    assert (live[0].caller_said, live[0].agent_said) == ("", "")


async def test_a_days_figures_are_counted_by_the_database_as_python_would(db: Database) -> None:
    """compute_day aggregates in SQL; on either database its figures equal a plain count of
    the same rows in Python (the way it used to read them): calls with and without an end,
    both agents, errors empty, internal and not (case-sensitive), first words at bucket edges,
    analysed calls with repeated and empty outcome lists, calls retention purged (no turns
    left: answered unless their analysis says abandoned); another day's rows left out."""
    day = datetime.now(UTC).date() - timedelta(days=3)
    noon = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    calls = [  # sid, agent, seconds (None: no end), turns, outcome
        ("CAa", "piano-removals", 30.2, 3, "hung-up"),
        ("CAb", "piano-removals", 59.7, 1, "transferred"),
        ("CAc", "car-service", 120.0, 5, "transferred"),
        ("CAd", "car-service", None, 2, None),
        ("CAe", "piano-removals", 200.4, 4, "quoted"),
        ("CAf", "car-service", 45.0, 3, "hung-up"),
    ]
    replies = {  # sid: [(first_frame_ms, error)]
        "CAa": [(0.0, None), (4.99, ""), (5.0, "the model timed out")],
        "CAb": [(502.5, "internal error: boom"), (None, "Internal error: not ours")],
        "CAc": [(1234.0, None)],
        "CAe": [(420.0, None), (419.9, "internal error")],
    }
    analyses = {"CAa": (["quoted", "sms-sent"], 0.0123), "CAb": (["transferred"], 0.5),
                "CAc": (["quoted", "sms-sent"], 0.25), "CAe": ([], 0.0),
                "CAd": (["answered-only"], 0.01), "CAf": (["abandoned"], 0.02)}  # fmt: skip
    async with db.session() as session, session.begin():
        for sid, agent, seconds, turns, outcome in calls:
            ended = None if seconds is None else noon + timedelta(seconds=seconds)
            session.add(Call(call_sid=sid, agent=agent, from_number="+61412000001",
                             started_at=noon, ended_at=ended, status="completed",
                             outcome=outcome, turns=turns))  # fmt: skip
            for seq, (ms, error) in enumerate(replies.get(sid, [])):
                session.add(Turn(call_sid=sid, session_id="VX" + sid, seq=seq, role="assistant",
                                 content="hi", first_frame_ms=ms, error=error,
                                 llm_request_at=1.0, created_at=noon))  # fmt: skip
            if sid in analyses:
                names, cost = analyses[sid]
                session.add(CallAnalysis(call_sid=sid, agent=agent, outcomes=names, fields={},
                                         usage={}, cost={}, cost_total=cost, currency="AUD",
                                         computed_at=noon))  # fmt: skip
        # the day before: none of it counts
        session.add(Call(call_sid="CAold", agent="piano-removals", from_number="+61412000002",
                         started_at=noon - timedelta(days=1), ended_at=noon - timedelta(hours=23),
                         status="completed", outcome="transferred", turns=3))  # fmt: skip
        session.add(Turn(call_sid="CAold", session_id="VXold", seq=0, role="assistant",
                         content="hi", first_frame_ms=10.0, error="x",
                         created_at=noon))  # fmt: skip

    def answered(sid: str) -> bool:
        """The model answered one of its replies; with no turn left, its analysis did not
        find it abandoned."""
        if sid in replies:
            return any(not error for _, error in replies[sid])
        return sid in analyses and "abandoned" not in analyses[sid][0]

    for agent in (None, "piano-removals", "car-service"):
        mine = [c for c in calls if agent is None or c[1] == agent]
        said = [r for c in mine for r in replies.get(c[0], [])]
        analysed = [analyses[c[0]] for c in mine if c[0] in analyses]
        figures = await rollup.compute_day(db, day, agent)
        assert figures["calls"] == len(mine)
        assert figures["answered"] == sum(1 for c in mine if answered(c[0]))
        assert figures["transferred"] == sum(1 for c in mine if c[4] == "transferred")
        assert figures["durations"] == {
            str(k): v for k, v in Counter(round(c[2]) for c in mine if c[2] is not None).items()
        }
        assert figures["apologies"] == sum(1 for _, error in said if error)
        assert figures["model_failures"] == sum(
            1 for _, error in said if error and not error.startswith("internal error")
        )
        buckets = Counter(int(ms // rollup.FIRST_WORD_BUCKET) for ms, _ in said if ms is not None)
        assert figures["first_words"] == {str(k): v for k, v in buckets.items()}
        assert figures["analysed"] == len(analysed)
        assert figures["cost"] == round(sum(cost for _, cost in analysed), 6)
        assert figures["currency"] == ("AUD" if analysed else "")
        assert figures["outcomes"] == dict(Counter(n for names, _ in analysed for n in names))


async def test_users_and_commands(db: Database) -> None:
    await store.add_user(db, "olive", "a long password", "owner")
    assert await store.has_users(db)
    assert await store.authenticate(db, "olive", "a long password") is not None
    assert await store.authenticate(db, "olive", "wrong") is None
    assert await store.authenticate(db, "nobody", "a long password") is None
    await store.add_user(db, "olive", "another password", "editor")  # replaces
    assert [(u.username, u.role) for u in await store.list_users(db)] == [("olive", "editor")]
    secret = await store.shared_secret(db)
    assert secret == await store.shared_secret(db) and len(secret) >= 32

    first = await store.add_command(db, "CA9", "whisper", "hello", "olive")
    await store.add_command(db, "CA9", "end", "", "olive")
    taken = await store.take_commands(db, "CA9")
    assert [(c.id, c.kind) for c in taken] == [(first, "whisper"), (first + 1, "end")]
    assert await store.take_commands(db, "CA9") == []
    assert await store.remove_user(db, "olive")
    assert not await store.has_users(db)
