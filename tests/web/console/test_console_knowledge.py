"""The console's knowledge page opens on the default agent, the one ``relay knowledge`` works on
without ``--collection``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.conftest import SHIPPED_PROMPTS
from tests.web.console.conftest import ADMIN_TOKEN, sign_in


def shipped_prompts(folder: Path, *names: str) -> Path:
    """A prompts folder with copies of the shipped agents ``names``."""
    folder.mkdir()
    for name in names:
        shutil.copy(SHIPPED_PROMPTS / f"{name}.toml", folder / f"{name}.toml")
    return folder


async def test_the_knowledge_page_opens_on_the_default_agent(
    start_relay: Any, tmp_path: Path
) -> None:
    """car-service comes first alphabetically; piano-removals is the default agent."""
    prompts = shipped_prompts(tmp_path / "shipped-prompts", "car-service", "piano-removals")
    async with start_relay(RELAY_PROMPTS_DIR=str(prompts), RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as relay:
        assert relay.runtime.deps.agents.default_name == "piano-removals"
        browser = await sign_in(relay.base_url)
        try:
            page = await browser.http.get("/console/knowledge")
            chosen = await browser.http.get("/console/knowledge", params={"agent": "car-service"})
        finally:
            await browser.http.aclose()
    assert page.status_code == 200, page.text
    assert '<option value="piano-removals" selected>' in page.text
    assert '<option value="car-service">' in page.text
    assert '<input type="hidden" name="agent" value="piano-removals">' in page.text
    assert '<option value="car-service" selected>' in chosen.text  # ?agent= still wins


async def test_when_the_default_agent_has_no_knowledge_base_the_page_opens_on_the_first(
    start_relay: Any, tmp_path: Path
) -> None:
    prompts = shipped_prompts(tmp_path / "shipped-prompts", "car-service", "piano-removals")
    piano = prompts / "piano-removals.toml"
    text = piano.read_text(encoding="utf-8")
    assert 'knowledge_collection = "piano-removals"\n' in text
    piano.write_text(text.replace('knowledge_collection = "piano-removals"\n', ""), "utf-8")
    async with start_relay(RELAY_PROMPTS_DIR=str(prompts), RELAY_ADMIN_TOKEN=ADMIN_TOKEN) as relay:
        assert relay.runtime.deps.agents.default_name == "piano-removals"
        browser = await sign_in(relay.base_url)
        try:
            page = await browser.http.get("/console/knowledge")
        finally:
            await browser.http.aclose()
    assert '<option value="car-service" selected>' in page.text
    assert 'value="piano-removals"' not in page.text
