"""A command that upgrades an existing database's schema says so on stderr, as ``relay serve``
does: until 8 December every command but ``serve`` migrated quietly (it logged at info, below
the commands' warning level), so an operator's newer CLI could change a production schema that
older servers then refused, without a word."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.storage.db import Database
from tests.conftest import fresh_logging
from tests.storage.test_schema_newer import _downgrade_to


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.storage.db")


def at_revision(path: Path, revision: str) -> None:
    async def build() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await db.migrate()
            await _downgrade_to(db, revision)
        finally:
            await db.close()

    asyncio.run(build())


def test_a_command_that_upgrades_the_schema_says_so(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    at_revision(data / "relay.db", "0007")
    monkeypatch.setenv("RELAY_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)

    assert main(["sessions", "list"]) == 0
    said = capsys.readouterr().err
    assert "database_migrated" in said and re.search(r"from_revision\W{1,3}0007", said), said
    assert "relay versions older than this one cannot use it any more" in said

    assert main(["sessions", "list"]) == 0  # nothing to do: nothing said
    assert "database_migrated" not in capsys.readouterr().err


def test_a_new_database_is_created_without_a_word(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert main(["sessions", "list"]) == 0
    assert "database_migrated" not in capsys.readouterr().err
