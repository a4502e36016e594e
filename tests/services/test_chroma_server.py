"""The supervised Chroma server of ``relay serve --workers N``, for real (``chroma run``): found
through its discovery file, restarted when it dies, stopped at exit."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from knowledge import KnowledgeStore
from knowledge.testing import HashingEmbedder
from relay.services.chroma_server import DISCOVERY_FILE, ChromaServer, discover

WAIT = 60.0  # a limit, never an expectation

pytestmark = pytest.mark.slow


def wait_until_answering(server: ChromaServer, old_pid: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        if server.restarts >= 1 and server.pid != old_pid:
            try:
                if httpx.get(server.url + "/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        assert time.monotonic() < deadline, "the Chroma server was not restarted"
        time.sleep(0.1)


def test_the_server_is_found_restarted_when_it_dies_and_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert discover(data) is None
    server = ChromaServer(data / "chroma", data_dir=data)
    url = server.start()
    try:
        assert discover(data) == url
        with KnowledgeStore(url=url, path=data / "chroma", embedder=HashingEmbedder()) as store:
            store.add_bytes("movers", "storage.md", b"# Storage\nHeated warehouse.")
            old_pid = server.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)  # the server dies under a running service
            wait_until_answering(server, old_pid)
            # Same URL, same files: the document is still there.
            store.refresh(force=True)
            (hit,) = store.search("movers", "heated warehouse", k=1)
            assert hit.doc_id == "storage.md"
        assert discover(data) == url
    finally:
        server.stop()
    assert server.restarts == 1
    assert not (data / DISCOVERY_FILE).exists()
    assert discover(data) is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/api/v2/heartbeat", timeout=1)


def test_a_discovery_file_left_by_a_killed_server_is_ignored(tmp_path: Path) -> None:
    (tmp_path / DISCOVERY_FILE).write_text(
        '{"url": "http://127.0.0.1:9", "port": 9, "owner_pid": 999999999}'
    )
    assert discover(tmp_path) is None
