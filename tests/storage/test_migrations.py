"""Migrations on SQLite and PostgreSQL: the schema they build is the models', several processes
migrating one fresh database at once migrate it once (the lock), and a missing PostgreSQL driver
is a one-line error naming it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from relay.errors import StorageError
from relay.storage.db import Database
from relay.storage.models import Base
from tests.storage.test_textsearch import migrate

MIGRATE = (
    "import asyncio, sys\n"
    "from relay.storage.db import Database\n"
    "async def main():\n"
    "    db = Database(sys.argv[1])\n"
    "    await db.migrate()\n"
    "    await db.close()\n"
    "asyncio.run(main())\n"
)


def _differences(conn: Any) -> list[Any]:
    """What the models have that the database lacks (or has otherwise). Tables and indexes the
    database has beyond the models (full-text search, the console's own) are not differences."""
    context = MigrationContext.configure(conn, opts={"compare_type": False})
    diffs = [d[0] if isinstance(d, list) else d for d in compare_metadata(context, Base.metadata)]
    return [d for d in diffs if not str(d[0]).startswith("remove_")]


async def test_the_migrations_build_the_models_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # again: nothing to do
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            (version,) = (await conn.execute(text("SELECT version_num FROM alembic_version"))).one()
    finally:
        await db.close()
    heads = sorted(
        p.name
        for p in (Path(__file__).parents[2] / "relay/storage/migrations/versions").glob("0*.py")
    )
    assert version == heads[-1].split("_", 1)[0]


async def test_processes_starting_together_on_a_fresh_database_migrate_it_once(
    database_url: str,
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE,
            database_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [await p.communicate() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [
        r[1].decode()[-2000:] for r in results
    ]
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert await conn.run_sync(_differences) == []
    finally:
        await db.close()
    assert len(versions) == 1


def test_a_missing_postgres_driver_is_one_line_naming_it(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "sys.modules['asyncpg'] = None  # as if relay[postgres] were not installed\n"
        "from relay.cli import main\n"
        "sys.exit(main(['serve']))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OPENAI_"))},
        "DATABASE_URL": "postgresql://relay@127.0.0.1:9/relay",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "RELAY_PROMPTS_DIR": str(Path(__file__).parents[2] / "prompts"),
        "RELAY_DATA_DIR": str(Path(__file__).parents[2] / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "relay: configuration error: DATABASE_URL is a PostgreSQL URL but its driver (asyncpg) "
        "is not installed: pip install 'relay[postgres]'"
    ]


def _event_indexes(path: Path) -> dict[str, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        names = [row[1] for row in con.execute("PRAGMA index_list(events)")]
        return {n: [r[2] for r in con.execute(f"PRAGMA index_info({n})")] for n in names}


def test_0007_indexes_events_by_call_and_id_and_downgrades(tmp_path: Path) -> None:
    """A call's events are read in id order: one index on (call_sid, id) replaces the one on
    (call_sid, session_id, seq), and the downgrade puts the old one back."""
    path = tmp_path / "relay.db"
    migrate(path, "head")
    assert _event_indexes(path) == {"ix_events_call_id": ["call_sid", "id"]}
    with contextlib.closing(sqlite3.connect(path)) as con:
        plan = " ".join(
            str(row[-1])
            for row in con.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM events WHERE call_sid = 'CA1' "
                "AND kind IN ('frame_in', 'frame_out') ORDER BY id DESC LIMIT 1"
            )
        )
    assert "ix_events_call_id" in plan and "TEMP B-TREE" not in plan  # no sort: an index walk

    migrate(path, "0006", down=True)
    assert _event_indexes(path) == {"ix_events_call": ["call_sid", "session_id", "seq"]}
    migrate(path, "head")
    assert _event_indexes(path) == {"ix_events_call_id": ["call_sid", "id"]}


def _analysis_indexes(path: Path) -> dict[str, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        names = [row[1] for row in con.execute("PRAGMA index_list(call_analyses)")]
        return {
            n: [r[2] for r in con.execute(f"PRAGMA index_info({n})")]
            for n in names
            if not n.startswith("sqlite_autoindex")
        }


def test_0008_covers_the_console_days_stamps_and_downgrades(tmp_path: Path) -> None:
    """The console's stamp of a day (relay.web.console.rollup.stamps) counts a day's analyses
    and their newest computed_at: read from the index alone, not the table row by row."""
    path = tmp_path / "relay.db"
    migrate(path, "head")
    assert _analysis_indexes(path) == {
        "ix_call_analyses_agent_ended_computed": ["agent", "ended_at", "computed_at"]
    }
    with contextlib.closing(sqlite3.connect(path)) as con:
        plan = " ".join(
            str(row[-1])
            for row in con.execute(
                "EXPLAIN QUERY PLAN SELECT count(*), max(computed_at) FROM call_analyses "
                "WHERE agent = 'a' AND ended_at >= '2026-12-01' AND ended_at < '2026-12-03'"
            )
        )
    assert "COVERING INDEX ix_call_analyses_agent_ended_computed" in plan

    migrate(path, "0007", down=True)
    assert _analysis_indexes(path) == {"ix_call_analyses_agent_ended": ["agent", "ended_at"]}
    migrate(path, "head")
    assert list(_analysis_indexes(path)) == ["ix_call_analyses_agent_ended_computed"]


async def test_a_database_that_cannot_be_reached_is_one_error_naming_it() -> None:
    # Nothing listens on the discard port; the password never shows.
    closed = Database("postgresql+asyncpg://relay:s3cret@127.0.0.1:9/relay")
    with pytest.raises(StorageError) as refused:
        await closed.migrate()
    await closed.close()
    assert str(refused.value) == (
        "cannot connect to the database (DATABASE_URL "
        "postgresql+asyncpg://relay:***@127.0.0.1:9/relay): ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.1', 9)"
    )


async def test_a_refused_login_is_one_error_naming_the_database(postgres_server: str) -> None:
    from sqlalchemy.engine import make_url

    wrong = make_url(postgres_server).set(
        drivername="postgresql+asyncpg", username="nobody-here", password="wrong"
    )
    db = Database(wrong.render_as_string(hide_password=False))
    with pytest.raises(StorageError) as refused:
        await db.migrate()
    await db.close()
    message = str(refused.value)
    assert message.startswith(
        f"cannot connect to the database (DATABASE_URL {wrong.render_as_string()}): "
    )
    assert "nobody-here" in message.split("): ", 1)[1] and "wrong" not in message
