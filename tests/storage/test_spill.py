"""A stop during a database outage: what the recorder could not store goes to a spill file,
and the next start stores it (relay.storage.spill). The outage is PostgreSQL's "shutting down"
error raised on every statement (as in test_recorder), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from relay.storage import repository, spill
from relay.storage.db import Database
from relay.storage.recorder import Recorder
from tests.conftest import fresh_logging

NOW = datetime(2026, 12, 7, 23, 30, tzinfo=UTC)
ENDED = datetime(2026, 12, 7, 23, 34, 12, 345678, tzinfo=UTC)


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.storage.recorder")


class ShuttingDown(Exception):
    sqlstate = "57P03"


@contextmanager
def outage(db: Database) -> Iterator[None]:
    """Every statement fails as when PostgreSQL is shutting down."""

    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        raise DBAPIError(statement, None, ShuttingDown("the database system is shutting down"))

    event.listen(db.engine.sync_engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", refuse)


def recorder(db: Database, spill_dir: Path | None) -> Recorder:
    return Recorder(db, interval=0.001, max_backoff=0.02, spill_dir=spill_dir)


def begin_call(rec: Recorder) -> None:
    rec.call(
        call_sid="CA1", agent="piano-removals", from_number="+61412345678", to_number="+61390001234",
        direction="inbound", caller_name="", status="in-progress", outcome=None, ended_at=None, started_at=NOW,
    )  # fmt: skip
    rec.session(
        session_id="VXCA1", call_sid="CA1", agent="piano-removals", started_at=NOW, resumed=False
    )


def rest_of_call(rec: Recorder) -> None:
    """What a call hands over after the database went down: frames, turns and its end."""
    for seq in range(2, 6):
        rec.event(
            call_sid="CA1", session_id="VXCA1", seq=seq, t=seq / 10, kind="frame_in",
            data={"raw": f"frame {seq}", "nested": {"when": "x\u0000y"}},
        )  # fmt: skip
    rec.turn(
        call_sid="CA1", session_id="VXCA1", seq=0, role="user", content="How much?", created_at=NOW
    )
    rec.turn(
        call_sid="CA1", session_id="VXCA1", seq=1, role="assistant", content="$420.", created_at=NOW
    )
    rec.update_call("CA1", status="completed", outcome="hung-up", ended_at=ENDED)


async def spill_a_call(db: Database, directory: Path) -> None:
    """A whole call handed over during an outage, then the recorder stops: 8 records spilled."""
    rec = recorder(db, directory)
    await rec.start()
    with outage(db):
        begin_call(rec)
        rest_of_call(rec)
        await rec.stop(timeout=0.1)
    assert rec.spilled == 8


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("recorder-spill-*.jsonl"))


async def stored(db: Database) -> tuple[Any, list[tuple[int, str]], list[tuple[int, str]]]:
    call, turns = await repository.call_history(db, "CA1")
    events = [(e.seq, e.data["raw"]) for e in await repository.call_events(db, "CA1")]
    return call, [(t.seq, t.content) for t in turns], events


async def test_a_stop_during_an_outage_spills_and_the_next_start_stores_it(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "runtime" / "recorder-spill"
    first = recorder(db, directory)
    await first.start()
    begin_call(first)
    first.event(
        call_sid="CA1", session_id="VXCA1", seq=1, t=0.1, kind="frame_in", data={"raw": "frame 1"}
    )
    assert await first.flush(timeout=10)

    with outage(db), capture_logs() as logs:
        rest_of_call(first)
        assert not await first.flush(timeout=0.2)
        await first.stop(timeout=0.2)

    [path] = spill_files(directory)
    assert first.spilled == 7  # 4 events, 2 turns, the call's end
    [spilled] = [e for e in logs if e["event"] == "recorder_spilled"]
    assert (spilled["path"], spilled["rows"], spilled["events"], spilled["calls"]) == (
        str(path),
        3,
        4,
        ["CA1"],
    )
    header = orjson.loads(path.read_bytes().splitlines()[0])
    assert (header["relay_recorder_spill"], header["records"]) == (1, 7)
    call, turns, events = await stored(db)
    assert call.outcome is None and turns == [] and events == [(1, "frame 1")]  # not yet

    second = recorder(db, directory)
    with capture_logs() as logs:
        await second.start()
        assert second.restored == 7
        assert await second.flush(timeout=10)
        await second.stop()

    assert spill_files(directory) == []  # stored, so deleted
    assert [e["event"] for e in logs if e["event"].startswith("recorder_spill")] == [
        "recorder_spill_restoring", "recorder_spill_restored",
    ]  # fmt: skip
    call, turns, events = await stored(db)
    assert (call.status, call.outcome) == ("completed", "hung-up")
    assert call.ended_at.replace(tzinfo=UTC) == ENDED  # a datetime again, to the microsecond
    assert turns == [(0, "How much?"), (1, "$420.")]
    assert events == [(seq, f"frame {seq}") for seq in range(1, 6)]  # each stored once
    [frame] = [e for e in await repository.call_events(db, "CA1") if e.seq == 2]
    assert frame.data["nested"] == {"when": "x\ufffdy"}
    assert abs(frame.t - 0.2) < 1e-9


async def test_a_spill_file_is_restored_by_one_process_only_until_it_is_stored(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    first = recorder(db, directory)
    await first.start()
    begin_call(first)
    with outage(db):
        rest_of_call(first)
        await first.stop(timeout=0.1)
        [old] = spill_files(directory)

        # Two workers start on the same data directory while the database is still down: the
        # first claims the file, the second leaves it to the first.
        one, two = recorder(db, directory), recorder(db, directory)
        await one.start()
        await two.start()
        assert (one.restored, two.restored) == (8, 0)
        await two.stop(timeout=0.1)
        assert spill_files(directory) == [old]
        # The first stops too, the database still down: its own spill replaces the one it held.
        await one.stop(timeout=0.1)
        [new] = spill_files(directory)
        assert new != old and one.spilled == 8

    # The database is back: the next start stores everything, once.
    last = recorder(db, directory)
    await last.start()
    assert last.restored == 8
    assert await last.flush(timeout=10)
    await last.stop()
    assert spill_files(directory) == []
    call, turns, events = await stored(db)
    assert call.outcome == "hung-up" and call.started_at.replace(tzinfo=UTC) == NOW
    assert turns == [(0, "How much?"), (1, "$420.")]
    assert events == [(seq, f"frame {seq}") for seq in range(2, 6)]


async def test_a_process_that_dies_holding_a_spill_file_lets_the_next_start_claim_it(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    await spill_a_call(db, directory)
    holder = recorder(db, directory)
    holder._restore(directory)  # claimed, never stored: then the process "dies"
    assert holder.restored == 8
    for _, held in holder._claims:
        held.release()  # what the kernel does with a dead process's locks

    again = recorder(db, directory)
    await again.start()
    assert again.restored == 8
    assert await again.flush(timeout=10)
    await again.stop()
    assert spill_files(directory) == []
    assert (await stored(db))[0].outcome == "hung-up"


async def test_a_spill_file_that_cannot_be_read_is_set_aside_and_the_rest_restored(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    await spill_a_call(db, directory)
    (directory / "recorder-spill-00000000T000000-1-deadbeef.jsonl").write_text(
        '{"relay_recorder_spill": 1, "records": 1}\n{"oops": 1}\n'
    )
    (directory / "recorder-spill-00000000T000000-2-cafecafe.jsonl").write_bytes(b"")

    second = recorder(db, directory)
    with capture_logs() as logs:
        await second.start()
        assert await second.flush(timeout=10)
        await second.stop()

    assert second.restored == 8
    assert spill_files(directory) == []
    assert sorted(p.name for p in directory.iterdir()) == [
        "DATABASE",
        "recorder-spill-00000000T000000-1-deadbeef.jsonl.bad",
        "recorder-spill-00000000T000000-2-cafecafe.jsonl.bad",
    ]
    errors = sorted(e["error"] for e in logs if e["event"] == "recorder_spill_unreadable")
    assert errors == [
        "recorder-spill-00000000T000000-1-deadbeef.jsonl: line 2: neither a row nor an event",
        "recorder-spill-00000000T000000-2-cafecafe.jsonl: empty file",
    ]
    assert (await stored(db))[0].outcome == "hung-up"


async def test_without_a_spill_directory_what_a_stop_cannot_store_is_logged_as_lost(
    db: Database,
) -> None:
    rec = recorder(db, None)
    await rec.start()
    with outage(db), capture_logs() as logs:
        begin_call(rec)
        rest_of_call(rec)
        rec.defer_postcall(["CA0"])
        await rec.stop(timeout=0.1)
    [lost] = [e for e in logs if e["event"] == "recorder_records_lost"]
    assert (lost["records"], lost["calls"], lost["postcall"]) == (8, ["CA1"], ["CA0"])


async def test_a_stop_right_after_a_flush_gave_up_on_the_database_spills_at_once(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain's flush has just waited for a database that is down: the stop tries once
    more, at once, and does not wait its ``stop_timeout`` again (until 8 December a stop
    during an outage waited for it three times over, 30 s); once the database answers again,
    it waits as before."""
    directory = tmp_path / "spill"
    waits: list[float | None] = []

    def watched(rec: Recorder) -> Recorder:
        flush = rec.flush

        async def timed_flush(timeout: Any = 10.0) -> bool:
            waits.append(timeout)
            return await flush(timeout)

        monkeypatch.setattr(rec, "flush", timed_flush)
        return rec

    rec = watched(recorder(db, directory))
    await rec.start()
    with outage(db):
        begin_call(rec)
        assert not await rec.flush(timeout=0.2)  # the drain's flush, in vain
        assert rec.troubled
        rest_of_call(rec)
        await rec.stop()
    assert waits == [0.2, 1.0]  # one more try, not stop_timeout again
    assert rec.spilled == 8

    again = watched(recorder(db, directory))  # the database is back: a stop waits as usual
    await again.start()
    assert await again.flush(timeout=10)
    await again.stop()
    assert not again.troubled and waits[-1] == again.stop_timeout and again.spilled == 0


