"""A database whose schema is newer than the code (the image rolled back after a newer one
migrated it) stops ``relay serve`` and every command in one line saying so, exit 2, not an
alembic traceback; and a migration run says what it did in one log line, which a process that
finds the schema already migrated does not repeat."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from relay.errors import ConfigError
from relay.storage.db import Database
from tests.conftest import fresh_logging

REPO = Path(__file__).resolve().parents[2]
NEWEST = sorted(p.name for p in (REPO / "relay/storage/migrations/versions").glob("0*.py"))[
    -1
].split("_", 1)[0]


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.storage.db")


async def _set_revision(url: str, revision: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        await db.close()


async def test_a_schema_newer_than_the_code_is_one_error_saying_so(database_url: str) -> None:
    await _set_revision(database_url, "0999")
    db = Database(database_url)
    try:
        with pytest.raises(ConfigError) as newer:
            await db.migrate()
    finally:
        await db.close()
    where = db.engine.url.render_as_string(hide_password=True)
    assert str(newer.value) == (
        f"the database's schema (DATABASE_URL {where}) is at revision 0999, which this relay "
        f"does not know (its newest is {NEWEST}): it was migrated by a newer relay; run that "
        "one, or restore a backup taken before it migrated"
    )


def test_relay_sessions_list_on_a_newer_schema_says_so_in_one_line(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "relay.db"
    asyncio.run(_set_revision(f"sqlite+aiosqlite:///{path}", "0999"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OPENAI_"))},
        "DATABASE_URL": f"sqlite+aiosqlite:///{path}",
        "RELAY_PROMPTS_DIR": str(REPO / "prompts"),
        "RELAY_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "relay", "sessions", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"relay: configuration error: the database's schema (DATABASE_URL "
        f"sqlite+aiosqlite:///{path}) is at revision 0999, which this relay does not know "
        f"(its newest is {NEWEST}): it was migrated by a newer relay; run that one, or restore "
        "a backup taken before it migrated"
    ]


async def test_a_migration_run_is_one_log_line_not_repeated(database_url: str) -> None:
    db = Database(database_url)
    try:
        with capture_logs() as first:
            await db.migrate()
        with capture_logs() as again:  # another worker, after the first one migrated
            await db.migrate()
        await _downgrade_to(db, "0003")
        with capture_logs() as upgrade:
            await db.migrate()
    finally:
        await db.close()
    assert [e for e in first if e["event"] == "database_migrated"] == [
        {"event": "database_migrated", "log_level": "info", "from_revision": None,
         "to_revision": NEWEST}
    ]  # fmt: skip
    assert [e for e in again if e["event"] == "database_migrated"] == []
    [upgraded] = [e for e in upgrade if e["event"] == "database_migrated"]
    assert (upgraded["log_level"], upgraded["from_revision"], upgraded["to_revision"]) == (
        "warning",
        "0003",
        NEWEST,
    )  # an existing schema changed: every command says so (new 8 December)
    assert upgraded["message"].endswith(
        ": relay versions older than this one cannot use it any more"
    )
    assert "DATABASE_URL " in upgraded["message"]


async def _downgrade_to(db: Database, revision: str) -> None:
    from alembic import command

    from relay.storage.db import alembic_config

    def downgrade(conn: object) -> None:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(downgrade)
