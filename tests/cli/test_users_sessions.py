"""``relay users add`` on an existing user sets a new password stamp, which ends the console
sessions begun before (the console compares the stamp on every request); so does removing the
user and adding them back."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from relay.cli.main import main
from relay.storage import console as store
from relay.storage.db import Database

PASSWORD = "correct horse battery"


def add(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    return main(["users", "add", *argv, "--password-stdin"])


def stamp(tmp_path: Path) -> str:
    async def read() -> str:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}")
        try:
            user = await store.authenticate(db, "olive", PASSWORD)
        finally:
            await db.close()
        assert user is not None and user.stamp
        return user.stamp

    return asyncio.run(read())


def test_adding_an_existing_user_again_ends_their_sessions(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert add(monkeypatch, "olive") == 0
    assert capsys.readouterr().out == "Saved console user olive (owner).\n"
    first = stamp(tmp_path)

    assert add(monkeypatch, "olive") == 0  # the same password and role
    assert capsys.readouterr().out == (
        "Saved console user olive (owner); their sessions are ended.\n"
    )
    second = stamp(tmp_path)

    assert main(["users", "remove", "olive"]) == 0
    assert add(monkeypatch, "olive", "--role", "editor") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Saved console user olive (editor)."
    assert len({first, second, stamp(tmp_path)}) == 3
