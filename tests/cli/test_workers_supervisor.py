"""The parent of ``relay serve --workers N`` and a repeated signal (:class:`Supervisor`): the
first SIGTERM or SIGINT is uvicorn's (each worker drains), a later one reaches the workers as
SIGINT. Real child processes, no server: the whole path is in tests/web/test_drain_signal.py."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

import pytest
import uvicorn
from uvicorn.supervisors.multiprocess import SIGNALS

from relay.cli.workers import Supervisor
from relay.web.drain import REPEAT_WINDOW

#: The longest a test waits for a child to exit (a limit, never an expectation).
WAIT = 60.0


class Worker:
    """What the supervisor uses of uvicorn's worker: a child process, here one that sleeps."""

    def __init__(self) -> None:
        self.process: BaseProcess = multiprocessing.get_context("spawn").Process(
            target=time.sleep, args=(WAIT,), daemon=True
        )
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def join(self) -> None:
        self.process.join()


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    supervisor = Supervisor(uvicorn.Config("relay.web.app:app_from_env", workers=2), sockets=[])
    try:
        yield supervisor
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for worker in supervisor.processes:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(WAIT)


def test_the_first_signal_is_uvicorns_and_a_repeat_within_the_window_is_ignored(
    supervisor: Supervisor,
) -> None:
    assert signal.getsignal(signal.SIGTERM) == supervisor.on_exit_signal
    assert signal.getsignal(signal.SIGINT) == supervisor.on_exit_signal
    supervisor.on_exit_signal(signal.SIGTERM, None)
    supervisor.on_exit_signal(signal.SIGTERM, None)  # systemd and another sender, at once
    assert supervisor.signal_queue == [signal.SIGTERM, signal.SIGTERM]  # uvicorn's loop: stop
    assert supervisor.later_signals() == []
    supervisor.processes = [Worker()]  # type: ignore[list-item]
    supervisor.stop_now_if_asked()
    assert supervisor.processes[0].process.is_alive()  # still draining


def test_a_later_signal_reaches_every_living_worker_as_sigint_once(
    supervisor: Supervisor,
) -> None:
    gone, draining = Worker(), Worker()
    gone.process.kill()
    gone.process.join(WAIT)  # a worker that has already exited (and been reaped)
    supervisor.processes = [gone, draining]  # type: ignore[list-item]
    supervisor.exit_signals = [(signal.SIGTERM, 100.0), (signal.SIGINT, 100.0 + REPEAT_WINDOW)]
    assert supervisor.later_signals() == [signal.SIGINT]

    supervisor.stop_now_if_asked()
    draining.process.join(WAIT)
    assert draining.process.exitcode is not None and draining.process.exitcode != 0
    assert supervisor.passed_on == 1
    supervisor.stop_now_if_asked()  # the same signal is not passed on twice
    assert supervisor.passed_on == 1


def test_join_all_passes_on_a_later_signal_while_the_workers_drain(
    supervisor: Supervisor,
) -> None:
    supervisor.processes = [Worker(), Worker()]  # type: ignore[list-item]
    now = time.monotonic()
    supervisor.exit_signals = [(signal.SIGTERM, now - REPEAT_WINDOW - 1), (signal.SIGTERM, now)]

    supervisor.join_all()  # returns: both workers got SIGINT, neither sleeps to the end

    assert all(worker.process.exitcode not in (None, 0) for worker in supervisor.processes)
    assert supervisor.passed_on == 1
