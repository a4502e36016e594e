"""A Chroma server that accepts connections but never answers (stopped with SIGSTOP) is an error
within a deadline, not a hang: chromadb's HTTP client has no timeout of its own. And the user and
password of ``CHROMA_URL`` are sent (HTTP Basic), which they were not."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from knowledge import KnowledgeStore, StoreUnavailable
from knowledge.backend import ChromaBackend
from knowledge.testing import HashingEmbedder
from tests.knowledge.test_knowledge_server import chroma_url  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]
#: The longest a test waits for an answer (a limit that turns a hang into a failure, never an
#: expectation).
WAIT = 60.0

T = TypeVar("T")


def within_wait(call: Callable[[], T]) -> T:
    """``call()``, failing the test instead of hanging it when it does not return in WAIT s."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=WAIT)
    finally:
        pool.shutdown(wait=False)


def server_pid(url: str) -> int:
    """The pid of the ``chroma run`` listening at ``url`` (the fixture's child)."""
    port = url.rsplit(":", 1)[1]
    done = subprocess.run(
        ["pgrep", "-f", f"chroma run .* --port {port}$"],
        capture_output=True,
        text=True,
        check=False,
    )
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 1, done
    return pids[0]


def test_opening_a_server_that_never_answers_fails_within_the_ping_deadline(
    chroma_url: str,  # noqa: F811
) -> None:
    pid = server_pid(chroma_url)
    backend = ChromaBackend(url=chroma_url, timeout=2.0, ping_timeout=1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable) as failed:
            within_wait(backend.ping)
    finally:
        os.kill(pid, signal.SIGCONT)
        backend.close()
    assert str(failed.value) == f"the Chroma server at {chroma_url} did not answer within 1 s"


def test_a_server_that_stops_answering_fails_each_request_within_its_deadline(
    chroma_url: str,  # noqa: F811
) -> None:
    """The client opened while the server answered (as a running relay's): every request has
    its own deadline afterwards."""
    pid = server_pid(chroma_url)
    backend = ChromaBackend(url=chroma_url, timeout=1.0, ping_timeout=1.0)
    try:
        assert backend.names() == []
        handle = backend.collection("movers", model="m", dimensions=3, create=True)
        assert handle is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable) as listing:
                within_wait(backend.names)
            with pytest.raises(StoreUnavailable) as counting:
                within_wait(lambda: backend.count(handle))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert backend.count(handle) == 0  # answering again: the same client goes on
    finally:
        backend.close()
    expected = f"the Chroma server at {chroma_url} did not answer within 1 s"
    assert (str(listing.value), str(counting.value)) == (expected, expected)


def test_relay_knowledge_list_with_a_stopped_server_is_one_line(
    chroma_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """As an editor runs it: it hung for good (the tester gave up after 60 s)."""
    (tmp_path / "data").mkdir()
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
    }
    environ.update(RELAY_DATA_DIR=str(tmp_path / "data"), CHROMA_URL=chroma_url)
    pid = server_pid(chroma_url)
    os.kill(pid, signal.SIGSTOP)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "relay", "knowledge", "list"],
            capture_output=True, text=True, cwd=REPO, env=environ, timeout=WAIT, check=False,
        )  # fmt: skip
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"relay knowledge: cannot reach the Chroma server at {chroma_url} (CHROMA_URL): "
        f"the Chroma server at {chroma_url} did not answer within 5 s\n"
    )


# -- credentials ----------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Just enough of Chroma's v2 API for a client to open and ping, answering 401 without
    HTTP Basic ``ali:open sesame``; records every request's Authorization header.

    (chromadb 1.5's ``chroma run`` is its Rust server, which has no authentication; its
    Python server, which has ``BasicAuthenticationServerProvider``, needs FastAPI, which is
    not installed: so a recorder, answering as that provider does.)"""

    seen: list[tuple[str, str | None]]
    expected = "Basic " + base64.b64encode(b"ali:open sesame").decode()

    def do_GET(self) -> None:
        header = self.headers.get("Authorization")
        self.seen.append((self.path, header))
        path = self.path.split("?", 1)[0]
        if path == "/api/v2/heartbeat":  # unauthenticated, as Chroma's
            self._answer(200, {"nanosecond heartbeat": 1})
        elif header != self.expected:
            self._answer(401, {"error": "AuthError", "message": "Unauthorized"})
        elif path == "/api/v2/auth/identity":
            self._answer(
                200,
                {"user_id": "ali", "tenant": "default_tenant", "databases": ["default_database"]},
            )
        elif path == "/api/v2/tenants/default_tenant":
            self._answer(200, {"name": "default_tenant"})
        elif path == "/api/v2/tenants/default_tenant/databases/default_database":
            self._answer(
                200,
                {"id": "00000000-0000-0000-0000-000000000001", "name": "default_database",
                 "tenant": "default_tenant"},
            )  # fmt: skip
        elif path.endswith("/collections"):
            self._answer(200, [])
        else:
            self._answer(404, {"error": "NotFoundError", "message": path})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """No request lines on the test's stderr."""


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_user_and_password_of_the_url_are_sent_as_http_basic(
    recorder: tuple[str, list[tuple[str, str | None]]], tmp_path: Path
) -> None:
    """Percent-encoded in the URL (a space in the password), sent decoded; on every request."""
    address, seen = recorder
    url = f"http://ali:open%20sesame@{address}"
    with KnowledgeStore(url=url, path=tmp_path / "local", embedder=HashingEmbedder()) as store:
        store.ping()
        assert store.collections() == []
    assert seen, "no request reached the server"
    assert {header for _, header in seen} == {_Recorder.expected}
    assert "/api/v2/auth/identity" in {path for path, _ in seen}


def test_a_wrong_password_is_refused_by_the_server_and_masked(
    recorder: tuple[str, list[tuple[str, str | None]]], tmp_path: Path
) -> None:
    address, _ = recorder
    url = f"http://ali:wrong@{address}"
    store = KnowledgeStore(url=url, path=tmp_path / "local", embedder=HashingEmbedder())
    with store, pytest.raises(StoreUnavailable) as refused:
        store.ping()
    assert str(refused.value).startswith(f"cannot open vector store at http://ali:***@{address}: ")
    assert "wrong" not in str(refused.value)
