"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.storage.db import Database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A fresh, migrated database: SQLite, then PostgreSQL (``database_url`` in tests/conftest.py).
    Modules that need another kind define their own."""
    database = Database(database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()
