"""``relay serve --workers N``: several uvicorn worker processes on one port.

The parent process prepares what the workers share, then hands over to uvicorn's process
manager, which starts each worker on :func:`worker_app` (``relay.web.app:app_from_env``: settings
from the environment, which the parent completes):

1. Migrations have run once, in the parent, before this (``relay serve`` runs them under the
   migration lock for one worker or several); each worker's own ``migrate()`` then finds the
   schema current.
2. Unless ``CHROMA_URL`` names a Chroma server, the parent runs one over the embedded store's
   files (:class:`~relay.services.chroma_server.ChromaServer`, supervised, stopped at exit)
   and every worker, the CLI and the admin API use it.
3. Every setting given on the command line is passed on as its environment variable.

The parent's process manager is uvicorn's, with relay's rule for a repeated signal
(:class:`Supervisor`): the first SIGTERM or SIGINT drains every worker; another one, two seconds
or more later, stops them at once, as it does a single process (:mod:`relay.web.drain`). A parent
killed outright (SIGKILL, the OOM killer) cannot pass anything on: each worker asks Linux for
SIGTERM when its parent dies (:func:`die_with_parent`), so none is left holding the port.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

import structlog
import uvicorn
from uvicorn.supervisors import Multiprocess

from knowledge.backend import redact_url
from relay import metrics
from relay.config import Settings
from relay.web.drain import REPEAT_WINDOW

log = structlog.get_logger("relay.cli.workers")

APP_FACTORY = "relay.cli.workers:worker_app"
#: ``prctl``'s option: the signal the calling process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: The signals that stop the server: the first drains the workers, a later one stops them.
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: While the workers drain, how often the parent looks for a later signal to pass on (seconds).
POLL = 0.1


class Supervisor(Multiprocess):
    """uvicorn's process manager, which also passes on a later SIGTERM or SIGINT.

    uvicorn's parent answers the first SIGTERM or SIGINT by sending every worker SIGTERM, on
    which each drains (:mod:`relay.web.drain`), and then waits for them; a signal after that it
    only queues, and nothing reads the queue any more. Here every SIGTERM or SIGINT that arrives
    :data:`~relay.web.drain.REPEAT_WINDOW` seconds or more after the first (the rule a single
    process follows; sooner, it is the first delivered twice) is passed on to every worker still
    running as SIGINT, which the worker's uvicorn answers as a single process answers a later
    SIGTERM: it stops at once, closing the live calls' sockets (1012). Each further later signal
    is passed on again (uvicorn's second SIGINT: it no longer waits for anything).
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets=sockets)
        self.exit_signals: list[tuple[int, float]] = []  # each one, and when it arrived
        self.passed_on = 0  # how many later signals the workers have been sent
        for sig in EXIT_SIGNALS:  # in place of uvicorn's handler, which only queues the signal
            signal.signal(sig, self.on_exit_signal)

    def on_exit_signal(self, sig: int, frame: FrameType | None) -> None:
        """Note when the signal came, and queue it for uvicorn's loop (the first stops it)."""
        self.exit_signals.append((sig, time.monotonic()))
        self.signal_queue.append(sig)

    def later_signals(self) -> list[int]:
        """The exit signals that came ``REPEAT_WINDOW`` seconds or more after the first."""
        arrived = list(self.exit_signals)
        if not arrived:
            return []
        first = arrived[0][1]
        return [sig for sig, at in arrived[1:] if at - first >= REPEAT_WINDOW]

    def stop_now_if_asked(self) -> None:
        """Send SIGINT to every living worker for each later signal not yet passed on."""
        later = self.later_signals()
        if len(later) <= self.passed_on:
            return
        self.passed_on = len(later)
        stopped = []
        for process in self.processes:
            pid = process.pid
            if pid is None or not process.process.is_alive():
                continue  # not started, or already gone (and reaped: its pid may be reused)
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                continue
            stopped.append(pid)
        log.warning("workers_stopping_now", signal=signal.Signals(later[-1]).name, workers=stopped)

    def join_all(self) -> None:
        """Wait for every worker to exit, passing on a later signal while they drain."""
        while living := [p.process for p in self.processes if p.process.is_alive()]:
            self.stop_now_if_asked()
            wait([process.sentinel for process in living], timeout=POLL)
        super().join_all()  # all gone: uvicorn's join logs each and returns at once


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory): it dies with the parent, then runs
    :func:`relay.web.app.app_from_env`."""
    from relay.web.app import app_from_env

    parent = multiprocessing.parent_process()  # the supervisor that spawned this worker
    die_with_parent(parent.pid if parent is not None else None)
    return app_from_env()


def die_with_parent(parent: int | None) -> bool:
    """Have Linux send this process SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which
    a worker answers by draining and exiting, as it answers the parent's own SIGTERM.

    A parent that died before the request was made sends nothing, so the parent is checked
    after it: when it is no longer ``parent`` (this process was handed to init), SIGTERM is
    sent now. True when the request was made; off Linux, or refused, nothing is done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):
        done = False
    if not done:
        log.warning("worker_parent_death_signal_unset", pid=os.getpid())
        return False
    if parent is not None and os.getppid() != parent:  # it died before prctl: nothing will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def serve_workers(
    settings: Settings, overrides: Mapping[str, Any], options: Mapping[str, Any]
) -> int:
    """Run ``settings.workers`` workers with uvicorn ``options`` (host, port, limits...)."""
    from relay.services.chroma_server import ChromaServer

    for name, value in overrides.items():
        os.environ[name] = str(value)
    os.environ["RELAY_WORKERS"] = str(settings.workers)
    chroma: ChromaServer | None = None
    if settings.knowledge_enabled and not settings.chroma_url:
        chroma = ChromaServer(
            settings.knowledge_path, data_dir=settings.data_dir, port=settings.chroma_port
        )
        os.environ["CHROMA_URL"] = chroma.start()
    chroma_url = os.environ.get("CHROMA_URL")
    log.info(
        "workers_starting",
        workers=settings.workers,
        chroma=redact_url(chroma_url) if chroma_url else None,
    )
    clear_metrics = metrics.prepare_multiprocess(settings.workers)  # /metrics sums the workers
    try:
        # What uvicorn.run does for workers, with relay's process manager in place of uvicorn's.
        config = uvicorn.Config(APP_FACTORY, factory=True, workers=settings.workers, **options)
        sock = config.bind_socket()
        try:
            Supervisor(config, sockets=[sock]).run()
        finally:
            sock.close()
    finally:
        clear_metrics()
        if chroma is not None:
            chroma.stop()
    return 0
