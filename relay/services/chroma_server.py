"""The Chroma server relay runs when several processes share the knowledge store.

Embedded Chroma keeps each collection's index in the memory of the process that opened it, so
two processes writing the same files diverge. With ``relay serve --workers N`` (N > 1) and no
``CHROMA_URL``, the parent process runs the server the chromadb package ships
(``chroma run --path <data>/chroma --host 127.0.0.1 --port P``) on the very files the embedded
store used, restarts it if it dies and stops it at exit. Every worker gets its URL through
``CHROMA_URL``; the CLI and anything else finds it through ``<data dir>/chroma-server.json``
(:func:`discover`), written while the server runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import structlog

from relay.errors import ConfigError

log = structlog.get_logger("relay.services.chroma_server")

DISCOVERY_FILE = "chroma-server.json"


def chroma_binary() -> Path:
    """The ``chroma`` command of the chromadb package installed beside this Python."""
    beside = Path(sys.executable).with_name("chroma")
    if beside.exists():
        return beside
    found = shutil.which("chroma")
    if found is None:
        raise ConfigError(
            "several workers need the Chroma server, but the `chroma` command (package "
            "chromadb) is not installed; or set CHROMA_URL to a running Chroma server"
        )
    return Path(found)


def discover(data_dir: Path) -> str | None:
    """The URL of the Chroma server a live ``relay serve`` supervises for ``data_dir``."""
    try:
        info = json.loads((data_dir / DISCOVERY_FILE).read_text(encoding="utf-8"))
        url, owner, port = str(info["url"]), int(info["owner_pid"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return None  # left behind by a server that was killed
    except PermissionError:
        pass  # alive, another user's
    return url if _listening(port) else None


def _die_with_parent() -> None:
    """In the child, before ``chroma`` starts: be sent SIGTERM if relay dies without stopping
    it (killed), rather than holding the port and the files. Linux only; elsewhere a no-op."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChromaServer:
    """``chroma run`` as a supervised child process.

    Args:
        path: The Chroma data directory (the embedded store's, so its collections carry over).
        data_dir: Where the discovery file and the server's log go.
        port: Loopback port; 0 picks a free one (kept across restarts).
    """

    def __init__(self, path: Path, *, data_dir: Path, port: int = 0) -> None:
        self.path = path
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def start(self, timeout: float = 60.0) -> str:
        """Start the server, wait until it answers, then supervise it; returns its URL."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._spawn()
        self._wait_ready(timeout)
        (self.data_dir / DISCOVERY_FILE).write_text(
            json.dumps({"url": self.url, "port": self.port, "owner_pid": os.getpid()}),
            encoding="utf-8",
        )
        self._thread = threading.Thread(
            target=self._supervise, name="chroma-supervisor", daemon=True
        )
        self._thread.start()
        log.info("chroma_server_started", url=self.url, path=str(self.path), pid=self.pid)
        return self.url

    def _spawn(self) -> None:
        argv = [str(chroma_binary()), "run", "--path", str(self.path), "--host", "127.0.0.1",
                "--port", str(self.port)]  # fmt: skip
        with open(self.data_dir / "chroma-server.log", "ab") as out:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
                preexec_fn=_die_with_parent,
            )  # fmt: skip

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                process = self._process
                if process is not None and process.poll() is not None:
                    raise ConfigError(
                        f"the Chroma server exited at start (code {process.returncode}); "
                        f"see {self.data_dir / 'chroma-server.log'}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/api/v2/heartbeat").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ConfigError(f"the Chroma server did not answer within {timeout:.0f}s")
                time.sleep(0.1)

    def _supervise(self) -> None:
        """Restart the server whenever it dies, until :meth:`stop`."""
        backoff = 0.5
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("chroma_server_died", code=code, restart=self.restarts, retry_in=backoff)
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._spawn()
            try:
                self._wait_ready(60.0)
                backoff = 0.5
                log.info("chroma_server_restarted", url=self.url, pid=self.pid)
            except ConfigError as exc:
                log.error("chroma_server_restart_failed", error=str(exc))
                backoff = min(backoff * 2, 30.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and stop the server (SIGTERM, then SIGKILL)."""
        self._stopping.set()
        with self._lock:
            process = self._process
        with contextlib.suppress(OSError):
            (self.data_dir / DISCOVERY_FILE).unlink()
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("chroma_server_stopped", url=self.url)
