"""A restart during a database outage loses nothing: what the stopping relay could not store
goes to ``<data dir>/runtime/recorder-spill/``, and the next start stores it (the call's end,
its last turns and frames). Real app under uvicorn, real calls over WebSockets; the outage is
PostgreSQL's "shutting down" error on every statement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from relay.storage import outcomes, repository
from relay.testing import ScriptedLLM, Text
from tests.conftest import fresh_logging
from tests.storage.test_spill import outage


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.storage.recorder", "relay.services.postcall")


async def test_a_restart_during_a_database_outage_keeps_the_calls_end(
    start_relay: Any, data_dir: Path, tmp_path: Path
) -> None:
    quick = {"RELAY_RECORDER_FLUSH_TIMEOUT": "0.2", "RELAY_RECORDER_STOP_TIMEOUT": "0.3"}
    llm = ScriptedLLM([Text("Yes, we move uprights."), Text("You're welcome, goodbye!")])
    running = start_relay(llm, **quick)
    with capture_logs() as logs:
        relay = await running.__aenter__()
        call = relay.call()
        await call.connect()
        await call.say("Do you move upright pianos?")
        assert await relay.runtime.deps.recorder.flush(timeout=10)
        with outage(relay.runtime.deps.db):
            second = await call.say("Thanks, that's all.")
            await call.close()
            await relay.session_closed()
            await running.__aexit__(None, None, None)  # stops while the database is down

    assert relay.runtime.deps.recorder.spilled > 0
    [spilled] = [e for e in logs if e["event"] == "recorder_spilled"]
    assert spilled["calls"] == [call.call_sid]
    assert spilled["postcall"] == [call.call_sid]  # its post-call work, waiting for the database
    assert [e for e in logs if e["event"] == "postcall_lost"] == []
    [path] = (data_dir / "runtime" / "recorder-spill").glob("*/recorder-spill-*.jsonl")
    database = relay.settings.database
    assert (path.parent / "DATABASE").read_text() == database + "\n"  # whose records they are

    # relay eval and relay replay run the app on a scratch database with this data directory:
    # the served database's records are not theirs to take.
    async with start_relay(
        ScriptedLLM(), DATABASE_URL=f"sqlite:///{tmp_path / 'scratch.db'}"
    ) as other:
        assert other.runtime.deps.recorder.restored == 0
    assert path.exists()
    assert second.text == "You're welcome, goodbye!"

    async with start_relay(ScriptedLLM(), **quick) as relay:
        db = relay.runtime.deps.db
        assert await relay.runtime.deps.recorder.flush(timeout=10)
        row, turns = await repository.call_history(db, call.call_sid)
        frames = [
            e.data for e in await repository.call_events(db, call.call_sid) if e.kind == "frame_in"
        ]
        await relay.runtime.postcall.idle()  # the call's post-call work, cut short at the stop
        analysis = await outcomes.get_analysis(db, call.call_sid)

    assert not path.exists()
    assert row is not None and row.ended_at is not None and row.status == "completed"
    assert turns[0].role == "assistant" and turns[0].content.startswith("Thanks for calling")
    assert [(t.role, t.content) for t in turns[1:]] == [
        ("user", "Do you move upright pianos?"), ("assistant", "Yes, we move uprights."),
        ("user", "Thanks, that's all."), ("assistant", "You're welcome, goodbye!"),
    ]  # fmt: skip
    prompts = [f for f in frames if '"prompt"' in str(f)]
    assert len(prompts) == 2  # the frame heard during the outage too
    assert analysis is not None and analysis.ending == "hung-up"
