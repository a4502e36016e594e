"""A Chroma server that is not up when relay starts: the warm-up (model, a first start's shipped
documents, the index) is retried in the background until the server answers, ``/readyz`` says
"warming up" meanwhile (calls go on ungrounded), the trouble and its end are logged once each,
the server's password never shows, and a shutdown meanwhile ends the retries cleanly."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import fresh_logging
from tests.knowledge.test_knowledge_server import free_port
from tests.services.test_retrieval import DOCS, write_docs

pytestmark = pytest.mark.slow

SECRET = "ChromaSecretPW"


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from fresh_logging(monkeypatch, "relay.web.app")


def _chroma_binary() -> Path:
    binary = Path(sys.executable).with_name("chroma")
    if binary.exists():
        return binary
    found = shutil.which("chroma")
    if found is None:
        pytest.skip("the chroma server CLI is not installed")
    return Path(found)


@contextmanager
def chroma_server(path: Path, port: int) -> Iterator[None]:
    """``chroma run`` on ``port`` (started now, answering a few seconds later)."""
    server = subprocess.Popen(
        [str(_chroma_binary()), "run", "--path", str(path), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _readyz(relay: Any) -> httpx.Response:
    response: httpx.Response = await relay.http.get(relay.base_url + "/readyz")
    return response


async def _until_ready(relay: Any, timeout: float) -> httpx.Response:
    async with asyncio.timeout(timeout):
        # "ready", not only 200: a store that is down is "degraded", which is 200 too
        while (response := await _readyz(relay)).json()["status"] != "ready":  # noqa: ASYNC110 (a server's answer)
            await asyncio.sleep(0.2)
    return response


async def _until_logged(
    logs: list[MutableMapping[str, Any]], event: str, timeout: float = 60
) -> None:
    async with asyncio.timeout(timeout):
        while not any(e["event"] == event for e in logs):  # noqa: ASYNC110 (log lines, no event)
            await asyncio.sleep(0.05)


async def test_a_store_up_after_the_start_gets_the_shipped_documents_before_readyz_says_ready(
    start_relay: Any, data_dir: Path, tmp_path: Path
) -> None:
    write_docs(data_dir / "knowledge" / "piano-removals")
    port = free_port()
    with capture_logs() as logs:
        async with start_relay(
            RELAY_KNOWLEDGE="true", CHROMA_URL=f"http://u:{SECRET}@127.0.0.1:{port}"
        ) as relay:
            down = await _readyz(relay)
            await _until_logged(logs, "knowledge_unavailable")  # the first attempt failed
            still_down = await _readyz(relay)
            with chroma_server(tmp_path / "chroma-server", port):
                ready = await _until_ready(relay, timeout=90)
                count = await relay.runtime.knowledge.count("piano-removals")

    # Until the first try has failed: warming up (503); then the shared store's trouble: the
    # process is "degraded" (200), calls go on ungrounded, and the warm-up goes on trying.
    for response in (down, still_down):
        knowledge = response.json()["checks"]["knowledge"]
        assert knowledge["ok"] is False
        if knowledge["detail"] == "warming up":
            assert response is down and response.status_code == 503
        else:
            assert (response.status_code, response.json()["status"]) == (200, "degraded")
            assert knowledge["detail"].startswith("StoreUnavailable")
            assert SECRET not in knowledge["detail"]
    assert still_down.json()["checks"]["knowledge"]["detail"] != "warming up"
    assert ready.json()["checks"]["knowledge"]["ok"] is True
    assert count > 0 and count >= len(DOCS)  # loaded before /readyz said ready
    events = [e["event"] for e in logs if e["event"].startswith("knowledge_")]
    assert events.count("knowledge_unavailable") == 1  # once, not once a try
    assert events.count("knowledge_available") == 1
    assert events.index("knowledge_unavailable") < events.index("knowledge_available")
    [unavailable] = [e for e in logs if e["event"] == "knowledge_unavailable"]
    assert unavailable["log_level"] == "error" and "retrying" in unavailable["message"]
    assert f"u:***@127.0.0.1:{port}" in unavailable["error"]
    assert SECRET not in repr(logs)


async def test_a_shutdown_while_the_store_is_down_stops_the_retries(
    start_relay: Any, data_dir: Path
) -> None:
    with capture_logs() as logs:
        async with start_relay(
            RELAY_KNOWLEDGE="true", CHROMA_URL=f"http://127.0.0.1:{free_port()}"
        ):
            await _until_logged(logs, "knowledge_unavailable")
            warming = [t for t in asyncio.all_tasks() if t.get_name() == "relay-knowledge-warm-up"]
            assert len(warming) == 1 and not warming[0].done()  # still retrying
    assert warming[0].cancelled()
    assert [e["event"] for e in logs if e["log_level"] in ("error", "warning")].count(
        "knowledge_unavailable"
    ) == 1


async def test_the_in_process_commands_wait_for_the_first_try_only(
    start_relay: Any, data_dir: Path
) -> None:
    """``relay call``, ``relay replay`` and ``relay eval`` wait for the warm-up
    (``Runtime.knowledge_ready``) so that their first question is grounded: with the store
    down, they go on ungrounded once the first try failed, while the retries go on."""
    with capture_logs():
        async with start_relay(
            RELAY_KNOWLEDGE="true", CHROMA_URL=f"http://127.0.0.1:{free_port()}"
        ) as relay:
            async with asyncio.timeout(60):
                await relay.runtime.knowledge_ready()
            warmed = relay.runtime.knowledge_warmed
            assert warmed is not None and not warmed.is_set()  # /readyz: still warming up
