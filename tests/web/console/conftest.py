"""A relay with the console on (an admin token), shared by a test module, and a signed-in
HTTP client helper."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from relay.storage.db import Database
from relay.web.console import rollup
from tests.conftest import (
    _SETTINGS_ENV,
    SHIPPED_AGENT,
    Relay,
    agent_toml,
    running_relay,
    seed_business_tables,
    settings_for,
)

ADMIN_TOKEN = "console-admin-token-0123456789"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh SQLite database, and the console's per-process day caches emptied (modules that
    need another database define their own)."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await database.migrate()
    rollup._LIVE.clear()
    rollup._STAMPS.clear()
    yield database
    await database.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console_relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Relay]:
    with pytest.MonkeyPatch.context() as env:
        for name in _SETTINGS_ENV:
            env.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("console")
        data, prompts = root / "data", root / "prompts"
        data.mkdir()
        seed_business_tables(data)
        prompts.mkdir()
        (prompts / SHIPPED_AGENT.name).write_text(agent_toml(), encoding="utf-8")
        async with running_relay(
            lambda **o: settings_for(data, prompts, **o), RELAY_ADMIN_TOKEN=ADMIN_TOKEN
        ) as running:
            yield running


@pytest_asyncio.fixture(loop_scope="module")
async def relay(console_relay: Relay) -> AsyncIterator[Relay]:
    console_relay.begin_test()
    try:
        yield console_relay
    finally:
        await console_relay.end_test()


@dataclass
class Browser:
    """An HTTP client with a console session: ``csrf`` is the session's token."""

    http: httpx.AsyncClient
    csrf: str


def csrf_in(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


async def sign_in(
    base_url: str, *, token: str | None = ADMIN_TOKEN, username: str = "", password: str = ""
) -> Browser:
    http = httpx.AsyncClient(base_url=base_url, timeout=10)
    page = await http.get("/console/sign-in")
    assert page.status_code == 200, page.text
    form = {"csrf": csrf_in(page.text), "next": "/console"}
    if token:
        form["token"] = token
    else:
        form.update(username=username, password=password)
    response = await http.post("/console/sign-in", data=form)
    assert response.status_code == 303, response.text
    landing = await http.get(response.headers["location"])
    assert landing.status_code == 200, landing.text
    return Browser(http, csrf_in(landing.text))