async def test_a_stop_tries_a_database_that_came_back_at_once_not_after_its_backoff(
    db: Database, tmp_path: Path
) -> None:
    """The writer waits longer and longer between tries while the database is down (here 6.4 s
    by the time it is back); a stop does not wait that out: it tries again at once, and
    stores rather than spills (a replica scaled in is never started again to restore)."""
    directory = tmp_path / "spill"
    rec = Recorder(db, interval=0.001, max_backoff=60, spill_dir=directory)
    await rec.start()
    tries: list[int] = []
    sixth = asyncio.Event()

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        tries.append(1)
        if len(tries) == 6:
            sixth.set()

    event.listen(db.engine.sync_engine, "before_cursor_execute", counted)
    with outage(db):
        begin_call(rec)
        rest_of_call(rec)
        await asyncio.wait_for(sixth.wait(), 30)  # backoffs 0.1 … 1.6 s; then 3.2, 6.4 s
        assert not await rec.flush(timeout=0.01)  # the drain's flush, in vain
    event.remove(db.engine.sync_engine, "before_cursor_execute", counted)
    await rec.stop()
    assert (rec.spilled, rec.pending, spill_files(directory)) == (0, 0, [])
    call, turns, _ = await stored(db)
    assert call.outcome == "hung-up" and len(turns) == 2


