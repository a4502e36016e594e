"""Server mode against a real Chroma server (``chroma run``) on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge import KnowledgeStore
from knowledge.testing import HashingEmbedder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def chroma_url(tmp_path: Path) -> Iterator[str]:
    binary = Path(sys.executable).with_name("chroma")
    if not binary.exists():
        found = shutil.which("chroma")
        if found is None:
            pytest.skip("the chroma server CLI is not installed")
        binary = Path(found)
    port = free_port()
    server = subprocess.Popen(
        [str(binary), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("chroma server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_load_search_and_remove_through_a_server(chroma_url: str, tmp_path: Path) -> None:
    with KnowledgeStore(
        url=chroma_url, path=tmp_path / "local", embedder=HashingEmbedder()
    ) as store:
        store.ping()
        assert (
            store.add_bytes("movers", "storage.md", b"# Storage\nHeated warehouse.").status
            == "added"
        )
        assert (
            store.add_bytes("movers", "storage.md", b"# Storage\nHeated warehouse.").status
            == "unchanged"
        )
        (hit,) = store.search("movers", "heated warehouse", k=3)
        assert (hit.doc_id, hit.heading_path, hit.text) == (
            "storage.md",
            ["Storage"],
            "Heated warehouse.",
        )
        assert store.collections() == ["movers"]
        assert store.remove("movers", "storage.md") is True
        assert store.count("movers") == 0
        # the local data directory holds only the manifest
        assert [p.name for p in (tmp_path / "local").iterdir()] == ["knowledge-manifest.sqlite3"]

    # search-only mode: no local path needed
    with KnowledgeStore(url=chroma_url, embedder=HashingEmbedder()) as reader:
        assert reader.search("movers", "warehouse") == []
