"""The call page's words: tool arguments as written, a purged recording said to be purged, a
number retention masked shown as stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.storage.db import Database
from relay.storage.models import Call, Turn
from relay.storage.outcomes import CallAnalysis
from relay.web.console import queries
from relay.web.console.render import env

pytestmark = pytest.mark.asyncio

STARTED = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


async def add_call(db: Database, sid: str, number: str, turns: list[Turn], count: int) -> None:
    async with db.session() as session, session.begin():
        session.add(Call(call_sid=sid, agent="piano-removals", from_number=number,
                         started_at=STARTED, ended_at=STARTED + timedelta(minutes=2),
                         outcome="hung-up", status="completed", turns=count))  # fmt: skip
        session.add_all(turns)


async def page(db: Database, sid: str) -> str:
    detail = await queries.call_detail(db, sid)
    assert detail is not None
    return env.get_template("call.html").render(
        request=None, session=None, d=detail, zones={}, top=1.0, replay=f"relay replay {sid}",
        live=False,
    )  # fmt: skip


def turn(sid: str, seq: int, role: str, content: str, **more: object) -> Turn:
    return Turn(call_sid=sid, session_id="VX" + sid, seq=seq, role=role, content=content,
                created_at=STARTED + timedelta(seconds=seq), **more)  # fmt: skip


async def test_tool_arguments_show_their_letters(db: Database) -> None:
    arguments = '{"name": "José Müller", "note": "<b>upright</b> & stool"}'
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "book_move", "arguments": arguments}}]  # fmt: skip
    await add_call(db, "CA1", "+61412345678", [
        turn("CA1", 0, "assistant", "Thanks for calling."),
        turn("CA1", 1, "user", "Book it for José Müller."),
        turn("CA1", 2, "assistant", "", tool_calls=calls, llm_request_at=1.0),
    ], count=3)  # fmt: skip
    html = await page(db, "CA1")
    assert (
        '<code class="args">{&#34;name&#34;: &#34;José Müller&#34;, '
        "&#34;note&#34;: &#34;&lt;b&gt;upright&lt;/b&gt; &amp; stool&#34;}</code>"
    ) in html
    assert "\\u00e9" not in html and "\\u003c" not in html


async def test_a_purged_recording_is_said_to_be_purged(db: Database) -> None:
    await add_call(db, "CA2", "+614xxxxxxxx", [], count=7)  # retention kept the call row only
    async with db.session() as session, session.begin():
        session.add(CallAnalysis(call_sid="CA2", agent="piano-removals", outcomes=["quoted"],
                                 fields={}, usage={}, cost={}, cost_total=0.07, currency="USD",
                                 computed_at=STARTED))  # fmt: skip
    html = await page(db, "CA2")
    assert "Nothing was said." not in html
    assert (
        "<li>Its recording was deleted by retention: the 7 turns and the events are no longer "
        "kept; the outcomes and cost worked out before are.</li>"
    ) in html

    await add_call(db, "CA3", "+61412345678", [], count=0)  # a call that never got going
    assert "<li>Nothing was said.</li>" in await page(db, "CA3")


async def test_a_masked_number_shows_as_stored(db: Database) -> None:
    await add_call(db, "CA4", "+614xxxxxxxx", [], count=0)
    assert "<h1>Call from +614xxxxxxxx</h1>" in await page(db, "CA4")
    await add_call(db, "CA5", "+61412345678", [], count=0)
    assert "<h1>Call from +61*******78</h1>" in await page(db, "CA5")  # masked for the page
    assert env.filters["mask"]("+1 555 123 4567 x89") == "+1**********89"  # not retention's x