async def test_a_writer_woken_from_its_backoff_as_it_is_cancelled_still_stops(
    db: Database, tmp_path: Path
) -> None:
    """On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives as the event
    it waits for is set: the stop's wake-up and its cancellation together left the writer
    running and the stop waiting for ever (a CI run hung in a spill test)."""
    rec = recorder(db, tmp_path / "spill")
    await rec.start()
    with outage(db):
        begin_call(rec)
        assert not await rec.flush(timeout=0.2)  # the writer is now waiting out a backoff
        task = rec._task
        assert task is not None
        rec._retry_now.set()
        task.cancel()  # in the same moment
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done == {task} and task.cancelled()
        rec._task = asyncio.create_task(asyncio.sleep(0))  # for stop(): a writer that is done
        await rec.stop(timeout=0)
    assert rec.spilled == 2


async def test_post_call_work_a_stop_could_not_do_goes_in_the_spill_file(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "spill"
    rec = recorder(db, directory)
    await rec.start()
    rec.defer_postcall(["CA7", "CA8", "CA7"])
    await rec.stop()  # nothing else to store: the file holds the calls alone
    [path] = spill_files(directory)
    assert orjson.loads(path.read_bytes().splitlines()[0])["postcall"] == ["CA7", "CA8"]

    again = recorder(db, directory)
    await again.start()
    assert again.restored_ends == ["CA7", "CA8"] and again.restored == 0
    assert spill_files(directory) == []  # handed over at once
    await again.stop()


def test_each_database_has_its_own_spill_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    at = spill.directory_for
    base = tmp_path / "spill"
    served = at(base, "postgresql://relay:secret@db.internal:5432/relay")
    # the same database whatever its password or driver
    assert served == at(base, "postgresql+asyncpg://relay:rotated@db.internal:5432/relay")
    assert served.parent == base and len(served.name) == 12
    others = {
        at(base, "postgresql://relay:secret@db.internal:5432/relay_eval"),
        at(base, "postgresql://relay:secret@db.internal:5433/relay"),
        at(base, "postgresql://other@db.internal:5432/relay"),
        at(base, f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"),
        at(base, f"sqlite+aiosqlite:///{tmp_path / 'eval.db'}"),  # relay eval's scratch
    }
    assert served not in others and len(others) == 5
    # a relative SQLite path is the file it names
    assert at(base, "sqlite+aiosqlite:///relay.db") == at(
        base, f"sqlite:///{tmp_path / 'relay.db'}"
    )


def test_rows_keep_their_types_through_a_spill_file(tmp_path: Path) -> None:
    row = {
        "call_sid": "CA1", "ended_at": ENDED, "day": date(2026, 12, 8), "n": 3, "f": 0.25,
        "flag": True, "none": None, "doc": {"a": [1, "b"], "when": "2026-12-08"},
    }  # fmt: skip
    at = datetime(2026, 12, 7, 23, 59, 59, 1, tzinfo=UTC)
    path = spill.write(
        tmp_path,
        [spill.SpilledRow("calls", True, row)],
        [spill.SpilledEvent("CA1", "VX1", 4, 1.5, at, "prompt", '{"voicePrompt":"hi"}')],
    )
    [held], bad = spill.claim(tmp_path)
    assert bad == [] and held.path == path
    assert held.rows == [spill.SpilledRow("calls", True, row)]
    assert held.events == [
        spill.SpilledEvent("CA1", "VX1", 4, 1.5, at, "prompt", '{"voicePrompt":"hi"}')
    ]
    assert spill.claim(tmp_path) == ([], [])  # held: no one else claims it
    held.done()
    assert list(tmp_path.iterdir()) == []
