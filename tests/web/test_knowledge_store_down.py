"""With the Chroma server down, every knowledge route answers 503 with the store's message (JSON
for the admin API, the console's error page with a link back), logged once as a warning: the
admin upload, show and delete, and the console's Remove, answered a bare 500 with a traceback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from knowledge import DocumentInfo
from knowledge.manifest import Manifest
from knowledge.store import MANIFEST_FILE
from tests.conftest import SHIPPED_PROMPTS
from tests.knowledge.test_knowledge_server import free_port
from tests.web.console.conftest import ADMIN_TOKEN, sign_in

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN = "/admin/knowledge/piano-removals"


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """structlog's defaults and fresh loggers for the routes' modules, whatever an earlier test
    configured: loggers cached on first use are never seen by ``capture_logs``."""
    from relay.web import admin
    from relay.web.console import views

    structlog.reset_defaults()
    monkeypatch.setattr(admin, "log", structlog.get_logger("relay.web.admin"))
    monkeypatch.setattr(views, "log", structlog.get_logger("relay.web.console"))
    yield
    structlog.reset_defaults()


@pytest.fixture
def settings(data_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The shipped piano-removals agent, a Chroma server nobody listens for, and a manifest
    that lists ``tuba.txt`` (loaded while the server was up)."""
    prompts = tmp_path / "shipped-prompts"
    prompts.mkdir()
    shutil.copy(SHIPPED_PROMPTS / "piano-removals.toml", prompts)
    Manifest(data_dir / "chroma" / MANIFEST_FILE).record(
        "piano-removals",
        DocumentInfo("tuba.txt", "tuba.txt", 1, "0" * 64, 2, "2025-12-07T10:00:00+00:00"),
        pipeline="p",
    )
    return {
        "RELAY_PROMPTS_DIR": str(prompts),
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_KNOWLEDGE": "true",
        "RELAY_KNOWLEDGE_AUTOLOAD": "false",
        "CHROMA_URL": f"http://127.0.0.1:{free_port()}",
    }


def _failures(logs: list[Any], event: str) -> list[Any]:
    return [e for e in logs if e["event"] == event]


async def test_the_admin_api_answers_503_with_the_stores_message(
    start_relay: Any, settings: dict[str, str]
) -> None:
    with capture_logs() as logs:
        async with start_relay(**settings) as relay:
            http, base = relay.http, relay.base_url + ADMIN
            uploaded = await http.post(
                base + "/documents",
                headers=BEARER,
                files=[("file", ("organ.html", b"<h1>Organs</h1><p>We move organs.</p>")),
                       ("file", ("harp.md", b"# Harps\n\nWe move harps."))],
            )  # fmt: skip
            shown = await http.get(base + "/documents/tuba.txt", headers=BEARER)
            deleted = await http.delete(base + "/documents/tuba.txt", headers=BEARER)
            searched = await http.get(base + "/search", params={"q": "organs"}, headers=BEARER)
            listed = await http.get(base + "/documents", headers=BEARER)  # the manifest only

    for response in (uploaded, shown, deleted, searched):
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"].startswith(
            f"cannot open vector store at {settings['CHROMA_URL']}: "
        ), response.text
    assert uploaded.json()["results"] == []
    assert uploaded.json()["not_loaded"] == ["organ.html", "harp.md"]
    assert listed.status_code == 200
    assert [d["doc_id"] for d in listed.json()["documents"]] == ["tuba.txt"]
    failed = _failures(logs, "admin_knowledge_store_failed")
    assert [(e["method"], e["path"].rsplit("/", 1)[1]) for e in failed] == [
        ("POST", "documents"), ("GET", "tuba.txt"), ("DELETE", "tuba.txt"), ("GET", "search"),
    ]  # fmt: skip
    assert {e["log_level"] for e in failed} == {"warning"}
    assert not [e for e in logs if "exc_info" in e or (e["log_level"] in ("error", "critical")
                and e["event"] != "knowledge_unavailable")]  # fmt: skip


async def test_the_consoles_remove_upload_and_ask_answer_the_error_page(
    start_relay: Any, settings: dict[str, str]
) -> None:
    with capture_logs() as logs:
        async with start_relay(**settings) as relay:
            browser = await sign_in(relay.base_url)
            try:
                removed = await browser.http.post(
                    "/console/knowledge/remove",
                    data={"agent": "piano-removals", "doc_id": "tuba.txt", "csrf": browser.csrf},
                )
                uploaded = await browser.http.post(
                    "/console/knowledge/upload",
                    data={"agent": "piano-removals", "csrf": browser.csrf},
                    files={"files": ("organ.html", b"<h1>Organs</h1><p>We move organs.</p>")},
                )
                asked = await browser.http.get(
                    "/console/knowledge", params={"agent": "piano-removals", "ask": "organs?"}
                )
                page = await browser.http.get("/console/knowledge")  # the manifest only
            finally:
                await browser.http.aclose()

    back = '<a href="/console/knowledge?agent=piano-removals" id="error-back">Back to Knowledge</a>'
    for response, title, what in [
        (removed, "Cannot remove", "tuba.txt was not removed. "),
        (uploaded, "Cannot upload", "organ.html was not loaded. "),
        (asked, "Knowledge unavailable", ""),
    ]:
        assert response.status_code == 503, response.text
        assert f"<h1>{title}</h1>" in response.text
        assert f"{what}The knowledge store did not answer: " in response.text
        assert back in response.text
    assert page.status_code == 200 and "tuba.txt" in page.text
    failed = _failures(logs, "console_knowledge_store_failed")
    assert [e["path"] for e in failed] == [
        "/console/knowledge/remove", "/console/knowledge/upload", "/console/knowledge",
    ]  # fmt: skip
    assert {e["log_level"] for e in failed} == {"warning"}
