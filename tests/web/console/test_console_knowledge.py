"""The console's knowledge page opens on the default agent, the one ``relay knowledge`` works on
without ``--collection``."""

from __future__ import annotations

import re
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


async def test_uploads_say_what_they_replaced_and_the_page_writes_times_as_the_others(
    start_relay: Any, tmp_path: Path
) -> None:
    """Document ids ignore case, so Parking.TXT replaces parking.txt: the result says so. One
    chunk is "1 chunk"; a bad file's reason is not prefixed with its name twice; the upload
    form names every type it takes; "Loaded" is a UTC time like the other pages'."""
    from knowledge import SUPPORTED_SUFFIXES
    from relay.web.console.auth import CSRF_HEADER

    prompts = shipped_prompts(tmp_path / "shipped-prompts", "piano-removals")
    async with start_relay(
        RELAY_PROMPTS_DIR=str(prompts),
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
    ) as relay:
        browser = await sign_in(relay.base_url)
        try:
            first = await browser.http.post(
                "/console/knowledge/upload",
                data={"agent": "piano-removals"},
                files={"files": ("parking.txt", b"Park in the side street.", "text/plain")},
                headers={CSRF_HEADER: browser.csrf},
            )
            page = await browser.http.post(
                "/console/knowledge/upload",
                data={"agent": "piano-removals", "csrf": browser.csrf},
                files=[
                    ("files", ("Parking.TXT", b"Park in the lane behind.", "text/plain")),
                    ("files", ("broken.pdf", b"not a pdf", "application/pdf")),
                ],
            )
        finally:
            await browser.http.aclose()
    [added] = first.json()["results"]
    assert (added["path"], added["status"], added["replaced"]) == ("parking.txt", "added", None)
    assert page.status_code == 207, page.text
    results = page.text.split('id="upload-results">', 1)[1].split("</ul>", 1)[0]
    lines = re.findall(r"<li class=\"(\w+)\">([^<]*)</li>", results)
    assert lines[0] == (
        "ok",
        "Parking.TXT: replaced parking.txt (the names differ only in case), 1 chunk",
    )
    assert lines[1][0] == "error" and lines[1][1].startswith("broken.pdf: failed: ")
    assert lines[1][1].count("broken.pdf") == 1, lines[1]
    label = re.search(r'<label for="file">([^<]*)</label>', page.text)
    assert label is not None and all(suffix in label.group(1) for suffix in SUPPORTED_SUFFIXES)
    assert "CSV" in label.group(1) and "JSON" in label.group(1)
    assert '<th scope="col">Loaded (UTC)</th>' in page.text
    [row] = re.findall(r"<tr><td>parking\.txt</td><td>2</td><td>1</td><td>([^<]*)</td>", page.text)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row), row
