"""``relay users add/list/remove``: console users in the database, passwords hashed."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.storage import console as store
from relay.storage.db import Database


def run(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(list(argv))


def test_add_list_and_remove_users(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert run(monkeypatch, "users", "list") == 0
    assert "No console users" in capsys.readouterr().out
    password = "correct horse battery"
    assert run(monkeypatch, "users", "add", "olive", "--password-stdin", stdin=password + "\n") == 0
    assert run(monkeypatch, "users", "add", "eddie", "--role", "editor", "--password-stdin",
               stdin=password + "\n") == 0  # fmt: skip
    assert run(monkeypatch, "users", "add", "short", "--password-stdin", stdin="short\n") == 2
    assert run(monkeypatch, "users", "add", "bad name!", "--password-stdin", stdin=password) == 2
    capsys.readouterr()
    assert run(monkeypatch, "users", "list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [["eddie", "editor"], ["olive", "owner"]]

    async def check() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}")
        try:
            assert await store.authenticate(db, "olive", password) is not None
            async with db.session() as session:
                stored = await session.scalar(
                    store.select(store.ConsoleUser.password_hash).where(
                        store.ConsoleUser.username == "olive"
                    )
                )
            assert stored is not None and password not in stored and stored.startswith("scrypt$")
        finally:
            await db.close()

    asyncio.run(check())
    assert run(monkeypatch, "users", "remove", "eddie") == 0
    assert run(monkeypatch, "users", "remove", "eddie") == 1
    assert "no console user eddie" in capsys.readouterr().err
