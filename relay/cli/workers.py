"""``relay serve --workers N``: several uvicorn worker processes on one port.

The parent process prepares what the workers share, then hands over to uvicorn's process
manager, which starts each worker on ``relay.web.app:app_from_env`` (settings from the
environment, which the parent completes):

1. Migrations have run once, in the parent, before this (``relay serve`` runs them under the
   migration lock for one worker or several); each worker's own ``migrate()`` then finds the
   schema current.
2. Unless ``CHROMA_URL`` names a Chroma server, the parent runs one over the embedded store's
   files (:class:`~relay.services.chroma_server.ChromaServer`, supervised, stopped at exit)
   and every worker, the CLI and the admin API use it.
3. Every setting given on the command line is passed on as its environment variable.

The parent's process manager is uvicorn's, with relay's rule for a repeated signal
(:class:`Supervisor`): the first SIGTERM or SIGINT drains every worker; another one, two seconds
or more later, stops them at once, as it does a single process (:mod:`relay.web.drain`).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

import structlog
import uvicorn
from uvicorn.supervisors import Multiprocess

from relay import metrics
from relay.config import Settings
from relay.web.drain import REPEAT_WINDOW

log = structlog.get_logger("relay.cli.workers")

APP_FACTORY = "relay.web.app:app_from_env"
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
    log.info("workers_starting", workers=settings.workers, chroma=os.environ.get("CHROMA_URL"))
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
